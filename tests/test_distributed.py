"""Data-parallel training through torchrun (gloo on CPU, 2 processes, a tiny DCGAN): the same
weights as one process, rank 0 alone writes and tracks, a killed rank stops the run and
--resume finishes it, checkpoints move between world sizes, two "nodes" train one run."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from ganforge.engine.distributed import GlobalBatchNorm, World, globalise_batchnorm
from ganforge.errors import ConfigError
from ganforge.stages.train import train

from .conftest import ROOT, free_port, project_env, tiny_params

# fp32 and contiguous, so the only difference between 1 and 2 processes is summation order
TRAIN = {"bf16": False, "channels_last": False, "batch_size": 16, "steps": 6, "checkpoint_every": 3,
         "sample_every": 3, "r1_every": 2, "keep": "last", "fid_samples": 0}  # fmt: skip
# the only difference is float summation order (measured 2026-11-24: max |diff| of the weights
# 1.8e-7 after 6 steps); Adam's division by sqrt(v) can magnify it, so the bound has room
ATOL = 1e-5


def params_yaml(path: Path, **train) -> Path:
    raw = tiny_params(train={**TRAIN, **train}).model_dump()
    raw["mlflow"]["enabled"] = False
    path.write_text(yaml.safe_dump(raw))
    return path


def ganforge_train(params: Path, data: Path, out: Path, *extra: str, env=None, wait=True):
    cmd = [sys.executable, "-m", "ganforge", "train", "--params", str(params), "--data", str(data),
           "--out", str(out), "--featurenet", str(out / "none.pt"), "--no-progress", *extra]  # fmt: skip
    env = {**project_env(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    if not wait:
        return subprocess.Popen(cmd, cwd=out.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    return subprocess.run(cmd, cwd=out.parent, env=env, capture_output=True, text=True, timeout=600)


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "main/generator.pt", weights_only=True)["raw_state_dict"]


def assert_close(a: dict, b: dict, atol: float = ATOL) -> None:
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    assert worst <= atol, f"max |diff| {worst:.3g} > {atol:g}"


def test_global_batchnorm_is_batchnorm_in_one_process():
    bn = torch.nn.Sequential(torch.nn.BatchNorm2d(3))
    globalise_batchnorm(bn)
    assert isinstance(bn[0], GlobalBatchNorm)
    assert set(bn.state_dict()) == {"0.weight", "0.bias", "0.running_mean", "0.running_var", "0.num_batches_tracked"}  # fmt: skip


def test_the_global_batch_must_split_evenly():
    with pytest.raises(ConfigError, match=r"train\.batch_size: 30 .* 4 processes"):
        World(rank=0, size=4).shard(30)
    assert World(rank=1, size=2).shard(16) == slice(8, 16)


@pytest.mark.slow
def test_two_processes_train_what_one_does_and_rank_0_alone_writes(tmp_path, digits_dir):
    one = tmp_path / "one"
    train(tiny_params(train=TRAIN), digits_dir, one, progress=False)
    two = tmp_path / "two"
    two.mkdir()
    store = tmp_path / "mlflow.db"
    p = params_yaml(tmp_path / "p.yaml", nproc_per_node=2)
    raw = yaml.safe_load(p.read_text())
    raw["mlflow"]["enabled"] = True
    p.write_text(yaml.safe_dump(raw))
    proc = ganforge_train(
        p, digits_dir, two / "runs", env={"MLFLOW_TRACKING_URI": f"sqlite:///{store}"}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count('"steps": 6') == 1  # one summary line: rank 0's
    assert_close(weights(one), weights(two / "runs"))
    # one run's files, once: what a one-process run writes, nothing from rank 1
    assert sorted(p.name for p in (two / "runs").iterdir()) == ["main"]
    assert sorted(f.name for f in (two / "runs/main").iterdir()) == sorted(
        [f.name for f in (one / "main").iterdir()] + ["mlflow_run.json"]
    )
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{store}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"


@pytest.mark.slow
@pytest.mark.gpu
@pytest.mark.skipif(
    torch.cuda.device_count() < 2, reason="needs 2 CUDA devices (NCCL: one GPU per process)"
)
def test_two_gpus_train_what_one_gpu_does(tmp_path, digits_dir):
    """NCCL between two GPUs: the same weights as one GPU with the same global batch. cuDNN
    may pick other kernels per batch size, so the bound is looser than gloo's on CPU."""
    one = tmp_path / "one"
    train(tiny_params(train={**TRAIN, "device": "cuda"}), digits_dir, one, progress=False)
    proc = ganforge_train(
        params_yaml(tmp_path / "p.yaml", nproc_per_node=2, device="cuda"),
        digits_dir,
        tmp_path / "runs",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_close(weights(one), weights(tmp_path / "runs"), atol=1e-3)


def _rank_pids(parent: int) -> dict[int, int]:
    """{RANK: pid} of the training processes under ``parent`` (torchrun's workers)."""
    import psutil

    out = {}
    for child in psutil.Process(parent).children(recursive=True):
        try:
            env = child.environ()
        except (psutil.Error, OSError):
            continue
        if "RANK" in env and "ganforge" in " ".join(child.cmdline()):
            out[int(env["RANK"])] = child.pid
    return out


@pytest.mark.slow
def test_a_killed_rank_stops_the_run_and_resume_finishes_it(tmp_path, digits_dir):
    out = tmp_path / "runs"
    out.mkdir()
    p = params_yaml(tmp_path / "p.yaml", nproc_per_node=2, steps=100_000, checkpoint_every=20, sample_every=1000)  # fmt: skip
    proc = ganforge_train(p, digits_dir, out, wait=False)
    ckpts = out / ".main.partial/checkpoints"
    deadline = time.monotonic() + 240
    while not (ckpts.is_dir() and any(ckpts.glob("step_*.pt"))):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.5)
    ranks = _rank_pids(proc.pid)
    assert sorted(ranks) == [0, 1]
    os.kill(ranks[1], signal.SIGKILL)
    _, err = proc.communicate(timeout=120)  # the whole run stops: no hang
    assert proc.returncode != 0
    last = err.strip().splitlines()[-1]
    assert last.startswith(
        "ganforge train: error: train.nproc_per_node=2: a training process failed"
    ), last
    assert "--resume" in last
    assert not (out / "main").exists()  # nothing half-written in place
    step = max(int(f.stem.split("_")[-1]) for f in ckpts.glob("*.pt"))
    done = ganforge_train(p, digits_dir, out, "--resume", "--set", f"train.steps={step + 4}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert torch.load(out / "main/generator.pt", weights_only=True)["step"] == step + 4


@pytest.mark.slow
def test_checkpoints_move_between_world_sizes(tmp_path, digits_dir):
    """2 ranks for 3 steps, then: 2 ranks to 6 gives the straight 2-rank run exactly (same data
    order, same RNG streams); 1 rank to 6 gives it within float tolerance."""
    p2 = params_yaml(tmp_path / "p2.yaml", nproc_per_node=2)
    straight, half = tmp_path / "straight", tmp_path / "half"
    for d in (straight, half):
        d.mkdir()
    assert ganforge_train(p2, digits_dir, straight / "runs").returncode == 0
    r = ganforge_train(p2, digits_dir, half / "runs", "--set", "train.steps=3")
    assert r.returncode == 0, r.stderr[-3000:]
    one = tmp_path / "one"
    one.mkdir()
    import shutil

    shutil.copytree(half / "runs", one / "runs")
    r = ganforge_train(p2, digits_dir, half / "runs", "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    for k, v in weights(straight / "runs").items():
        assert torch.equal(v, weights(half / "runs")[k]), k
    p1 = params_yaml(tmp_path / "p1.yaml", nproc_per_node=1)
    r = ganforge_train(p1, digits_dir, one / "runs", "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    assert_close(weights(straight / "runs"), weights(one / "runs"))


@pytest.mark.slow
def test_two_nodes_on_one_machine_train_one_run(tmp_path, digits_dir):
    """Two torchrun invocations (--nnodes 2, one process each) meeting at a c10d rendezvous on
    127.0.0.1: what two machines do, each with its own launcher."""
    out = tmp_path / "runs"
    out.mkdir()
    p = params_yaml(tmp_path / "p.yaml")
    port = free_port()
    env = {**project_env(ROOT), "OMP_NUM_THREADS": "1"}
    nodes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                "--nproc-per-node=1",
                f"--node-rank={i}",
                "--rdzv-backend=c10d",
                f"--rdzv-endpoint=127.0.0.1:{port}",
                "--rdzv-id=ganforge-test",
                "--max-restarts=0",
                "-m",
                "ganforge",
                "train",
                "--params",
                str(p),
                "--data",
                str(digits_dir),
                "--out",
                str(out),
                "--featurenet",
                str(out / "none.pt"),
                "--no-progress",
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    results = [n.communicate(timeout=600) for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], [r[1][-2000:] for r in results]
    assert sum('"steps": 6' in r[0] for r in results) == 1  # one summary: rank 0's
    one = tmp_path / "one"
    train(tiny_params(train=TRAIN), digits_dir, one, progress=False)
    assert_close(weights(one), weights(out))


def _kill_job(pid: int) -> None:
    """SIGKILL ``pid`` and every process under it (torchrun puts its ranks in sessions of
    their own, so killing the process group leaves them running)."""
    import psutil

    procs = psutil.Process(pid).children(recursive=True) + [psutil.Process(pid)]
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(procs, timeout=30)


def _job(cmd: list[str], env: dict, cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own session; on a timeout kill the whole session (the launcher, torchrun
    and its ranks: killing the first alone would leave the ranks running) and fail."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_job(proc.pid)
        out, err = proc.communicate()
        pytest.fail(f"hung for {timeout} s: {err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.slow
def test_two_processes_with_the_pipeline_defaults_probe_keep_best_and_resume(tmp_path, digits_dir):
    """params.yaml's own train section (the FID probe on with its 1,000 samples, keep-best,
    checkpoints, bf16 auto), only shorter, with the feature network present as the DVC stage
    passes it: 2 processes run to the end and through a kill-and-resume. (The probe once
    synced torchmetrics state on rank 0 alone and hung both ranks at the first probe: the
    other tests here turn the probe off.)"""
    from ganforge.config import load_params
    from ganforge.stages.featurenet import train_featurenet

    defaults = load_params(ROOT / "params.yaml")
    train_featurenet(defaults, digits_dir, tmp_path / "fn")
    raw = defaults.model_dump()
    raw["mlflow"]["enabled"] = False
    raw["train"].update(nproc_per_node=2, steps=60, sample_every=20, checkpoint_every=20)
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(raw))
    env = {**project_env(ROOT), "OMP_NUM_THREADS": "1"}

    def cmd(out: Path, *extra: str) -> list[str]:
        return [sys.executable, "-m", "ganforge", "train", "--params", str(p), "--data",
                str(digits_dir), "--out", str(out), "--featurenet", str(tmp_path / "fn/featurenet.pt"),
                "--no-progress", *extra]  # fmt: skip

    out = tmp_path / "runs"
    done = _job(cmd(out), env, tmp_path, 240)
    assert done.returncode == 0, done.stderr[-3000:]
    probes = [row.split(",") for row in (out / "main/fid_history.csv").read_text().splitlines()[1:]]
    assert [int(float(r[0])) for r in probes] == [20, 40, 60], probes
    shipped = torch.load(out / "main/generator.pt", weights_only=True)["step"]
    assert shipped == int(float(min(probes, key=lambda r: float(r[1]))[0]))  # keep-best
    # the whole job killed (a node lost) after its first checkpoint, then resumed to the end
    again = tmp_path / "again"
    proc = subprocess.Popen(cmd(again, "--set", "train.steps=100000"), cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    ckpts = again / ".main.partial/checkpoints"
    deadline = time.monotonic() + 240
    while not (ckpts.is_dir() and any(ckpts.glob("step_*.pt.sha256"))):  # a whole checkpoint
        if proc.poll() is not None or time.monotonic() > deadline:
            _kill_job(proc.pid)
            pytest.fail(proc.communicate()[1][-3000:])
        time.sleep(0.1)
    _kill_job(proc.pid)
    proc.communicate(timeout=60)
    assert max(int(f.name[5:13]) for f in ckpts.glob("step_*.pt.sha256")) < 60
    resumed = _job(cmd(again, "--resume"), env, tmp_path, 240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(again / "main/generator.pt", weights_only=True)["step"] == shipped
