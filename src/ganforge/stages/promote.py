"""Stage ``promote``: register the exported generator and move the ``champion`` alias by metric.

    ganforge promote [--eval metrics/eval.json] [--export metrics/export.json]
                     [--out metrics/promote.json]
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

Concurrency: the read-decide-write step holds the registry's lock
(``ganforge.tracking.Registry.lock``), so concurrent promotions on one machine are
serialised: never two champions, never the better model lost. All registry calls are in
``ganforge.tracking``; this module is the rule and the record.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ganforge.core.files import write_json
from ganforge.errors import GanforgeError

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


# --------------------------------------------------------------------------- the record


def registered_model_name(params, dataset: str, family: str) -> str:
    return f"{params.mlflow.registered_model_prefix}-{dataset}-{family}"


def _candidate_from_tags(version: str, tags: dict[str, str]) -> Candidate:
    """A registered version as the rule sees it (its metrics were stored as version tags)."""
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


def _version_tags(
    metrics: dict[str, Any], exported: dict[str, Any], passed: bool
) -> dict[str, Any]:
    collapse = {True: "true", False: "false"}.get(metrics.get("mode_collapse"), "unknown")
    return {
        "fid": metrics["fid"],
        "fid_ci95_low": metrics["fid_ci95"][0],
        "fid_ci95_high": metrics["fid_ci95"][1],
        "fid_floor": metrics["fid_floor"],
        "kid_mean": metrics["kid_mean"],
        "is_mean": metrics["is_mean"],
        "precision": metrics["precision"],
        "recall": metrics["recall"],
        "class_coverage": metrics.get("class_coverage"),
        "mode_collapse": collapse,
        "parity_passed": "true" if passed else "false",
        "parity_max_abs_diff": exported["parity_max_abs_diff"],
        "run_id": exported["mlflow_run_id"],
        "generator_sha256": exported["generator_sha256"],
        "onnx_sha256": exported["onnx_sha256"],
    }


def promote(
    params, eval_path: str | Path, export_path: str | Path, out_path: str | Path
) -> dict[str, Any]:
    """Register the exported generator and apply the rule; returns the decision record."""
    from ganforge.tracking import Registry

    metrics = _read_json(eval_path, "evaluate's metrics")
    exported = _read_json(export_path, "export's parity report")
    if exported.get("generator_sha256") != metrics["protocol"]["generator_sha256"]:
        raise PromotionError(f"{export_path} and {eval_path} describe different generator files")
    source, run_id = exported.get("mlflow_model_uri"), exported.get("mlflow_run_id")
    if not source or not run_id:
        raise PromotionError(
            f"{export_path}: no mlflow_model_uri (export ran without MLflow tracking; see mlflow.enabled)"
        )
    passed = exported["parity_max_abs_diff"] <= exported["parity_tolerance"]
    protocol = metrics["protocol"]
    name = registered_model_name(params, protocol["dataset"], protocol["generator_family"])
    registry = Registry()
    # Everything that writes the registry happens under the lock: concurrent promotions
    # neither contend on the store nor decide on a champion that is being replaced.
    with registry.lock():
        version = registry.register(name, source, _version_tags(metrics, exported, passed))
        new = Candidate(
            version,
            metrics["fid"],
            tuple(metrics["fid_ci95"]),
            metrics.get("mode_collapse"),
            passed,
        )
        current = registry.champion(name)
        champion = _candidate_from_tags(*current) if current else None
        decision = decide(new, champion)
        if decision.promote:
            registry.set_champion(name, version, champion.version if champion else None)
        else:
            registry.tag_version(
                name, version, {"role": "challenger", "challenger_reason": decision.reason[:4000]}
            )
        registry.audit(name, {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "from_version": champion.version if champion else None,
            "to_version": version if decision.promote else (champion.version if champion else None),
            "candidate": version,
            "promoted": decision.promote,
            "reason": decision.reason,
            "metrics": {"fid": new.fid, "fid_ci95": list(new.fid_ci95), "mode_collapse": new.mode_collapse},
            "run_id": run_id,
        })  # fmt: skip
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
    from ganforge.tracking import Registry

    return Registry().history(name, params.mlflow.registered_model_prefix)


def format_history(entries: list[dict[str, Any]]) -> list[str]:
    """One line per decision, as ``ganforge promote --history`` prints them."""
    lines = []
    for e in entries:
        move = (
            f"champion v{e['from_version']} -> v{e['to_version']}" if e["promoted"] else "no change"
        )
        lines.append(
            f"{e['time']}  {e['registered_model']}  v{e['candidate']}  "
            f"{'PROMOTED' if e['promoted'] else 'challenger'}  {move}  "
            f"fid={e['metrics']['fid']}  run={e['run_id']}  reason: {e['reason']}"
        )
    return lines
