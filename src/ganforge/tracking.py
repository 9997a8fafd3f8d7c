"""The MLflow edge: every call to MLflow in ganforge is in this module (imported lazily, so
the core runs where mlflow is absent).

- Where: ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the working directory
  (artifacts in ``./mlruns``); both URIs (tracking and registry) are set from it, here only,
  and so is telemetry (off).
- Runs: ``training_run`` opens one run per training (one experiment per dataset,
  ``ganforge-<dataset>``), records its id in ``<run_dir>/mlflow_run.json`` and closes it
  FINISHED, FAILED or KILLED; ``reopen_run`` gives evaluate and export the same run.
  ``MlflowRun`` implements ``ganforge.core.runlog.RunLog`` for the stages.
- Registry: ``Registry`` registers versions, reads and moves aliases, tags versions and
  keeps the audit trail; ``download_model`` resolves ``models:/`` URIs for deployment.
- A remote server that does not answer fails the stage in seconds, naming the URI.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ganforge.core.dataset import dataset_name
from ganforge.core.files import write_json
from ganforge.core.runlog import RunLog, Untracked
from ganforge.errors import GanforgeError

log = logging.getLogger(__name__)

DEFAULT_URI = "sqlite:///mlflow.db"
RUN_FILE = "mlflow_run.json"


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


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


class MlflowRun:
    """One MLflow run, as the stages see it (``RunLog``); every failure is a ``TrackingError``."""

    def __init__(self, run_id: str, uri: str) -> None:
        self.client = _client(uri)
        self.run_id, self.uri = run_id, uri

    def _call(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # network and store errors: one line naming the server
            raise TrackingError(f"MLflow {what} failed on {self.uri}: {_first_line(exc)}") from None

    def _batch(self, what: str, **items) -> None:
        for key, values in items.items():
            for i in range(0, len(values), 1000 if key == "metrics" else 100):
                chunk = {key: values[i : i + (1000 if key == "metrics" else 100)]}
                self._call(what, self.client.log_batch, self.run_id, **chunk)

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        self._batch(
            "log params",
            params=[Param(k, "null" if v is None else str(v)) for k, v in params.items()],
        )

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        rows = [{"step": step or 0, **{k: v for k, v in metrics.items() if v is not None}}]
        self.log_history(rows)

    def log_history(self, rows: list[dict[str, float]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(k, float(v), now, int(r["step"]))
            for r in rows
            for k, v in r.items()
            if k != "step"
        ]
        self._batch("log metrics", metrics=items)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._call("log artifact", self.client.log_artifact, self.run_id, str(path), artifact_path)

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self._batch("set tags", tags=[RunTag(k, str(v)) for k, v in tags.items() if v is not None])

    def log_model(self, onnx_path: str | Path) -> str:
        """The ONNX file as the run's onnx-flavour model ``generator``; returns its model URI."""
        mlflow = _mlflow()
        import onnx

        def log() -> str:
            mlflow.set_tracking_uri(self.uri)  # start_run is fluent: this run's store
            with mlflow.start_run(run_id=self.run_id):
                info = mlflow.onnx.log_model(
                    onnx.load(str(onnx_path)),
                    name="generator",
                    # say which providers to use, or MLflow warns about CUDA ones on CPU machines
                    onnx_execution_providers=["CPUExecutionProvider"],
                    # stated, not inferred: inference spawns a subprocess and takes seconds
                    pip_requirements=[f"onnx=={onnx.__version__}", "onnxruntime"],
                )
            return info.model_uri

        return self._call("log model", log)

    def end(self, status: str = "FINISHED") -> None:
        self._call("end run", self.client.set_terminated, self.run_id, status)


@contextlib.contextmanager
def training_run(params, manifest: dict[str, Any], run_dir: str | Path) -> Iterator[RunLog]:
    """Open the run of one training, yield it, and close it with the outcome's status."""
    run_dir = Path(run_dir)
    (run_dir / RUN_FILE).unlink(missing_ok=True)
    if not enabled(params.mlflow.enabled):
        yield Untracked()
        return
    uri = tracking_uri()
    check_reachable(uri)
    client = _client(uri)
    name = f"{params.mlflow.experiment_prefix}-{dataset_name(manifest)}"
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
    try:
        exp = client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp else client.create_experiment(name)
        run_id = client.create_run(exp_id, tags=tags).info.run_id
    except Exception as exc:
        raise TrackingError(f"MLflow could not open a run on {uri}: {_first_line(exc)}") from None
    run = MlflowRun(run_id, uri)
    run.log_params(params.flat())
    write_json(run_dir / RUN_FILE, {"tracking_uri": uri, "experiment_id": exp_id, "run_id": run_id})
    try:
        yield run
    except BaseException:
        status = "KILLED" if sys.exc_info()[0] is KeyboardInterrupt else "FAILED"
        try:  # best effort: the server may be the thing that failed; keep the original error
            run.end(status)
        except TrackingError as exc:
            log.warning("could not mark the MLflow run %s: %s", status, exc)
        raise
    run.end()


