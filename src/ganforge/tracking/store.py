"""Where the MLflow store is and how to reach it: URIs, the client, telemetry, errors."""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request

from ganforge.errors import GanforgeError

log = logging.getLogger(__name__)

DEFAULT_URI = "sqlite:///mlflow.db"


class TrackingError(GanforgeError):
    """The tracking server is unreachable or refused a request."""


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [exc.__class__.__name__])[0][:300]


def check_reachable(uri: str, timeout: float = 3.0) -> None:
    """HTTP(S) servers must answer /health within ``timeout`` seconds."""
    if not uri.startswith(("http://", "https://")):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - the user's own server
            if r.status != 200:
                raise TrackingError(f"MLflow tracking server {uri} answered {r.status} on /health")
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackingError(
            f"MLflow tracking server {uri} is unreachable ({reason}); start it or unset MLFLOW_TRACKING_URI"
        ) from None


def _mlflow():
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("DO_NOT_TRACK", "true")
    import mlflow

    return mlflow


def _client(uri: str):
    """A client bound to ``uri`` for tracking and registry (never the process-global URIs)."""
    _mlflow()
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def enabled(setting: bool | str) -> bool:
    """``mlflow.enabled``: auto tracks when mlflow is installed and otherwise says so once."""
    if setting is False:
        return False
    try:
        _mlflow()
        return True
    except ImportError:
        if setting is True:
            raise TrackingError(
                "mlflow.enabled is true but the mlflow package is not installed"
            ) from None
    log.info("mlflow is not installed: tracking is off (mlflow.enabled: auto)")
    return False
