"""Prefect flows: the DVC stages as tasks, in order, with retries.

Each task runs ``dvc repro --single-item <stage>`` in the project directory, so DVC's
cache and ``dvc.lock`` stay the record of what ran; a stage that is up to date is a
no-op. A failing stage fails its task (after ``schedule.retries`` retries, for
transient failures such as a tracking server that is briefly away) and the flow, with
the stage's own one-line error as the message.

    python -m pipelines.flows training   # the whole pipeline once
    python -m pipelines.flows retrain    # a fresh challenger on the current data
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task

STAGES = ("prepare", "featurenet", "train", "evaluate", "export", "promote")
ROOT = Path(__file__).resolve().parents[1]


class StageFailed(RuntimeError):
    """A DVC stage exited non-zero; the message is the stage's own error line."""


def _stage_error(stage: str, output: str) -> str:
    """The most telling line of a failed stage: ganforge's one-line error, else DVC's, else the last."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    for prefix in ("ganforge ", "ERROR:"):
        hits = [ln for ln in lines if ln.startswith(prefix) and "error" in ln.lower()]
        if hits:
            return hits[0] if prefix == "ganforge " else hits[-1]
    return lines[-1] if lines else f"dvc repro {stage} failed with no output"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # the stages' `ganforge` command lives beside this interpreter (the project's venv)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("DO_NOT_TRACK", "true")
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    return env


@task(name="dvc-stage", task_run_name="{stage}")
def run_stage(stage: str, repo: str, force: bool = False) -> str:
    """``dvc repro --single-item <stage>`` in ``repo``; returns the stage's last output line."""
    logger = get_run_logger()
    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", stage] + (
        ["--force"] if force else []
    )
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env=_env())
    output = proc.stdout + proc.stderr
    for line in output.splitlines()[-20:]:
        logger.info("%s | %s", stage, line)
    if proc.returncode != 0:
        raise StageFailed(f"stage {stage} failed: {_stage_error(stage, output)}")
    return output.strip().splitlines()[-1] if output.strip() else ""


def _retrying(repo: str):
    """run_stage with the retry policy from params.yaml's schedule section."""
    from ganforge.config import load_params

    s = load_params(Path(repo) / "params.yaml").schedule
    return run_stage.with_options(retries=s.retries, retry_delay_seconds=s.retry_delay_s)


@flow(name="ganforge-training")
def training_flow(repo: str = str(ROOT), stages: list[str] | None = None) -> dict[str, str]:
    """Every stage in order (DVC skips those that are up to date)."""
    stage_task = _retrying(repo)
    results = {}
    for stage in stages or STAGES:
        results[stage] = stage_task(stage, repo)
    return results


@flow(name="ganforge-retrain")
def retrain_flow(repo: str = str(ROOT)) -> dict[str, str]:
    """Re-read the data and train a challenger on it, then evaluate, export and let
    ``ganforge promote`` decide: the new model becomes champion only by the promotion rule."""
    stage_task = _retrying(repo)
    results = {"prepare": stage_task("prepare", repo, force=True)}
    results["featurenet"] = stage_task("featurenet", repo)
    results["train"] = stage_task("train", repo, force=True)
    for stage in ("evaluate", "export", "promote"):
        results[stage] = stage_task(stage, repo)
    return results


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "training"
    (retrain_flow if which == "retrain" else training_flow)()
