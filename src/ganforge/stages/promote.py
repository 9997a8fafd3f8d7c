"""Stage ``promote``: register the exported generator and move the ``champion`` alias by metric.

    ganforge promote [--eval metrics/eval.json] [--export metrics/export.json]
                     [--out metrics/promote.json]
    ganforge promote --history        # the audit trail of alias changes

Every evaluated, exported generator becomes a new version of the registered model
``<mlflow.registered_model_prefix>-<dataset>-<model>`` (the ONNX model logged by export),
with its metrics as version tags. ``decide`` (pure; ``ganforge.metrics.promotion``, with the
typed ``Candidate`` it compares) gives it the alias ``champion`` only if

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
``ganforge.tracking``; this module is the record, ``ganforge.metrics.promotion`` the rule.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from ganforge.core.files import write_json
from ganforge.metrics.promotion import Candidate, Decision, PromotionError, decide

__all__ = ["CHAMPION", "Candidate", "Decision", "PromotionError", "decide", "promote"]

CHAMPION = "champion"


# --------------------------------------------------------------------------- the record


def registered_model_name(params, dataset: str, family: str) -> str:
    return f"{params.mlflow.registered_model_prefix}-{dataset}-{family}"


def after_step(step: str) -> None:
    """Called once each recorded step is in the registry ("registered", "decided", "applied").
    Does nothing; the crash tests replace it to kill the process there and prove a rerun
    converges (tests/test_promote.py)."""


def _decide(registry, name: str, new: Candidate) -> dict[str, Any]:
    """Apply the rule against the current champion and record the decision on the version."""
    current = registry.champion(name)
    champion = Candidate.from_tags(*current) if current and current[0] != new.version else None
    decision = decide(new, champion)
    entry = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "from_version": champion.version if champion else None,
        "to_version": new.version if decision.promote else (champion and champion.version),
        "candidate": new.version,
        "promoted": decision.promote,
        "reason": decision.reason,
        "metrics": {
            "fid": new.fid,
            "fid_ci95": list(new.fid_ci95),
            "mode_collapse": new.mode_collapse,
            "c2st_accuracy": new.scores.get("c2st_accuracy"),
            "c2st_ci95": list(new.c2st_ci95) if new.c2st_ci95 else None,
            "c2st_null_accuracy": new.scores.get("c2st_null_accuracy"),
            "copying": new.copying,
            "fid_at_floor_samples": new.scores.get("fid_at_floor_samples"),
            "fid_floor": new.scores.get("fid_floor"),
        },
        "run_id": new.run_id,
    }
    registry.tag_version(name, new.version, {"decision": json.dumps(entry)})
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

    candidate, where = Candidate.from_files(eval_path, export_path)
    name = registered_model_name(params, where["dataset"], where["family"])
    registry = Registry()
    # Everything that writes the registry happens under the lock: concurrent promotions
    # neither contend on the store nor decide on a champion that is being replaced.
    with registry.lock(name):
        version, known = registry.find_or_register(name, where["source"], candidate.to_tags())
        candidate = replace(candidate, version=version)
        after_step("registered")
        entry = json.loads(known["decision"]) if "decision" in known else None
        for _attempt in range(3):
            if entry is None:
                entry = _decide(registry, name, candidate)
            after_step("decided")
            if registry.apply(name, entry):
                break
            entry = None  # the champion moved since this was decided (another machine): again
        else:
            raise PromotionError(
                f"{name}: the champion alias kept moving under this promotion; rerun it"
            )
        after_step("applied")
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
