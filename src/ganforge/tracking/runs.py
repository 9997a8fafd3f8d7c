"""Tracked runs: one MLflow run per training, reopened by evaluate and export."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ganforge.core import onnxmeta
from ganforge.core.dataset import dataset_name
from ganforge.core.runlog import RUN_FILE, RunLog, Untracked
from ganforge.errors import GanforgeError
from ganforge.tracking.store import (
    TrackingError,
    _client,
    _first_line,
    _mlflow,
    check_reachable,
    default_artifact_location,
    enabled,
    existing_store,
    tracking_uri,
)

log = logging.getLogger(__name__)


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

    def __init__(self, run_id: str, uri: str, experiment_id: str | None = None) -> None:
        self.client = _client(uri)
        self.run_id, self.uri, self.experiment_id = run_id, uri, experiment_id
        # a resumed run: its steps up to here were logged before the interruption, and the
        # resumed training repeats them from its checkpoint; each step is kept once
        self.logged_through = -1

    def record(self) -> dict[str, Any]:
        return {
            "tracking_uri": self.uri,
            "experiment_id": self.experiment_id,
            "run_id": self.run_id,
        }

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
        if step is not None and step <= self.logged_through:
            return  # logged before the interruption
        self._log_rows([{"step": step or 0, **{k: v for k, v in metrics.items() if v is not None}}])

    def log_history(self, rows: list[dict[str, float]]) -> None:
        self._log_rows([r for r in rows if int(r["step"]) > self.logged_through])

    def _log_rows(self, rows: list[dict[str, float]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(k, float(v), now, int(r["step"]))
            for r in rows
            for k, v in r.items()
            if k != "step" and v == v  # NaN: a stat not measured at this step (lazy R1)
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

        model = onnx.load(str(onnx_path))
        signature, example = _onnx_signature(onnx_path)

        def log() -> str:
            mlflow.set_tracking_uri(self.uri)  # start_run is fluent: this run's store
            with mlflow.start_run(run_id=self.run_id):
                info = mlflow.onnx.log_model(
                    model,
                    name="generator",
                    signature=signature,
                    input_example=example,
                    # say which providers to use, or MLflow warns about CUDA ones on CPU machines
                    onnx_execution_providers=["CPUExecutionProvider"],
                    # stated, not inferred: inference spawns a subprocess and takes seconds
                    pip_requirements=[f"onnx=={onnx.__version__}", "onnxruntime"],
                )
            return info.model_uri

        return self._call("log model", log)

    def settle(self, generator_sha256: str) -> dict[str, Any]:
        """A retrain that reproduced a generator bit for bit adopts the run that made it first
        (this run is deleted), so no orphan run is left and provenance does not move."""
        tag = "ganforge.generator_sha256"
        found = self._call(
            "search runs",
            self.client.search_runs,
            [self.experiment_id],
            filter_string=f"tags.`{tag}` = '{generator_sha256}' and attributes.status = 'FINISHED'",
            max_results=5,
        )
        earlier = next((r for r in found if r.info.run_id != self.run_id), None)
        if earlier is None:
            self.set_tags({tag: generator_sha256})
        else:
            log.info(
                "identical to the generator of run %s: this run is dropped", earlier.info.run_id
            )
            self._call("delete run", self.client.delete_run, self.run_id)
            self.run_id = earlier.info.run_id
        return self.record()

    def log_image(self, path: str | Path, key: str, step: int) -> None:
        """A grid under ``key`` at ``step``: the UI's image slider compares steps."""
        from PIL import Image

        if step <= self.logged_through:
            return

        with Image.open(path) as im:
            im.load()
            self._call(
                "log image", self.client.log_image, self.run_id, im.copy(), key=key, step=step
            )

    def end(self, status: str = "FINISHED") -> None:
        self._call("end run", self.client.set_terminated, self.run_id, status)


