"""MLflow tracking against a real `mlflow server` on 127.0.0.1, and a server that is not there."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from .conftest import ROOT, free_port, stop, wait_http


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    d = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{d}/store.db", "--artifacts-destination", str(d / "artifacts"),
         "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=d,
    )  # fmt: skip
    try:
        wait_http(f"http://127.0.0.1:{port}/health", 90, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


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

    client = MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "ganforge-digits"
    assert run.data.params["train.lr"] == "0.0002" and run.data.params["prepare.source"] == "digits"
    assert [m.step for m in client.get_metric_history(run_id, "g_loss")] == list(range(1, 31))
    artifacts = {a.path for a in client.list_artifacts(run_id)} | {
        a.path for a in client.list_artifacts(run_id, "samples")
    }
    assert {"samples.png", "history.csv", "samples/step_00000030.png"} <= artifacts
    assert {"git_commit", "dvc_lock_sha256", "ganforge.data_sha256"} <= set(run.data.tags)


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
