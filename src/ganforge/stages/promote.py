"""Stage ``promote``: register the exported generator and move the ``champion`` alias by metric.

    ganforge promote [--eval metrics/eval.json] [--export metrics/export.json]
                     [--out metrics/promote.json]
    ganforge promote --history        # the audit trail of alias changes

Every evaluated, exported generator becomes a new version of the registered model
``<mlflow.registered_model_prefix>-<dataset>-<model>`` (the ONNX model logged by export),
with its metrics as version tags. ``decide`` (pure) gives it the alias ``champion`` only if

1. its parity check passed, and
2. its feature space could separate it from real data (``separable`` in eval.json: its FID
   is above the real-data floor), and it is not flagged for mode collapse and has a
   verdict (``mode_collapse`` null = not assessed: refused, with the reason), and
3. there is no champion, or its FID beats the champion's by more than their 95% intervals
   allow (its upper bound is below the champion's lower bound);

otherwise it is tagged ``role=challenger`` with the reason. Registry aliases only (never the
deprecated stages). Each decision is appended to the audit trail, kept as registered-model
tags ``audit.<time>.<version>`` = JSON (from, to, metrics, reason, time, run id).

Concurrency: the read-decide-write step holds the registry's lock
(``ganforge.tracking.Registry.lock``: a file lock beside a SQLite store, a lease in the
registry of a tracking server), so concurrent promotions, from one machine or several,
are serialised: never two champions, never the better model lost. All registry calls are in
``ganforge.tracking``; this module is the rule and the record.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ganforge.core.files import read_metrics, write_json
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
    data_sha256: str | None = None  # the prepared data it was trained and judged on
    # False: its FID is at or under the real-data floor in its feature space (no evidence)
    separable: bool = True
    collapse_basis: str = ""  # what the collapse verdict rests on (or why there is none)


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def decide(new: Candidate, champion: Candidate | None) -> Decision:
    """The promotion rule. Pure: the same inputs give the same decision."""
    if not new.parity_passed:
        return Decision(False, "ONNX parity check did not pass")
    if not new.separable:
        return Decision(
            False,
            "feature space cannot separate these sets (FID at or under the real-data floor, or KID "
            "below zero): the scores are no evidence of a good model",
        )
    if new.mode_collapse:
        return Decision(False, "flagged for mode collapse")
    if new.mode_collapse is None:
        return Decision(False, f"no mode-collapse verdict ({new.collapse_basis or 'not assessed'})")
    if champion is None:
        return Decision(True, "no champion yet")
    if new.version == champion.version:
        return Decision(False, "already the champion")
    if new.data_sha256 != champion.data_sha256:
        return Decision(
            False,
            f"trained on other data than champion v{champion.version} (data sha256 "
            f"{str(new.data_sha256)[:12]} vs {str(champion.data_sha256)[:12]}): FIDs on different data "
            "are not compared; give each dataset its own prepare.name",
        )
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
    try:
        fid, lo, hi = (float(tags[k]) for k in ("fid", "fid_ci95_low", "fid_ci95_high"))
    except (KeyError, ValueError):
        raise PromotionError(
            f"registry version {version}: tags fid / fid_ci95_low / fid_ci95_high missing or not numbers"
        ) from None
    return Candidate(
        version=version,
        fid=fid,
        fid_ci95=(lo, hi),
        mode_collapse={"true": True, "false": False}.get(tags.get("mode_collapse", "")),
        parity_passed=tags.get("parity_passed") == "true",
        data_sha256=tags.get("data_sha256"),
        separable=tags.get("separable", "true") != "false",  # versions before the check: true
        collapse_basis=tags.get("mode_collapse_basis", ""),
    )


def _read_json(path: str | Path, what: str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise PromotionError(f"{path}: not found ({what}); run the earlier stages first")
    try:
        data = read_metrics(path)  # with its _details file: the protocol and provenance
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise PromotionError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise PromotionError(f"{path}: not a JSON object ({what})")
    return data


def _need(data: dict[str, Any], path, key: str, kind: type, hint: str = ""):
    """``data[key]`` (dotted) if it is a ``kind`` (a finite number for float), else one line
    naming the file and the key."""
    value: Any = data
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if kind is float:
        ok = (
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        )
        value = float(value) if ok else value
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise PromotionError(f"{path}: {key} is {value!r}, not a usable {kind.__name__}{hint}")
    return value


def read_candidate(eval_path, export_path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The version tags and the run of the candidate, checked before the registry is touched."""
    m, e = (
        _read_json(eval_path, "evaluate's metrics"),
        _read_json(export_path, "export's parity report"),
    )
    no_ci = " (evaluate.bootstrap=0 gives none; promotion compares intervals)"
    fid = _need(m, eval_path, "fid", float)
    ci = m.get("fid_ci95") if isinstance(m.get("fid_ci95"), list) else []
    lo, hi = (
        _need({"fid_ci95": v}, eval_path, "fid_ci95", float, no_ci) for v in (ci + [None, None])[:2]
    )
    gen = _need(m, eval_path, "protocol.generator_sha256", str)
    if _need(e, export_path, "generator_sha256", str) != gen:
        raise PromotionError(f"{export_path} and {eval_path} describe different generator files")
    source = e.get("mlflow_model_uri")
    if not isinstance(source, str) or not isinstance(e.get("mlflow_run_id"), str):
        raise PromotionError(
            f"{export_path}: no mlflow_model_uri (export ran without MLflow tracking; see mlflow.enabled)"
        )
    diff = _need(e, export_path, "parity_max_abs_diff", float)
    passed = diff <= _need(e, export_path, "parity_tolerance", float)
    collapse = m.get("mode_collapse")
    tags = {
        "fid": fid, "fid_ci95_low": lo, "fid_ci95_high": hi,
        **{k: m.get(k) for k in ("fid_floor", "kid_mean", "is_mean", "precision", "recall", "class_coverage")},
        "mode_collapse": {True: "true", False: "false"}.get(collapse, "unknown"),
        "mode_collapse_basis": str(m.get("mode_collapse_rule") if collapse is None else m.get("mode_collapse_basis", "class histogram"))[:400],
        "separable": "false" if m.get("separable") is False else "true",
        "parity_passed": "true" if passed else "false",
        "parity_max_abs_diff": diff,
        "run_id": e["mlflow_run_id"],
        "generator_sha256": gen,
        "onnx_sha256": _need(e, export_path, "onnx_sha256", str),
        "data_sha256": _need(m, eval_path, "protocol.data_sha256", str),
    }  # fmt: skip
    where = {
        "source": source,
        "dataset": _need(m, eval_path, "protocol.dataset", str),
        "family": _need(m, eval_path, "protocol.generator_family", str),
    }
    return tags, where


