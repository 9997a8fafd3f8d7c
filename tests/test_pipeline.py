"""The real pipeline: `dvc repro` in a temporary git clone, `dvc exp run`, Prefect flows."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from ganforge.core.files import read_metrics

from .conftest import make_project, project_env


def run(cmd, project, timeout=900, check=True):
    proc = subprocess.run(
        cmd, cwd=project, env=project_env(project), capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def dvc(project, *args: str):
    return run([sys.executable, "-m", "dvc", *args], project)


def generate(project, model: str, out) -> None:
    """`ganforge generate` of 16 images from ``model`` in ``project``."""
    run(
        [
            sys.executable,
            "-m",
            "ganforge",
            "generate",
            "--model",
            model,
            "-n",
            "16",
            "--out",
            str(out),
        ],
        project,
    )


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    """A project after one full `dvc repro` on the embedded digits."""
    project = make_project(tmp_path_factory.mktemp("project"))
    run([sys.executable, "-m", "dvc", "repro"], project)
    return project


@pytest.mark.slow
def test_dvc_repro_runs_every_stage(reproduced):
    p = reproduced
    for path in ("data/prepared/manifest.json", "models/featurenet/featurenet.pt", "models/main/generator.pt",
                 "models/main/curves.png", "models/main/fid_history.csv", "reports/interpolation.png",
                 "exported/main.onnx", "metrics/eval.json", "metrics/export.json", "metrics/promote.json"):  # fmt: skip
        assert (p / path).is_file(), path
    ev = json.loads((p / "metrics/eval.json").read_text())
    ex = json.loads((p / "metrics/export.json").read_text())
    pr = json.loads((p / "metrics/promote.json").read_text())
    assert ex["parity_max_abs_diff"] <= ex["parity_tolerance"] == 1e-4
    assert pr["version"] == "1" and pr["registered_model"] == "ganforge-digits-cdcgan"
    assert pr["promote"] == (
        not ev["mode_collapse"]
    )  # the first version is champion unless flagged
    # the run in MLflow: params with params.yaml names, loss history, FID per sample step, eval metrics, tags
    from mlflow.tracking import MlflowClient

    client = MlflowClient(
        tracking_uri=f"sqlite:///{p}/mlflow.db", registry_uri=f"sqlite:///{p}/mlflow.db"
    )
    run_id = json.loads((p / "models/main/mlflow_run.json").read_text())["run_id"]
    r = client.get_run(run_id)
    assert r.data.params["train.model"] == "cdcgan" and r.data.params["train.steps"] == "600"
    assert len(client.get_metric_history(run_id, "d_loss")) == 600
    assert len(client.get_metric_history(run_id, "fid_ema")) == 2
    assert r.data.metrics["fid"] == ev["fid"] and float(r.data.tags["parity_max_abs_diff"]) <= 1e-4
    assert r.data.tags["git_commit"] != "unknown" and "eval.featurenet_sha256" in r.data.tags


@pytest.mark.slow
def test_second_repro_does_nothing(reproduced):
    out = run([sys.executable, "-m", "dvc", "repro"], reproduced).stdout
    assert "Data and pipelines are up to date." in out
    assert "Running stage" not in out


@pytest.mark.slow
def test_metrics_and_plots_are_shown(reproduced):
    shown = run([sys.executable, "-m", "dvc", "metrics", "show", "--json"], reproduced).stdout
    assert '"fid"' in shown and "parity_max_abs_diff" in shown
    run([sys.executable, "-m", "dvc", "plots", "show", "-o", "plots-html"], reproduced)
    assert (reproduced / "plots-html/index.html").is_file()


@pytest.mark.slow
def test_generate_from_the_registry(reproduced, tmp_path):
    pr = json.loads((reproduced / "metrics/promote.json").read_text())
    model = (
        f"models:/{pr['registered_model']}@champion"
        if pr["promote"]
        else f"models:/{pr['registered_model']}/1"
    )
    out = tmp_path / "grid.png"
    generate(reproduced, model, str(out))
    assert out.stat().st_size > 500


@pytest.mark.slow
def test_a_dvc_remote_gives_another_clone_the_same_results(reproduced, tmp_path):
    """`dvc push` to a (local-directory) remote, `git clone` + `dvc pull` elsewhere: the clone
    has exactly the data, models and metrics (status clean, repro does nothing, same PNG)."""
    import shutil

    first, remote, clone = tmp_path / "first", tmp_path / "remote", tmp_path / "clone"
    shutil.copytree(reproduced, first, symlinks=True)
    dvc(first, "remote", "add", "-d", "team", str(remote))
    dvc(first, "push")
    run(["git", "add", "-A"], first)  # dvc.lock, the uncached metrics, the remote's config
    run(["git", "commit", "-qm", "reproduced"], first)
    run(["git", "clone", "-q", str(first), str(clone)], tmp_path)
    assert not (clone / "exported").exists()  # only git's files so far
    dvc(clone, "pull")
    assert "up to date" in dvc(clone, "status").stdout
    repro = dvc(clone, "repro").stdout
    assert "Running stage" not in repro, repro
    for name in (
        "metrics/eval.json",
        "metrics/export.json",
        "models/main/generator.pt",
        "data/prepared/train.npz",
    ):
        assert (clone / name).read_bytes() == (first / name).read_bytes(), name
    for project in (first, clone):
        run([sys.executable, "-m", "ganforge", "generate", "--model", "exported/main.onnx", "-n", "16",
             "--out", str(project / "grid.png")], project)  # fmt: skip
    assert (clone / "grid.png").read_bytes() == (first / "grid.png").read_bytes()


@pytest.mark.slow
def test_exp_run_with_another_model(reproduced):
    dvc(
        reproduced,
        "exp",
        "run",
        "-S",
        "train.model=wgan-gp",
        "-S",
        "train.steps=60",
        "-S",
        "train.n_critic=2",
    )
    table = run([sys.executable, "-m", "dvc", "exp", "show", "--json"], reproduced).stdout
    assert "wgan-gp" in table and '"fid"' in table
    # the MLflow run names the DVC experiment it belongs to, and its inputs differ from main's
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{reproduced}/mlflow.db")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    exp = [r for r in runs if r.data.params.get("train.model") == "wgan-gp"]
    assert len(exp) == 1 and f'"{exp[0].data.tags["dvc_exp_name"]}"' in table, exp[0].data.tags
    others = {r.data.tags["ganforge.inputs_sha256"] for r in runs if r is not exp[0]}
    assert others and exp[0].data.tags["ganforge.inputs_sha256"] not in others
    run(
        ["git", "checkout", "--", "params.yaml"], reproduced
    )  # exp run leaves the changed params behind


@pytest.mark.slow
def test_sngan_through_the_unchanged_pipeline(tmp_path):
    """The variant added as one file trains, evaluates, exports, registers and serves through
    the same dvc.yaml, CLI and service as every other family."""
    from fastapi.testclient import TestClient

    from ganforge.deploy.service import create_app

    project = make_project(
        tmp_path, train={"model": "sngan", "steps": 300, "beta1": 0.0, "beta2": 0.9}
    )
    run([sys.executable, "-m", "dvc", "repro"], project)
    ev = read_metrics(project / "metrics/eval.json")
    ex = read_metrics(project / "metrics/export.json")
    pr = json.loads((project / "metrics/promote.json").read_text())
    assert ev["protocol"]["generator_family"] == "sngan" and ev["fid"] > ev["fid_floor"]
    assert ex["family"] == "sngan" and ex["parity_max_abs_diff"] <= 1e-4
    assert pr["registered_model"] == "ganforge-digits-sngan" and pr["version"] == "1"
    out = project / "grid.png"
    generate(project, "exported/main.onnx", str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    client = TestClient(create_app(str(project / "exported/main.onnx")))
    assert client.get("/model").json()["family"] == "sngan"
    r = client.get("/generate", params={"n": 4, "seed": 1})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"


@pytest.mark.slow
def test_temp_experiment_records_into_the_project_store(reproduced):
    """`dvc exp run --temp` runs the stages in a copy under .dvc/tmp/exps: its MLflow run and
    registry version still land in the project's mlflow.db, not in the throwaway copy."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{reproduced}/mlflow.db"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    name = "ganforge-digits-cdcgan"
    versions_before = len(client.search_model_versions(f"name = '{name}'"))
    dvc(reproduced, "exp", "run", "--temp", "-S", "train.steps=120", "-S", "train.seed=5")
    exp = client.get_experiment_by_name("ganforge-digits")
    runs = client.search_runs([exp.experiment_id], filter_string="params.`train.steps` = '120'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].info.artifact_uri.startswith((reproduced / "mlruns").as_uri())
    versions = client.search_model_versions(f"name = '{name}'")
    assert len(versions) == versions_before + 1
    assert any(v.run_id == runs[0].info.run_id for v in versions)
    assert not list((reproduced / ".dvc/tmp").rglob("mlflow.db"))


# --------------------------------------------------------------------------- Prefect


@pytest.fixture(scope="module")
def prefect_harness():
    import os

    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.mark.slow
def test_training_flow_runs_the_stages(reproduced, prefect_harness):
    from pipelines.flows import STAGES, training_flow
    from prefect.artifacts import Artifact

    result = training_flow(repo=str(reproduced))
    assert list(result) == list(STAGES)
    # the run's report: what it trained, the metrics and the promotion decision
    artifact = Artifact.get("ganforge-training")
    ev = json.loads((reproduced / "metrics/eval.json").read_text())
    pr = json.loads((reproduced / "metrics/promote.json").read_text())
    assert artifact is not None and artifact.type == "markdown"
    assert f"| FID [95% interval] | {ev['fid']}" in artifact.data and pr["reason"] in artifact.data


@pytest.mark.slow
def test_failing_stage_fails_the_flow_with_its_message(tmp_path, prefect_harness):
    from pipelines.flows import StageFailed, training_flow

    project = make_project(
        tmp_path, prepare={"source": "mnist-idx", "path": str(tmp_path / "no-such-dir")}
    )
    with pytest.raises(
        StageFailed,
        match=r"stage prepare failed: ganforge prepare: error: .*no-such-dir: directory not found",
    ):
        training_flow(repo=str(project), stages=["prepare"])


@pytest.mark.slow
def test_scheduled_deployment_creates_runs(tmp_path):
    """A real `prefect server` and `python -m pipelines.schedule`: the deployment gets its cron from
    params.yaml and the server schedules its upcoming runs (weekly: none starts during the test)."""
    from .conftest import ROOT, stop
    from .servers import api_call, prefect_server

    (tmp_path / "project").mkdir()
    project = make_project(tmp_path / "project")
    served = None
    with prefect_server(tmp_path / "prefect-home") as (api, env):
        try:
            served = subprocess.Popen(
                [sys.executable, "-m", "pipelines.schedule", "--repo", str(project)],
                env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            deadline = time.monotonic() + 600  # a bound for a hang: the scheduler looks every 60 s
            runs = []
            while time.monotonic() < deadline and not runs:
                time.sleep(2)
                assert served.poll() is None, "pipelines.schedule exited"
                r = api_call("POST", f"{api}/deployments/filter", json={})
                deps = [d for d in r.json() if d["name"] == "weekly-retrain"]
                if deps:
                    assert deps[0]["schedules"][0]["schedule"]["cron"] == "0 3 * * 0"  # params.yaml
                    assert deps[0]["global_concurrency_limit"]["limit"] == 1  # one run at a time
                    body = {"deployments": {"id": {"any_": [deps[0]["id"]]}}}
                    runs = api_call("POST", f"{api}/flow_runs/filter", json=body).json()
            assert runs, "no flow runs were scheduled within 600 s"
            assert all(
                run["state_type"] in ("SCHEDULED", "PENDING", "RUNNING", "COMPLETED", "FAILED")
                for run in runs
            )
            # stopping the served deployment pauses its schedule, cleanly
            served.terminate()
            _, err = served.communicate(timeout=60)
            assert (
                served.returncode == 0 and "never awaited" not in err and "Traceback" not in err
            ), err[-2000:]
            dep = api_call("POST", f"{api}/deployments/filter", json={}).json()[0]
            assert dep["name"] == "weekly-retrain" and dep["paused"] is True
        finally:
            if served is not None:
                stop(served)


@pytest.mark.slow
def test_retrain_flow_goes_through_dvc_and_promote(reproduced, prefect_harness):
    """retrain_flow re-reads the data and retrains (forced). Training is deterministic, so on
    unchanged data and params the generator is bit-identical, DVC runs nothing downstream,
    and no new registry version appears."""
    import hashlib

    from pipelines.flows import retrain_flow

    def state():
        gen = hashlib.sha256((reproduced / "models/main/generator.pt").read_bytes()).hexdigest()
        return gen, json.loads((reproduced / "metrics/promote.json").read_text())["version"]

    # the workspace at the baseline params (an earlier test left an experiment's outputs)
    run([sys.executable, "-m", "dvc", "repro"], reproduced)
    gen_before, version_before = state()
    result = retrain_flow(repo=str(reproduced))
    assert list(result) == ["prepare", "featurenet", "train", "evaluate", "export", "promote"]
    gen_after, version_after = state()
    assert gen_after == gen_before  # same data, same params: the same bits
    assert version_after == version_before  # so nothing was registered
