"""Stage ``promote``: register the exported generator and move the ``champion`` alias by metric.

    ganforge promote [--run-dir models/main] [--eval metrics/eval.json]
                     [--export metrics/export.json] [--out metrics/promote.json]
    ganforge promote --history        # the audit trail of alias changes

Every evaluated, exported generator becomes a new version of the registered model
``<mlflow.registered_model_prefix>-<dataset>-<model>`` (the ONNX model logged by export),
with its metrics as version tags. ``decide`` (pure) gives it the alias ``champion`` only if

1. its parity check passed, and
2. it is not flagged for mode collapse, and
3. there is no champion, or its FID beats the champion's by more than their 95% intervals
   allow (its upper bound is below the champion's lower bound);

otherwise it is tagged ``role=challenger`` with the reason. Registry aliases only (never the
deprecated stages). Each decision is appended to the audit trail, kept as registered-model
tags ``audit.<time>.<version>`` = JSON (from, to, metrics, reason, time, run id).

Concurrency: the read-decide-write step holds an exclusive file lock (beside a SQLite
store, or in the user cache for a server), so concurrent promotions on one machine are
serialised: never two champions, never the better model lost.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ganforge.errors import GanforgeError
from ganforge.io import write_json

log = logging.getLogger(__name__)

CHAMPION = "champion"


class PromotionError(GanforgeError):
    """Inputs missing or inconsistent, or the registry refused."""


@dataclass(frozen=True)
class Candidate:
    version: str
    fid: float
    fid_ci95: tuple[float, float]
    mode_collapse: bool | None
    parity_passed: bool


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def decide(new: Candidate, champion: Candidate | None) -> Decision:
    """The promotion rule. Pure: the same inputs give the same decision."""
    if not new.parity_passed:
        return Decision(False, "ONNX parity check did not pass")
    if new.mode_collapse:
        return Decision(False, "flagged for mode collapse")
    if new.mode_collapse is None:
        return Decision(False, "no mode-collapse verdict (evaluate with the feature network)")
    if champion is None:
        return Decision(True, "no champion yet")
    if new.version == champion.version:
        return Decision(False, "already the champion")
    if new.fid_ci95[1] < champion.fid_ci95[0]:
        return Decision(
            True,
            f"FID {new.fid:.4g} [{new.fid_ci95[0]:.4g}, {new.fid_ci95[1]:.4g}] beats champion v{champion.version} "
            f"{champion.fid:.4g} [{champion.fid_ci95[0]:.4g}, {champion.fid_ci95[1]:.4g}] beyond both intervals",
        )
    return Decision(
        False,
        f"FID {new.fid:.4g} [{new.fid_ci95[0]:.4g}, {new.fid_ci95[1]:.4g}] does not beat champion "
        f"v{champion.version} {champion.fid:.4g} [{champion.fid_ci95[0]:.4g}, {champion.fid_ci95[1]:.4g}] "
        "beyond their 95% intervals",
    )


# --------------------------------------------------------------------------- registry edge


def registered_model_name(params, manifest_or_dataset: dict[str, Any] | str, model: str) -> str:
    from ganforge.tracking import dataset_name

    ds = (
        manifest_or_dataset
        if isinstance(manifest_or_dataset, str)
        else dataset_name(manifest_or_dataset)
    )
    return f"{params.mlflow.registered_model_prefix}-{ds}-{model}"


def _lock_path(uri: str) -> Path:
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        return db.with_name(db.name + ".promote.lock")
    digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
    d = Path.home() / ".cache" / "ganforge"
    d.mkdir(parents=True, exist_ok=True)
    return d / f"promote-{digest}.lock"


@contextlib.contextmanager
def registry_lock(uri: str) -> Iterator[None]:
    path = _lock_path(uri)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _candidate_from_tags(version: str, tags: dict[str, str]) -> Candidate:
    return Candidate(
        version=version,
        fid=float(tags["fid"]),
        fid_ci95=(float(tags["fid_ci95_low"]), float(tags["fid_ci95_high"])),
        mode_collapse={"true": True, "false": False}.get(tags.get("mode_collapse", "")),
        parity_passed=tags.get("parity_passed") == "true",
    )


def _read_json(path: str | Path, what: str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise PromotionError(f"{path}: not found ({what}); run the earlier stages first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PromotionError(f"{path}: not valid JSON ({exc})") from None


def promote(
    params,
    run_dir: str | Path,
    eval_path: str | Path,
    export_path: str | Path,
    out_path: str | Path,
) -> dict[str, Any]:
    """Register the run's ONNX generator and apply the rule; returns the decision record."""
    from ganforge.tracking import RUN_FILE, _mlflow, check_reachable, tracking_uri

    metrics = _read_json(eval_path, "evaluate's metrics")
    exported = _read_json(export_path, "export's parity report")
    run_file = Path(run_dir) / RUN_FILE
    if not run_file.is_file():
        raise PromotionError(
            f"{run_file}: not found; promotion needs MLflow tracking (mlflow.enabled)"
        )
    run_id = json.loads(run_file.read_text())["run_id"]
    if exported.get("generator_sha256") != metrics["protocol"]["generator_sha256"]:
        raise PromotionError(f"{export_path} and {eval_path} describe different generator files")
    uri = tracking_uri()
    check_reachable(uri)
    mlflow = _mlflow()
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    # register_model is fluent: point the global URI at this store, whatever was set before
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = client.get_run(run_id)
    name = registered_model_name(
        params,
        run.data.tags.get("ganforge.dataset", "data"),
        metrics["protocol"]["generator_family"],
    )
    tags = {
        "fid": metrics["fid"],
        "fid_ci95_low": metrics["fid_ci95"][0],
        "fid_ci95_high": metrics["fid_ci95"][1],
        "fid_floor": metrics["fid_floor"],
        "kid_mean": metrics["kid_mean"],
        "is_mean": metrics["is_mean"],
        "precision": metrics["precision"],
        "recall": metrics["recall"],
        "class_coverage": metrics.get("class_coverage"),
        "mode_collapse": {True: "true", False: "false"}.get(
            metrics.get("mode_collapse"), "unknown"
        ),
        "parity_passed": "true" if exported.get("parity_passed") else "false",
        "parity_max_abs_diff": exported.get("parity_max_abs_diff"),
        "run_id": run_id,
        "generator_sha256": exported["generator_sha256"],
        "onnx_sha256": exported.get("onnx_sha256"),
    }
    source = exported.get("mlflow_model_uri")
    if not source:
        raise PromotionError(
            f"{export_path}: no mlflow_model_uri (export ran without MLflow tracking)"
        )
    try:
        # Everything that writes the registry happens under the lock: concurrent promotions
        # neither contend on the store nor decide on a champion that is being replaced.
        with registry_lock(uri):
            if not client.search_registered_models(filter_string=f"name = '{name}'"):
                client.create_registered_model(
                    name, description="ganforge generators (ONNX); alias champion = deployed"
                )
            mv = mlflow.register_model(
                source, name, tags={k: str(v) for k, v in tags.items() if v is not None}
            )
            version = str(mv.version)
            new = _candidate_from_tags(version, {k: str(v) for k, v in tags.items()})
            # the alias map: a missing champion is absent here, not an exception; any error
            # reading it fails the stage instead of passing for "no champion"
            champ_version = client.get_registered_model(name).aliases.get(CHAMPION)
            champ_mv = client.get_model_version(name, champ_version) if champ_version else None
            champion = (
                _candidate_from_tags(str(champ_mv.version), champ_mv.tags) if champ_mv else None
            )
            decision = decide(new, champion)
            if decision.promote:
                client.set_registered_model_alias(name, CHAMPION, version)
                client.set_model_version_tag(name, version, "role", CHAMPION)
                if champ_mv:
                    client.set_model_version_tag(name, champ_mv.version, "role", "former-champion")
            else:
                client.set_model_version_tag(name, version, "role", "challenger")
                client.set_model_version_tag(
                    name, version, "challenger_reason", decision.reason[:4000]
                )
            entry = {
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "from_version": champion.version if champion else None,
                "to_version": version
                if decision.promote
                else (champion.version if champion else None),
                "candidate": version,
                "promoted": decision.promote,
                "reason": decision.reason,
                "metrics": {
                    "fid": new.fid,
                    "fid_ci95": list(new.fid_ci95),
                    "mode_collapse": new.mode_collapse,
                },
                "run_id": run_id,
            }
            client.set_registered_model_tag(
                name, f"audit.{time.time_ns()}.{version}", json.dumps(entry)
            )
    except MlflowException as exc:
        raise PromotionError(
            f"MLflow registry on {uri}: {str(exc).splitlines()[0][:300]}"
        ) from None
    record = {
        "registered_model": name,
        "version": version,
        **asdict(decision),
        "champion_before": champion.version if champion else None,
    }
    write_json(out_path, record)
    return record


def history(params, name: str | None = None) -> list[dict[str, Any]]:
    """Audit entries of one registered model (or every ganforge one), oldest first."""
    from ganforge.tracking import _mlflow, check_reachable, tracking_uri

    uri = tracking_uri()
    check_reachable(uri)
    _mlflow()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    models = (
        [client.get_registered_model(name)]
        if name
        else client.search_registered_models(
            filter_string=f"name LIKE '{params.mlflow.registered_model_prefix}-%'"
        )
    )
    entries = []
    for rm in models:
        for key, value in rm.tags.items():
            if key.startswith("audit."):
                entries.append({"registered_model": rm.name, "key": key, **json.loads(value)})
    entries.sort(key=lambda e: int(e["key"].split(".")[1]))
    return entries
