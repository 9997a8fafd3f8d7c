"""MLflow tracking against a real `mlflow server` on 127.0.0.1, and a server that is not there."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from .conftest import ROOT, free_port


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """The team set-up on the default SQLite store (tests/test_postgres.py: on PostgreSQL)."""
    from .servers import mlflow_server as server

    d = tmp_path_factory.mktemp("mlflow-server")
    with server(f"sqlite:///{d}/store.db", d / "artifacts", workers=1) as uri:
        yield uri


def ganforge(args, env_uri, cwd):
    env = {
        "MLFLOW_TRACKING_URI": env_uri,
        "PATH": f"{sys.prefix}/bin:/usr/bin:/bin",
        "HOME": str(cwd),
    }
    return subprocess.run(
        [sys.executable, "-m", "ganforge", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=600,
    )


TINY = ["--set", "train.steps=30", "--set", "train.g_width=8", "--set", "train.d_width=8", "--set", "train.sample_every=15",
        "--set", "train.log_every=5", "--params", str(ROOT / "params.yaml")]  # fmt: skip


@pytest.mark.slow
def test_training_is_tracked_on_the_server(mlflow_server, tmp_path, digits_dir):
    proc = ganforge(
        ["train", "--data", str(digits_dir), "--out", str(tmp_path / "runs"), *TINY],
        mlflow_server,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_id = json.loads(proc.stdout.strip().splitlines()[-1])["mlflow_run_id"]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "ganforge-digits"
    assert run.data.params["train.lr"] == "0.0005" and run.data.params["prepare.source"] == "digits"
    assert [m.step for m in client.get_metric_history(run_id, "g_loss")] == list(range(1, 31))
    artifacts = {a.path for a in client.list_artifacts(run_id)} | {
        a.path for a in client.list_artifacts(run_id, "samples")
    }
    assert {"samples.png", "history.csv", "samples/step_00000030.png"} <= artifacts
    assert {
        "git_commit",
        "dvc_lock_sha256",
        "ganforge.data_sha256",
        "ganforge.inputs_sha256",
    } <= set(run.data.tags)
    # a name that tells runs apart, and the grids as step-indexed images for the UI's slider
    assert (
        run.info.run_name.startswith("cdcgan-digits-")
        and len(run.info.run_name) == len("cdcgan-digits-") + 6
    )
    images = {a.path for a in client.list_artifacts(run_id, "images")}
    assert any(p.startswith("images/samples+step+30+") for p in images), images


def test_unreachable_server_fails_fast_and_writes_nothing(tmp_path, digits_dir):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    t0 = time.monotonic()
    proc = ganforge(
        ["train", "--data", str(digits_dir), "--out", str(tmp_path / "runs"), *TINY], uri, tmp_path
    )
    assert time.monotonic() - t0 < 30
    assert proc.returncode == 1
    assert f"MLflow tracking server {uri} is unreachable" in proc.stderr
    assert not (tmp_path / "runs/main/generator.pt").exists()


def test_a_bit_identical_retrain_keeps_the_first_run(tmp_path, digits_dir):
    """Retraining on unchanged data and params reproduces the generator; the second MLflow run
    is dropped and the run directory keeps pointing at the first (no orphan run)."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = ["train", "--data", str(digits_dir), "--out", str(tmp_path / "runs"), *TINY]
    first = ganforge(args, uri, tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    run_file = tmp_path / "runs/main/mlflow_run.json"
    first_id = json.loads(run_file.read_text())["run_id"]
    again = ganforge(args, uri, tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads(again.stdout.strip().splitlines()[-1])["mlflow_run_id"] == first_id
    assert json.loads(run_file.read_text())["run_id"] == first_id
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("ganforge-digits").experiment_id])
    assert [r.info.run_id for r in runs] == [first_id]  # the duplicate is deleted, not listed
    assert client.get_run(first_id).info.status == "FINISHED"
