"""MLflow tracking at the edge of the stages (mlflow is imported lazily; the core runs without it).

- Tracking URI: ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the working
  directory (artifacts go to ``./mlruns`` beside it); both support the model registry.
- One experiment per dataset: ``ganforge-<dataset>``.
- ``train`` opens the run and records its id in ``<run_dir>/mlflow_run.json``; evaluate,
  export and promote reopen the same run from that file.
- A remote server that does not answer fails the stage in seconds, naming the URI,
  before any work starts.
- ``mlflow.enabled: auto`` tracks when mlflow is installed and otherwise says so once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ganforge.errors import GanforgeError
from ganforge.io import write_json

log = logging.getLogger(__name__)

DEFAULT_URI = "sqlite:///mlflow.db"
RUN_FILE = "mlflow_run.json"


class TrackingError(GanforgeError):
    """The tracking server is unreachable or refused a request."""


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def dataset_name(manifest: dict[str, Any]) -> str:
    source = manifest["source"]
    if source == "mnist-idx":
        return "mnist"
    if source == "torchvision":
        return manifest["params"]["torchvision_dataset"].lower()
    if source == "imagefolder":
        return Path(manifest["path"]).name or "images"
    return source


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


def mlflow_available() -> bool:
    try:
        _mlflow()
    except ImportError:
        return False
    return True


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


class Tracker:
    """Does nothing: used when tracking is off or mlflow is absent."""

    run_id: str | None = None
    active = False

    def log_params(self, params: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...

    def log_history(self, rows: list[dict[str, float]]) -> None: ...

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...

    def set_tags(self, tags: dict[str, Any]) -> None: ...

    def end(self, status: str = "FINISHED") -> None: ...


class MlflowTracker(Tracker):
    active = True

    def __init__(self, run_id: str, uri: str) -> None:
        _mlflow()
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        self.run_id, self.uri = run_id, uri

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # network and store errors: one line naming the server
            raise TrackingError(
                f"MLflow {what} failed on {self.uri}: {str(exc).splitlines()[0][:300]}"
            ) from None

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, "null" if v is None else str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self._call("log params", self.client.log_batch, self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if v is not None]
        for i in range(0, len(items), 1000):
            self._call(
                "log metrics", self.client.log_batch, self.run_id, metrics=items[i : i + 1000]
            )

    def log_history(self, rows: list[dict[str, float]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(k, float(v), now, int(r["step"]))
            for r in rows
            for k, v in r.items()
            if k != "step"
        ]
        for i in range(0, len(items), 1000):
            self._call(
                "log metrics", self.client.log_batch, self.run_id, metrics=items[i : i + 1000]
            )

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._call("log artifact", self.client.log_artifact, self.run_id, str(path), artifact_path)

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items() if v is not None]
        self._call("set tags", self.client.log_batch, self.run_id, tags=items)

    def end(self, status: str = "FINISHED") -> None:
        self._call("end run", self.client.set_terminated, self.run_id, status)


def _enabled(setting: bool | str) -> bool:
    if setting is False:
        return False
    if mlflow_available():
        return True
    if setting is True:
        raise TrackingError("mlflow.enabled is true but the mlflow package is not installed")
    log.info("mlflow is not installed: tracking is off (mlflow.enabled: auto)")
    return False


def start_run(params, manifest: dict[str, Any], run_dir: str | Path) -> Tracker:
    """Open the run for a training run and write ``<run_dir>/mlflow_run.json``."""
    run_dir = Path(run_dir)
    (run_dir / RUN_FILE).unlink(missing_ok=True)
    if not _enabled(params.mlflow.enabled):
        return Tracker()
    uri = tracking_uri()
    check_reachable(uri)
    _mlflow()  # telemetry off before the first mlflow import
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    name = f"{params.mlflow.experiment_prefix}-{dataset_name(manifest)}"
    try:
        exp = client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp else client.create_experiment(name)
        lock = Path("dvc.lock")
        tags = {
            "mlflow.runName": params.train.run_name,
            "ganforge.model": params.train.model,
            "ganforge.dataset": dataset_name(manifest),
            "ganforge.data_sha256": manifest["content_sha256"],
            "git_commit": _git_commit() or "unknown",
            "dvc_lock_sha256": hashlib.sha256(lock.read_bytes()).hexdigest()
            if lock.is_file()
            else "none",
        }
        run = client.create_run(exp_id, tags=tags)
    except Exception as exc:
        raise TrackingError(
            f"MLflow could not open a run on {uri}: {str(exc).splitlines()[0][:300]}"
        ) from None
    tracker = MlflowTracker(run.info.run_id, uri)
    tracker.log_params(params.flat())
    write_json(
        run_dir / RUN_FILE,
        {"tracking_uri": uri, "experiment_id": exp_id, "run_id": run.info.run_id},
    )
    return tracker


def reopen_run(params, run_dir: str | Path) -> Tracker:
    """The training run's tracker, from ``<run_dir>/mlflow_run.json`` (no file: tracking was off)."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file() or not _enabled(params.mlflow.enabled):
        return Tracker()
    info = json.loads(path.read_text())
    uri = tracking_uri()
    if uri != info["tracking_uri"]:
        log.warning(
            "run %s was tracked at %s; now tracking at %s",
            info["run_id"],
            info["tracking_uri"],
            uri,
        )
    check_reachable(uri)
    return MlflowTracker(info["run_id"], uri)