def _fault_point(name: str) -> None:
    """Tests kill the process here (``GANFORGE_FAULT=<name>``) to prove promote converges."""
    if os.environ.get("GANFORGE_FAULT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def _decide(registry, name: str, version: str, tags: dict[str, Any]) -> dict[str, Any]:
    """Apply the rule against the current champion and record the decision on the version."""
    current = registry.champion(name)
    champion = _candidate_from_tags(*current) if current and current[0] != version else None
    new = _candidate_from_tags(version, {k: str(v) for k, v in tags.items()})
    decision = decide(new, champion)
    entry = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "from_version": champion.version if champion else None,
        "to_version": version if decision.promote else (champion.version if champion else None),
        "candidate": version,
        "promoted": decision.promote,
        "reason": decision.reason,
        "metrics": {"fid": new.fid, "fid_ci95": list(new.fid_ci95), "mode_collapse": new.mode_collapse},
        "run_id": tags["run_id"],
    }  # fmt: skip
    registry.tag_version(name, version, {"decision": json.dumps(entry)})
    return entry


def promote(
    params, eval_path: str | Path, export_path: str | Path, out_path: str | Path
) -> dict[str, Any]:
    """Register the exported generator (once) and apply the rule; returns the decision record.

    Crash-safe and idempotent: every step is recorded in the registry before the next one
    runs (the version with its ``generator_sha256`` tag, its ``decision`` tag, the alias and
    roles, the audit entry), and a rerun finds the version by its generator's sha256 and
    completes what is missing. A generator already in the registry is never registered again.
    """
    from ganforge.tracking import Registry

    tags, where = read_candidate(eval_path, export_path)
    name = registered_model_name(params, where["dataset"], where["family"])
    registry = Registry()
    # Everything that writes the registry happens under the lock: concurrent promotions
    # neither contend on the store nor decide on a champion that is being replaced.
    with registry.lock(name):
        version, known = registry.find_or_register(name, where["source"], tags)
        _fault_point("registered")
        entry = json.loads(known["decision"]) if "decision" in known else None
        for _attempt in range(3):
            if entry is None:
                entry = _decide(registry, name, version, tags)
            _fault_point("decided")
            if registry.apply(name, entry):
                break
            entry = None  # the champion moved since this was decided (another machine): again
        else:
            raise PromotionError(
                f"{name}: the champion alias kept moving under this promotion; rerun it"
            )
        _fault_point("applied")
        registry.audit(name, entry)
    reason = entry["reason"]
    record = {
        "registered_model": name,
        "version": version,
        "promote": entry["promoted"],
        "reason": f"already registered as v{version}: {reason}" if known else reason,
        "champion_before": entry["from_version"],
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
