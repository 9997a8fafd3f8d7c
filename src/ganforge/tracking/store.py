"""Where the MLflow store is and how to reach it: URIs, the client, telemetry, errors."""

from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request
from pathlib import Path

from ganforge.errors import GanforgeError

log = logging.getLogger(__name__)

DEFAULT_URI = "sqlite:///mlflow.db"  # resolved against the project root, see tracking_uri


class TrackingError(GanforgeError):
    """The tracking server is unreachable or refused a request."""


def project_root(cwd: Path | None = None) -> Path | None:
    """The DVC project this process works for: the nearest ancestor holding ``.dvc/``. Inside
    DVC's temporary experiment copies (``<root>/.dvc/tmp/exps/...``: ``dvc exp run --temp``
    and ``--queue``) that is the project holding the copy, not the copy."""
    cwd = (cwd or Path.cwd()).resolve()
    if ".dvc" in cwd.parts:
        return Path(*cwd.parts[: cwd.parts.index(".dvc")])
    return next((d for d in (cwd, *cwd.parents) if (d / ".dvc").is_dir()), None)


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else ``sqlite:///<project root>/mlflow.db`` (absolute, so every
    stage, wherever DVC runs it, records into the project's one store)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    root = project_root() or Path.cwd()
    return f"sqlite:///{root / 'mlflow.db'}"


def default_artifact_location(uri: str) -> str | None:
    """Artifacts beside the default SQLite store (``<root>/mlruns``); a server decides its own."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).parent / "mlruns").as_uri()


def existing_store(uri: str) -> str:
    """``uri`` for reading (models:/ lookups): a SQLite store must already exist, so a lookup
    from the wrong directory names the URI instead of creating an empty ``mlflow.db`` there."""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise TrackingError(
            f"no MLflow store at {uri.removeprefix('sqlite:///')} (tracking URI {uri}); run "
            "from the "
            "project directory or set MLFLOW_TRACKING_URI to its mlflow.db or tracking server"
        )
    return uri


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
            f"MLflow tracking server {uri} is unreachable ({reason}); start it or unset "
            "MLFLOW_TRACKING_URI"
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