def _onnx_signature(onnx_path: str | Path):
    """(signature, input example) of a ganforge ONNX generator, from one run of it: inputs
    ``z`` float32 (-1, latent) [+ ``labels`` int64 (-1,)], output ``images`` float32
    (-1, C, H, W)."""
    import numpy as np
    import onnxruntime as ort
    from mlflow.models import infer_signature

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    example = {"z": np.zeros((2, int(meta[onnxmeta.LATENT_DIM])), np.float32)}
    if meta.get(onnxmeta.CONDITIONAL) == "true":
        example["labels"] = np.zeros(2, np.int64)
    images = session.run(["images"], example)[0]
    return infer_signature(example, {"images": images}), example


def _interrupted_run(client, uri: str, partial: Path | None) -> MlflowRun | None:
    """The run an interrupted training recorded in its partial directory, reopened (status
    RUNNING again), if it is in this store and not deleted; else None (a new run is opened)."""
    path = None if partial is None else partial / RUN_FILE
    if path is None or not path.is_file():
        return None
    try:
        recorded = json.loads(path.read_text())
        if recorded.get("tracking_uri") != uri:
            return None
        found = client.get_run(recorded["run_id"])
    except Exception:  # unreadable record, or no such run here: start a new one
        return None
    if found.info.lifecycle_stage != "active":
        return None
    run = MlflowRun(found.info.run_id, uri, found.info.experiment_id)
    history = [client.get_metric_history(run.run_id, key) for key in found.data.metrics]
    run.logged_through = max((m.step for h in history for m in h), default=-1)
    client.update_run(run.run_id, status="RUNNING")
    was, through = found.info.status, run.logged_through
    log.info("resuming MLflow run %s (%s; steps through %d kept)", run.run_id, was, through)
    return run


@contextlib.contextmanager
def training_run(
    params, manifest: dict[str, Any], resume_from: str | Path | None = None
) -> Iterator[RunLog]:
    """Open the run of one training, yield it, and close it with the outcome's status.

    The training stage writes ``run.record()`` into the run directory with its other
    outputs, so a failed run never rewrites the last good run's provenance. ``resume_from``:
    the partial directory of an interrupted training (``--resume``); the run it recorded
    continues (one run per training, its curves whole, a killed run closed), where that run
    is still in this store; its params are those it was opened with."""
    if not enabled(params.mlflow.enabled):
        yield Untracked()
        return
    uri = tracking_uri()
    check_reachable(uri)
    client = _client(uri)
    try:
        resumed = _interrupted_run(client, uri, Path(resume_from) if resume_from else None)
    except Exception as exc:
        raise TrackingError(f"MLflow could not reopen a run on {uri}: {_first_line(exc)}") from None
    if resumed is not None:
        yield from _closing(resumed, resumed.run_id)
        return
    name = f"{params.mlflow.experiment_prefix}-{dataset_name(manifest)}"
    lock = Path("dvc.lock")
    tags = {
        # distinct names in the UI: family, data, a short id (run_name is a directory, often "main")
        "mlflow.runName": f"{params.train.model}-{dataset_name(manifest)}-{uuid.uuid4().hex[:6]}",
        "ganforge.run_dir": params.train.run_name,
        "ganforge.model": params.train.model,
        "ganforge.dataset": dataset_name(manifest),
        "ganforge.data_sha256": manifest["content_sha256"],
        "git_commit": _git_commit() or "unknown",
        # dvc.lock as it was when this run started (DVC writes this run's entry after it)
        "dvc_lock_sha256": hashlib.sha256(lock.read_bytes()).hexdigest()
        if lock.is_file()
        else "none",
        # what this run's inputs are: every param and the prepared data's content
        "ganforge.inputs_sha256": hashlib.sha256(
            json.dumps(
                {"params": params.flat(), "data_sha256": manifest["content_sha256"]},
                sort_keys=True,
                default=str,
            ).encode()
        ).hexdigest(),
    }
    if os.environ.get("DVC_EXP_NAME"):  # set by `dvc exp run` in every stage's environment
        tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
    try:
        exp = client.get_experiment_by_name(name)
        exp_id = (
            exp.experiment_id
            if exp
            # a model-training experiment: MLflow 3's UI opens it in its training-runs view
            else client.create_experiment(
                name,
                artifact_location=default_artifact_location(uri),
                tags={"mlflow.experimentKind": "custom_model_development"},
            )
        )
        run_id = client.create_run(exp_id, tags=tags).info.run_id
    except Exception as exc:
        raise TrackingError(f"MLflow could not open a run on {uri}: {_first_line(exc)}") from None
    run = MlflowRun(run_id, uri, exp_id)
    run.log_params(params.flat())
    yield from _closing(run, run_id)


