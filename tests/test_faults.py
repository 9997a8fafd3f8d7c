"""Faults: a training process killed at random points, resumed, ends bit-identical."""

from __future__ import annotations

import random
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from .conftest import ROOT

TRAIN = ["--set", "train.steps=120", "--set", "train.g_width=8", "--set", "train.d_width=8",
         "--set", "train.latent_dim=16", "--set", "train.batch_size=32", "--set", "train.checkpoint_every=10",
         "--set", "train.sample_every=20", "--set", "train.fid_samples=0", "--params", str(ROOT / "params.yaml")]  # fmt: skip


def train_cmd(data, out, *extra, tracking=False):
    """`ganforge train` on tiny params; MLflow off unless ``tracking``."""
    off = [] if tracking else ["--set", "mlflow.enabled=false"]
    base = [
        sys.executable,
        "-m",
        "ganforge",
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--no-progress",
    ]
    return [*base, *TRAIN, *off, *extra]


def weights(path):
    g = torch.load(path, weights_only=True)
    return {
        **{f"raw.{k}": v for k, v in g["raw_state_dict"].items()},
        **{f"ema.{k}": v for k, v in g["ema_state_dict"].items()},
    }


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, digits_dir):
    """Each attempt kills the process mid-run (after a random checkpoint, asserted still
    running), resumes from the newest intact checkpoint, and must match the straight run."""
    longer = ["--set", "train.steps=400"]
    straight = subprocess.run(
        train_cmd(digits_dir, tmp_path / "straight", *longer), capture_output=True
    )
    assert straight.returncode == 0
    reference = weights(tmp_path / "straight/main/generator.pt")
    rng = random.Random(7)
    for attempt in range(3):
        out = tmp_path / f"killed{attempt}"
        proc = subprocess.Popen(
            train_cmd(digits_dir, out, *longer),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        ckpts = out / ".main.partial/checkpoints"  # a run writes here until it succeeds
        target = ckpts / f"step_{10 * rng.randint(1, 20):08d}.pt.sha256"  # a random checkpoint
        deadline = time.monotonic() + 120
        while not target.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert proc.poll() is None, f"attempt {attempt}: training ended before the kill"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
        assert not (out / "main/generator.pt").exists()
        intact = [
            p for p in sorted(ckpts.glob("step_*.pt")) if p.with_name(p.name + ".sha256").exists()
        ]
        resumed = subprocess.run(
            train_cmd(digits_dir, out, *longer, "--resume"), capture_output=True, text=True
        )
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert f"resumed from {intact[-1]} at step" in resumed.stderr
        got = weights(out / "main/generator.pt")
        assert set(got) == set(reference)
        for k, v in reference.items():
            assert torch.equal(v, got[k]), (attempt, intact[-1], k)


@pytest.mark.slow
@pytest.mark.parametrize(
    "nproc,sig,probe",
    [(1, signal.SIGTERM, False), (2, signal.SIGTERM, False), (1, signal.SIGKILL, False),
     (1, signal.SIGTERM, True)],
)  # fmt: skip
def test_a_killed_training_is_one_mlflow_run_after_resume(tmp_path, digits_dir, nproc, sig, probe):
    """SIGTERM (kill, timeout, systemd, Kubernetes, Prefect cancellation) mid-training, one
    process or a torchrun of 2: one line, exit 143, the MLflow run KILLED (not left RUNNING),
    the finished outputs' place untouched, the partial checkpoints kept. SIGKILL: nothing
    can run, the run is left RUNNING. Either way ``--resume`` continues that same run and
    finishes it: one run, FINISHED, its loss curve logged once for every step."""
    import json
    import os

    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "runs"
    # checkpoints sparser than the loss flushes (as by default): the resume repeats logged steps
    sparse = ["--set", "train.checkpoint_every=50", "--set", f"train.nproc_per_node={nproc}"]
    if probe:  # the default FID probe (1,000 samples) with the default feature network
        from ganforge.config import load_params
        from ganforge.stages.featurenet import train_featurenet

        train_featurenet(load_params(ROOT / "params.yaml"), digits_dir, tmp_path / "fn")
        sparse += ["--featurenet", str(tmp_path / "fn/featurenet.pt"), "--set", "train.fid_samples=1000"]  # fmt: skip
    args = train_cmd(digits_dir, out, "--set", "train.steps=100000", *sparse, tracking=True)
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env=env, cwd=tmp_path)  # fmt: skip
    ckpts = out / ".main.partial/checkpoints"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    deadline = time.monotonic() + 240

    def past_the_checkpoint() -> bool:
        """MLflow holds loss steps beyond the newest checkpoint: the resume repeats them."""
        record = out / ".main.partial/mlflow_run.json"
        done = [int(p.name[5:13]) for p in ckpts.glob("step_*.pt.sha256")]
        if not done or not record.is_file():
            return False
        run = json.loads(record.read_text())["run_id"]
        return max([m.step for m in client.get_metric_history(run, "d_loss")], default=0) > max(
            done
        )

    while not past_the_checkpoint():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.05)
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"signal {sig} did not stop the run within 120 s")
    run_id = json.loads((out / ".main.partial/mlflow_run.json").read_text())["run_id"]
    if sig == signal.SIGTERM:
        assert proc.returncode == 143, err[-3000:]
        assert err.strip().splitlines()[-1] == "ganforge train: terminated (SIGTERM)", err[-3000:]
        assert client.get_run(run_id).info.status == "KILLED"
    else:
        assert client.get_run(run_id).info.status == "RUNNING"  # what resume must close
    assert not (out / "main").exists()
    newest = max(int(p.name[5:13]) for p in ckpts.glob("step_*.pt.sha256"))
    end = newest + 100
    resumed = subprocess.run(
        train_cmd(digits_dir, out, "--set", f"train.steps={end}", *sparse, "--resume", tracking=True),
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming MLflow run {run_id}" in resumed.stderr
    assert torch.load(out / "main/generator.pt", weights_only=True)["step"] == end
    runs = client.search_runs([client.get_run(run_id).info.experiment_id])
    assert [(r.info.run_id, r.info.status) for r in runs] == [(run_id, "FINISHED")]
    steps = [m.step for m in client.get_metric_history(run_id, "d_loss")]
    assert sorted(steps) == list(range(1, end + 1)), (newest, len(steps))
    if probe:  # the probe's FID too: every sample step once
        fids = sorted(m.step for m in client.get_metric_history(run_id, "fid_ema"))
        assert fids == sorted({*range(20, end + 1, 20), end}), fids  # and at the last step


# --------------------------------------------------------------------------- divergence

DIVERGE = [
    "--set",
    "train.model=wgan-gp",
    "--set",
    "train.gp_lambda=1e38",
    "--set",
    "train.n_critic=1",
]


def test_divergence_fails_the_stage_and_the_mlflow_run(tmp_path, digits_dir):
    import json
    import os

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    out = tmp_path / "runs"
    args = train_cmd(digits_dir, out, *DIVERGE, tracking=True)
    proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 1
    assert re.search(
        r"ganforge train: error: step \d+: \w+ is (nan|inf|-inf) \(non-finite\)", proc.stderr
    )
    assert not (out / "main/generator.pt").exists()
    from mlflow.tracking import MlflowClient

    # the failed run's provenance stays with its partial state, never in a finished run's place
    assert not (out / "main").exists()
    run_id = json.loads((out / ".main.partial/mlflow_run.json").read_text())["run_id"]
    assert MlflowClient(tracking_uri=uri, registry_uri=uri).get_run(run_id).info.status == "FAILED"


@pytest.mark.slow
def test_divergence_stops_the_pipeline_and_the_flow(tmp_path):
    from pipelines.flows import StageFailed, training_flow
    from prefect.testing.utilities import prefect_test_harness

    from .conftest import make_project

    project = make_project(tmp_path, train={"model": "wgan-gp", "gp_lambda": 1e38, "n_critic": 1})
    with (
        prefect_test_harness(server_startup_timeout=180),
        pytest.raises(
            StageFailed,
            match=r"stage train failed: ganforge train: error: step \d+: \w+ is (nan|inf|-inf) \(non-finite\)",
        ),
    ):
        training_flow(repo=str(project))
    assert not (project / "exported").exists() and not (project / "metrics/promote.json").exists()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(
        tracking_uri=f"sqlite:///{project}/mlflow.db", registry_uri=f"sqlite:///{project}/mlflow.db"
    )
    assert client.search_registered_models() == []  # nothing registered, nothing promoted


# --------------------------------------------------------------------------- tracking server loss


@pytest.mark.slow
def test_tracking_server_loss_fails_cleanly_and_resume_completes(tmp_path, digits_dir):
    import os

    from ganforge.core.checkpoint import STATE_FORMAT, list_checkpoints, load_verified

    from .conftest import free_port, stop, wait_http

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server_cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                  "--backend-store-uri", f"sqlite:///{tmp_path}/store.db", "--artifacts-destination",
                  str(tmp_path / "artifacts"), "--workers", "1"]  # fmt: skip
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
           "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}  # fmt: skip
    out = tmp_path / "runs"
    cmd = train_cmd(digits_dir, out, "--set", "train.steps=2000", tracking=True)

    server = subprocess.Popen(
        server_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path
    )
    try:
        wait_http(f"{uri}/health", 180, server)
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path
        )
        ckpts = out / ".main.partial/checkpoints"
        deadline = time.monotonic() + 120
        while len(list(ckpts.glob("step_*.pt.sha256"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        stop(server)  # the server goes away mid-run
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 1, err[-2000:]
        assert f"failed on {uri}" in err and time.monotonic() - t0 < 120
        assert not (out / "main/generator.pt").exists()
        for path in list_checkpoints(ckpts):  # what was written is intact
            assert load_verified(path, STATE_FORMAT)["step"] > 0

        server = subprocess.Popen(
            server_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path
        )
        wait_http(f"{uri}/health", 180, server)
        done = subprocess.run(
            [*cmd, "--resume"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert (out / "main/generator.pt").is_file()
    finally:
        stop(server)


# --------------------------------------------------------------------------- bad configuration

BAD_INPUTS = [
    (["prepare", "--set", "prepare.image_size=0"], "prepare.image_size: Input should be greater than or equal to 8"),
    (["prepare", "--set", "prepare.image_size=big"], "prepare.image_size: Input should be a valid integer"),
    (["prepare", "--set", "prepare.source=s3"], "prepare.source: unknown source 's3' (allowed: digits"),
    (["prepare", "--set", "prepare.source=imagefolder"], "prepare.path: source 'imagefolder' needs a directory"),
    (["prepare", "--set", "prepare.holdout_fraction=0"], "prepare.holdout_fraction: Input should be greater than 0"),
    (["prepare", "--set", "prepare.channels=4"], "prepare.channels: Input should be 'auto', 1 or 3"),
    (["prepare", "--set", "prepare.max_images=-5"], "prepare.max_images: Input should be greater than or equal to 0"),
    (["train", "--set", "train.lr=-1e-4"], "train.lr: Input should be greater than 0"),
    (["train", "--set", "train.batch_size=0"], "train.batch_size: Input should be greater than or equal to 1"),
    (["train", "--set", "train.model=biggan"], "train.model: unknown family 'biggan' (allowed: mlp, dcgan, wgan-gp, cdcgan, sngan)"),
    (["train", "--set", "train.stepz=10"], "train.stepz: unknown key (allowed: model, run_name"),
    (["train", "--set", "train.beta1=1.5"], "train.beta1: Input should be less than 1"),
    (["train", "--set", "train.device=gpu"], "train.device: String should match pattern"),
    (["train", "--set", "train.run_name=featurenet"], "train.run_name: 'featurenet' is reserved"),
    (["train", "--set", "train.model=dcgan", "--set", "prepare.image_size=24"], "24 px is not supported by train.model=dcgan"),
    (["train", "--set", "train.n_critic=0"], "train.n_critic: Input should be greater than or equal to 1"),
    (["train", "--set", "train.ema_decay=1"], "train.ema_decay: Input should be less than 1"),
    (["train", "--set", "lr=1"], "expected section.key=value"),
    (["train", "--set", "trian.lr=1"], "unknown section 'trian'"),
    (["train", "--set", "train.lr=[0.1"], "not valid YAML"),
    (["evaluate", "--set", "evaluate.features=clip"], "evaluate.features: Input should be 'featurenet' or 'inception'"),
    (["evaluate", "--set", "evaluate.num_samples=1"], "evaluate.num_samples: Input should be greater than or equal to 2"),
    (["evaluate", "--set", "evaluate.inception_weights=/x.pth"], "evaluate.inception_weights: only used with evaluate.features=inception"),
    (["export", "--set", "export.parity_batches=[0]"], "export.parity_batches: every batch must be in 1..4096 (got [0])"),
    (["export", "--set", "export.parity_tolerance=0"], "export.parity_tolerance: Input should be greater than 0"),
    (["promote", "--set", "mlflow.enabled=maybe"], "mlflow.enabled"),
    (["train", "--set", "schedule.cron=every day"], "schedule.cron: String should match pattern"),
]  # fmt: skip


def test_bad_inputs_give_one_line_and_overwrite_nothing(tmp_path, digits_dir):
    """At least 20 distinct invalid params / CLI inputs: one line naming the problem, exit 2, outputs untouched."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(digits_dir, data)
    before = {p: p.read_bytes() for p in data.iterdir()}
    assert len({msg for _, msg in BAD_INPUTS}) >= 20
    paths = {
        "prepare": ["--out", str(data)],
        "train": ["--data", str(data), "--out", str(tmp_path / "runs")],
    }

    def attempt(args: list[str]) -> subprocess.CompletedProcess:
        stage = args[0]
        return subprocess.run(
            [sys.executable, "-m", "ganforge", stage, "--params", str(ROOT / "params.yaml"), *args[1:], *paths.get(stage, [])],
            capture_output=True, text=True, cwd=tmp_path,
        )  # fmt: skip

    # two at a time: each is a fresh interpreter importing torch (~2 s, one core's work)
    with ThreadPoolExecutor(max_workers=2) as pool:
        procs = list(pool.map(attempt, [args for args, _ in BAD_INPUTS]))
    for (args, expected), proc in zip(BAD_INPUTS, procs, strict=True):
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, (args, proc.stderr)
        assert (
            len(lines) == 1
            and lines[0].startswith(f"ganforge {args[0]}: error: ")
            and expected in lines[0]
        ), (args, lines)
    assert {p: p.read_bytes() for p in data.iterdir()} == before
    assert not (tmp_path / "runs").exists()