def reopen_run(params, run_dir: str | Path) -> RunLog:
    """The training run's ``RunLog`` for a later stage (``Untracked`` if it was untracked)."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file() or not enabled(params.mlflow.enabled):
        return Untracked()
    recorded = json.loads(path.read_text())
    uri = tracking_uri()
    if uri != recorded["tracking_uri"]:
        log.warning("run %s was tracked at %s; now tracking at %s", recorded["run_id"], recorded["tracking_uri"], uri)
    check_reachable(uri)
    return MlflowRun(recorded["run_id"], uri)


def log_evaluation(run: RunLog, metrics: dict[str, Any], metrics_path, reports_dir) -> None:
    """Every number as a metric, the protocol as tags, eval.json and the reports as artifacts."""
    if isinstance(run, Untracked):
        return
    numbers = {
        k: v for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None
    }  # fmt: skip
    numbers["fid_ci95_low"], numbers["fid_ci95_high"] = metrics["fid_ci95"]
    if metrics.get("mode_collapse") is not None:
        numbers["mode_collapse"] = float(metrics["mode_collapse"])
    run.log_metrics({k: v for k, v in numbers.items() if v is not None})
    tags = {f"eval.{k}": v for k, v in metrics["protocol"].items()}
    tags["eval.mode_collapse_rule"] = metrics.get("mode_collapse_rule")
    tags["eval.warnings"] = " | ".join(metrics.get("warnings", [])) or None
    run.set_tags(tags)
    run.log_artifact(metrics_path, "eval")
    for png in sorted(Path(reports_dir).glob("*.png")):
        run.log_artifact(png, "eval")


def download_model(model_uri: str, dest: str | Path | None = None) -> Path:
    """A local copy of a ``models:/`` or ``runs:/`` URI's artifacts (for onnxruntime)."""
    try:
        mlflow = _mlflow()
    except ImportError:
        raise GanforgeError(f"{model_uri}: MLflow URIs need the mlflow package") from None
    uri = tracking_uri()
    try:
        return Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=model_uri, dst_path=str(dest) if dest else None, tracking_uri=uri
            )
        )
    except Exception as exc:  # MlflowException and store errors: report, never a traceback
        raise GanforgeError(f"{model_uri}: cannot resolve on {uri} ({_first_line(exc)})") from None


class Registry:
    """The MLflow model registry of one store: versions, the ``champion`` alias, audit tags.

    Aliases only (never the deprecated stages). ``lock`` serialises read-decide-write on one
    machine (a ``filelock`` beside a SQLite store, or in the user cache for a server).
    """

    CHAMPION = "champion"

    def __init__(self, uri: str | None = None) -> None:
        self.uri = uri or tracking_uri()
        check_reachable(self.uri)
        self.client = _client(self.uri)

    def _call(self, fn, *args, **kwargs):
        from mlflow.exceptions import MlflowException

        try:
            return fn(*args, **kwargs)
        except MlflowException as exc:
            raise TrackingError(f"MLflow registry on {self.uri}: {_first_line(exc)}") from None

    def lock(self):
        from filelock import FileLock

        if self.uri.startswith("sqlite:///"):
            db = Path(self.uri.removeprefix("sqlite:///"))
            path = db.with_name(db.name + ".promote.lock")
        else:
            d = Path.home() / ".cache" / "ganforge"
            d.mkdir(parents=True, exist_ok=True)
            path = d / f"promote-{hashlib.sha256(self.uri.encode()).hexdigest()[:16]}.lock"
        return FileLock(path)

    def register(self, name: str, source: str, tags: dict[str, Any]) -> str:
        """A new version of ``name`` (created if absent) from a logged model URI; its number."""
        c = self.client
        if not self._call(c.search_registered_models, filter_string=f"name = '{name}'"):
            self._call(c.create_registered_model, name,
                       description="ganforge generators (ONNX); alias champion = deployed")  # fmt: skip
        mlflow = _mlflow()
        # register_model is fluent (it resolves logged-model URIs): point it at this store
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_registry_uri(self.uri)
        str_tags = {k: str(v) for k, v in tags.items() if v is not None}
        return str(self._call(mlflow.register_model, source, name, tags=str_tags).version)

    def champion(self, name: str) -> tuple[str, dict[str, str]] | None:
        """(version, its tags) of the alias, or None. Read from the alias map: a store error
        fails here instead of passing for "no champion"."""
        version = self._call(self.client.get_registered_model, name).aliases.get(self.CHAMPION)
        if version is None:
            return None
        return str(version), dict(self._call(self.client.get_model_version, name, version).tags)

    def tag_version(self, name: str, version: str, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self._call(self.client.set_model_version_tag, name, version, k, v)

    def set_champion(self, name: str, version: str, former: str | None) -> None:
        self._call(self.client.set_registered_model_alias, name, self.CHAMPION, version)
        self.tag_version(name, version, {"role": self.CHAMPION})
        if former:
            self.tag_version(name, former, {"role": "former-champion"})

    def audit(self, name: str, entry: dict[str, Any]) -> None:
        """Append one decision to the model's trail (a tag ``audit.<ns>.<version>``)."""
        key = f"audit.{time.time_ns()}.{entry['candidate']}"
        self._call(self.client.set_registered_model_tag, name, key, json.dumps(entry))

    def history(self, name: str | None, prefix: str) -> list[dict[str, Any]]:
        """Audit entries of one registered model (or every ``<prefix>-*`` one), oldest first."""
        c = self.client
        models = (
            [self._call(c.get_registered_model, name)] if name
            else self._call(c.search_registered_models, filter_string=f"name LIKE '{prefix}-%'")
        )  # fmt: skip
        entries = [
            {"registered_model": rm.name, "key": key, **json.loads(value)}
            for rm in models for key, value in rm.tags.items() if key.startswith("audit.")
        ]  # fmt: skip
        return sorted(entries, key=lambda e: int(e["key"].split(".")[1]))