def _closing(run: MlflowRun, run_id: str) -> Iterator[RunLog]:
    """Yield ``run``; end it FINISHED, or KILLED (Ctrl-C, SIGTERM) or FAILED with the error."""
    try:
        yield run
    except BaseException:
        if run.run_id != run_id:  # adopted an earlier run: never mark that one failed
            raise
        # Ctrl-C or SIGTERM (ganforge.errors.Terminated) -> KILLED
        status = "KILLED" if isinstance(sys.exc_info()[1], KeyboardInterrupt) else "FAILED"
        try:  # best effort: the server may be the thing that failed; keep the original error
            run.end(status)
        except TrackingError as exc:
            log.warning("could not mark the MLflow run %s: %s", status, exc)
        raise
    if run.run_id == run_id:
        run.end()


def reopen_run(params, run_dir: str | Path) -> RunLog:
    """The training run's ``RunLog`` for a later stage (``Untracked`` if it was untracked)."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file() or not enabled(params.mlflow.enabled):
        return Untracked()
    recorded = json.loads(path.read_text())
    uri = tracking_uri()
    if uri != recorded["tracking_uri"]:
        log.warning(
            "run %s was tracked at %s; now tracking at %s",
            recorded["run_id"],
            recorded["tracking_uri"],
            uri,
        )
    check_reachable(uri)
    return MlflowRun(recorded["run_id"], uri)


def log_evaluation(run: RunLog, metrics: dict[str, Any], metrics_path, reports_dir) -> None:
    """Every number as a metric, the protocol as tags, eval.json and the reports as artifacts."""
    if isinstance(run, Untracked):
        return
    numbers = {
        k: v
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None
    }
    for flag in ("mode_collapse", "separable"):  # booleans as 0/1 metrics (null: not assessed)
        if metrics.get(flag) is not None:
            numbers[flag] = float(metrics[flag])
    for name, value in (metrics.get("negative_controls") or {}).items():
        numbers[f"control_{name}"] = value
    run.log_metrics({k: v for k, v in numbers.items() if v is not None})
    tags = {f"eval.{k}": v for k, v in metrics["protocol"].items()}
    tags["eval.mode_collapse_rule"] = metrics.get("mode_collapse_rule")
    tags["eval.mode_collapse_basis"] = metrics.get("mode_collapse_basis")
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
    uri = existing_store(tracking_uri())
    try:
        return Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=model_uri, dst_path=str(dest) if dest else None, tracking_uri=uri
            )
        )
    except Exception as exc:  # MlflowException and store errors: report, never a traceback
        raise GanforgeError(f"{model_uri}: cannot resolve on {uri} ({_first_line(exc)})") from None


def registry_version(model_uri: str) -> str | None:
    """The version a ``models:/name@alias`` or ``models:/name/version`` URI stands for now."""
    rest = model_uri.removeprefix("models:/")
    if rest == model_uri:
        return None
    name, _, alias = rest.partition("@")
    if not alias:
        return rest.partition("/")[2] or None
    try:
        return str(
            _client(existing_store(tracking_uri())).get_model_version_by_alias(name, alias).version
        )
    except Exception:  # noqa: BLE001 - informational only: the download already succeeded
        return None
