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

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from prefect import flow, get_client, get_run_logger, task
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.runtime import flow_run as this_run
from prefect.states import Cancelled, State

STAGES = ("prepare", "featurenet", "train", "evaluate", "export", "promote")
ROOT = Path(__file__).resolve().parents[1]
# every retraining deployment (served or on a work pool): one run at a time, later ones wait
# for it (ENQUEUE), so two runs never train into the same directory
ONE_AT_A_TIME = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)


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
    # -q: DVC's "git add dvc.lock / autostage" hint once per flow (report_run), not per stage
    cmd = [sys.executable, "-m", "dvc", "repro", "-q", "--single-item", stage] + (
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


def _read(repo: str, rel: str) -> dict:
    path = Path(repo) / rel
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def report_run(repo: str, flow_name: str) -> str:
    """What this flow run trained, how it scored and what promotion decided, as a Prefect
    markdown artifact on the run (the UI's Artifacts tab), from the pipeline's own files."""
    from prefect.artifacts import create_markdown_artifact

    ev, ex, pr = (_read(repo, f"metrics/{n}.json") for n in ("eval", "export", "promote"))
    params = yaml.safe_load((Path(repo) / "params.yaml").read_text()) or {}
    train = params.get("train", {})
    rows = [("model", train.get("model")), ("steps", train.get("steps")), ("data", params.get("prepare", {}).get("source")),
            ("FID [95% interval]", f"{ev.get('fid')} {ev.get('fid_ci95')}"), ("real-data floor", ev.get("fid_floor")),
            ("KID", ev.get("kid_mean")), ("precision / recall", f"{ev.get('precision')} / {ev.get('recall')}"),
            ("class coverage", ev.get("class_coverage")), ("mode collapse", ev.get("mode_collapse")),
            ("ONNX parity (max abs diff)", ex.get("parity_max_abs_diff")),
            ("registered", f"{pr.get('registered_model')} v{pr.get('version')}"),
            ("promoted to champion", pr.get("promote")), ("reason", pr.get("reason"))]  # fmt: skip
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    markdown = f"# ganforge {flow_name}\n\n| | |\n|---|---|\n{table}\n"
    create_markdown_artifact(
        markdown=markdown,
        key=f"ganforge-{flow_name}",
        description="what this run trained and decided",
    )
    get_run_logger().info("to record this state in git: git add dvc.lock metrics && git commit")
    return markdown


@flow(name="ganforge-training")
def training_flow(repo: str = str(ROOT), stages: list[str] | None = None) -> dict[str, str]:
    """Every stage in order (DVC skips those that are up to date)."""
    stage_task = _retrying(repo)
    results = {}
    for stage in stages or STAGES:
        results[stage] = stage_task(stage, repo)
    report_run(repo, "training")
    return results


def paused_schedule(auto_scheduled: bool, paused: bool, deployment: str) -> str | None:
    """Why a run must not train: its schedule started it and that schedule is now paused.

    Pausing (UI, API, ``pipelines.deploy --pause``) makes Prefect delete only the runs still
    waiting for their time; a run already due and queued for the concurrency slot
    (AwaitingConcurrencySlot, Late) survives and would train on a paused schedule. A run
    someone triggered by hand is their explicit request and always runs."""
    if auto_scheduled and paused:
        return f"the schedule of {deployment} is paused: this scheduled run does not train"
    return None


def _paused_now() -> str | None:
    """paused_schedule for the current flow run, read from the Prefect server."""
    if not this_run.id:
        return None  # called as a plain function, not as a flow run
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(this_run.id)
        if run.deployment_id is None:
            return None  # a flow run of its own, not of a deployment
        dep = client.read_deployment(run.deployment_id)
    return paused_schedule(bool(run.auto_scheduled), bool(dep.paused), dep.name)


@flow(name="ganforge-retrain")
def retrain_flow(repo: str = str(ROOT)) -> dict[str, str] | State:
    """Re-read the data and train a challenger on it, then evaluate, export and let
    ``ganforge promote`` decide: the new model becomes champion only by the promotion rule.
    A scheduled run whose schedule was paused while it waited ends Cancelled, untouched."""
    why = _paused_now()
    if why:
        get_run_logger().info(why)
        return Cancelled(message=why)
    stage_task = _retrying(repo)
    results = {"prepare": stage_task("prepare", repo, force=True)}
    results["featurenet"] = stage_task("featurenet", repo)
    results["train"] = stage_task("train", repo, force=True)
    for stage in ("evaluate", "export", "promote"):
        results[stage] = stage_task(stage, repo)
    report_run(repo, "retrain")
    return results


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else "training"
    (retrain_flow if which == "retrain" else training_flow)()
