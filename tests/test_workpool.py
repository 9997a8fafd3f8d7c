"""Retraining on a Prefect work pool: a real `prefect server`, a process work pool, the
deployment from `python -m pipelines.deploy`, a `prefect worker` that runs it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest

from .conftest import ROOT, make_project, stop
from .servers import api_call, prefect_server

FAST = {  # a retrain in ~20 s: the point is the scheduling, not the model
    "train": {"steps": 200, "g_width": 8, "d_width": 8, "sample_every": 100, "checkpoint_every": 100, "fid_samples": 200},
    "evaluate": {"num_samples": 500, "bootstrap": 20, "kid_subsets": 5, "pr_samples": 250},
}  # fmt: skip


def _t(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


@pytest.mark.slow
def test_a_worker_runs_triggered_and_scheduled_retrains_one_at_a_time(tmp_path):
    """Two runs triggered at once and one started by a per-minute cron all complete, one after
    another (the second waits for a concurrency slot instead of training into the same
    directory), the first registers version 1, and the bit-identical retrains after it
    register nothing and leave the DVC record clean."""
    from mlflow.tracking import MlflowClient

    (tmp_path / "p").mkdir()
    project = make_project(tmp_path / "p", **FAST)
    fast_server = {  # the scheduler looks every 5 s, a waiting run asks again after 5 s (not 30)
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
        "PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS": "5",
    }
    with prefect_server(tmp_path / "prefect-home", **fast_server) as (api, env):

        def cli(*args: str) -> str:
            proc = subprocess.run([sys.executable, "-m", "prefect", *args], env=env, cwd=ROOT,
                                  capture_output=True, text=True, timeout=120)  # fmt: skip
            assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
            return proc.stdout

        def deploy(pool: str):
            return subprocess.run(
                [sys.executable, "-m", "pipelines.deploy", "--pool", pool, "--repo", str(project),
                 "--cron", "* * * * *", "--name", "every-minute"],
                env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
            )  # fmt: skip

        missing = deploy("test-pool")  # not created yet: one line, nothing deployed
        assert missing.returncode == 1 and missing.stderr.strip().splitlines() == [
            "pipelines.deploy: error: Could not find work pool 'test-pool'. Please create it before deploying this flow."
        ], missing.stderr[-2000:]
        cli("work-pool", "create", "test-pool", "--type", "process")
        deployed = deploy("test-pool")
        assert deployed.returncode == 0, deployed.stderr[-2000:]
        assert "deployed ganforge-retrain/every-minute to work pool test-pool" in deployed.stdout
        dep = api_call("GET", f"{api}/deployments/name/ganforge-retrain/every-minute").json()
        assert dep["global_concurrency_limit"]["limit"] == 1, dep
        assert dep["concurrency_options"]["collision_strategy"] == "ENQUEUE"
        assert dep["schedules"][0]["schedule"]["cron"] == "* * * * *"
        assert dep["parameters"] == {"repo": str(project.resolve())}
        assert deploy("test-pool").returncode == 0  # again: the same deployment, updated in place
        assert [d["id"] for d in api_call("POST", f"{api}/deployments/filter", json={}).json()] == [
            dep["id"]
        ]

        log = open(tmp_path / "worker.log", "w")  # noqa: SIM115 (closed below)
        worker = subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", "test-pool"],
            # one fixed thread count: with `auto` a retrain beside a busy server may run on other
            # counts than the one before and differ in the last bits (summary's threads_used)
            env={**env, "PREFECT_WORKER_QUERY_SECONDS": "1", "OMP_NUM_THREADS": "1"},
            cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            for _ in range(2):  # two at once: the second must wait for the first
                cli("deployment", "run", "ganforge-retrain/every-minute")
            body = {"deployments": {"id": {"any_": [dep["id"]]}}}
            deadline, runs = time.monotonic() + 900, []  # a bound for a hang
            while time.monotonic() < deadline:
                time.sleep(3)
                runs = api_call("POST", f"{api}/flow_runs/filter", json=body).json()
                done = [r for r in runs if r["state_type"] == "COMPLETED"]
                bad = [r for r in runs if r["state_type"] in ("FAILED", "CRASHED", "CANCELLED")]
                assert not bad, (bad[0]["state"], (tmp_path / "worker.log").read_text()[-3000:])
                if sum(not r["auto_scheduled"] for r in done) >= 2 and any(
                    r["auto_scheduled"] for r in done
                ):
                    break
            else:
                pytest.fail(
                    f"not 2 triggered + 1 scheduled runs done in 900 s: {[(r['name'], r['state_name']) for r in runs]}"
                )
            history = {
                r["id"]: [st["name"] for st in api_call("GET", f"{api}/flow_run_states/", params={"flow_run_id": r["id"]}).json()]
                for r in done
            }  # fmt: skip
            assert any("AwaitingConcurrencySlot" in h for h in history.values()), history
            # pause: the runs already due and waiting for the slot (AwaitingConcurrencySlot,
            # Late) are cancelled at once, not left to train one after another on a paused
            # schedule; only a run that is training finishes
            asked_at = datetime.now(UTC)
            paused = subprocess.run(
                [sys.executable, "-m", "pipelines.deploy", "--repo", str(project), "--name", "every-minute", "--pause"],
                env=env, cwd=ROOT, capture_output=True, text=True, timeout=600,
            )  # fmt: skip
            assert paused.returncode == 0, paused.stderr[-2000:]
            assert "paused ganforge-retrain/every-minute; cancelled" in paused.stdout, paused.stdout
            runs = api_call("POST", f"{api}/flow_runs/filter", json=body).json()
            assert not [r["name"] for r in runs if r["state_type"] == "SCHEDULED"], runs
            now_dep = api_call("GET", f"{api}/deployments/{dep['id']}").json()
            assert now_dep["paused"] is True
            # the server's own moment of the pause, not the test's: the pause command takes
            # seconds to start, and a run may rightly begin (and train) before it lands
            paused_at = _t(now_dep["updated"])
            assert paused_at >= asked_at, (now_dep["updated"], asked_at)
            safety = time.monotonic() + 600  # a bound for a hang, not a pass condition
            while any(r["state_type"] in ("PENDING", "RUNNING") for r in runs):
                assert time.monotonic() < safety, [(r["name"], r["state_name"]) for r in runs]
                time.sleep(2)
                runs = api_call("POST", f"{api}/flow_runs/filter", json=body).json()
        finally:
            stop(worker)
            log.close()

    done = sorted(
        (r for r in runs if r["state_type"] == "COMPLETED"), key=lambda r: r["start_time"]
    )
    for before, after in zip(done, done[1:], strict=False):  # never two trainings at once
        assert _t(after["start_time"]) >= _t(before["end_time"]), (before["name"], after["name"])
    assert all(_t(r["start_time"]) < paused_at for r in done), "a run trained after the pause"
    for r in runs:  # all that did not complete: scheduled runs the pause cancelled unstarted
        assert r["state_type"] in ("COMPLETED", "CANCELLED"), (r["name"], r["state_name"])
        assert r["state_type"] == "COMPLETED" or r["auto_scheduled"], r["name"]
    uri = f"sqlite:///{project}/mlflow.db"
    pr = json.loads((project / "metrics/promote.json").read_text())
    versions = MlflowClient(tracking_uri=uri, registry_uri=uri).search_model_versions(
        f"name = '{pr['registered_model']}'"
    )
    assert pr["version"] == "1" and [str(v.version) for v in versions] == ["1"]
    status = subprocess.run([sys.executable, "-m", "dvc", "status"], cwd=project, env=env,
                            capture_output=True, text=True)  # fmt: skip
    assert "up to date" in status.stdout, status.stdout


def test_only_runs_the_schedule_started_stop_with_it():
    """The flow's own check (a pause from the UI leaves due runs waiting): a scheduled run on
    a paused schedule ends without training; a run triggered by hand always trains."""
    from pipelines.flows import paused_schedule

    assert "paused" in paused_schedule(auto_scheduled=True, paused=True, deployment="d")
    assert paused_schedule(auto_scheduled=False, paused=True, deployment="d") is None
    assert paused_schedule(auto_scheduled=True, paused=False, deployment="d") is None
