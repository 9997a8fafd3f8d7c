"""Shared fixtures: tiny configs, prepared datasets in tmp dirs, the real MNIST test set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from ganforge.config import parse_params
from ganforge.stages.prepare import prepare

ROOT = Path(__file__).resolve().parents[1]
MNIST_DIR = Path(os.environ.get("GANFORGE_MNIST_DIR", ROOT.parent / "shared" / "data" / "mnist"))


def tiny_params(**sections):
    """Params for fast CPU tests: narrow nets, few steps. ``sections``: {"train": {...}, ...}."""
    raw = {
        "prepare": {"source": "digits", "image_size": 16, "seed": 0},
        "train": {
            "model": "dcgan",
            "latent_dim": 16,
            "g_width": 8,
            "d_width": 8,
            "batch_size": 32,
            "steps": 20,
            "sample_every": 10,
            "checkpoint_every": 10,
            "log_every": 5,
            "grid_size": 16,
            "device": "cpu",
        },
        # the two-sample test runs in every evaluation; tiny configs give its critic a fifth
        # of the default budget (the default is run by the pipeline and slow tests)
        "evaluate": {"two_sample_steps": 300},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return parse_params(raw, "tiny")


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "digits16"
    prepare(tiny_params().prepare, out)
    return out


@pytest.fixture()
def mnist_dir() -> Path:
    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real MNIST test set not found at {MNIST_DIR} (set GANFORGE_MNIST_DIR)")
    return MNIST_DIR


@pytest.fixture()
def params_file(tmp_path):
    """Write a params.yaml from a dict and return its path."""

    def write(raw: dict) -> Path:
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump(raw))
        return path

    return write


@pytest.fixture(scope="session")
def digits_featurenet(digits_dir, tmp_path_factory) -> Path:
    """The feature network trained on the digits fixture (a few epochs, still > 95%)."""
    from ganforge.stages.featurenet import train_featurenet

    out = tmp_path_factory.mktemp("featurenet")
    train_featurenet(tiny_params(featurenet={"steps": 50}), digits_dir, out)
    return out / "featurenet.pt"


@pytest.fixture(scope="session")
def digits_generator(digits_dir, tmp_path_factory) -> Path:
    """A short-trained DCGAN on the digits fixture."""
    from ganforge.stages.train import train

    out = tmp_path_factory.mktemp("runs")
    train(
        tiny_params(train={"steps": 200, "g_width": 16, "d_width": 16}),
        digits_dir,
        out,
        progress=False,
    )
    return out / "main" / "generator.pt"


@pytest.fixture(scope="session")
def tiny_onnx(digits_generator, tmp_path_factory) -> Path:
    """The digits fixture generator exported to ONNX (parity-checked)."""
    from ganforge.stages.export import export

    out = tmp_path_factory.mktemp("onnx")
    export(tiny_params(), digits_generator, out / "g.onnx", out / "export.json")
    return out / "g.onnx"


def make_project(dest: Path, tiny: bool = True, **sections) -> Path:
    """A git repository holding this project's files (as in a fresh clone), with tiny params
    unless ``tiny`` is False (then params.yaml's defaults), and ``sections`` applied on top.
    Tiny gives the two-sample critic a fifth of its budget (21 s -> 4 s an evaluation); the
    default budget runs in `make run`, test_fastpath's default pipeline and the default-model
    test in test_evaluate."""
    import shutil
    import subprocess

    # what a fresh clone has: tracked files (as in the working tree), plus new code not yet
    # committed; never what a run left behind (dvc.lock, metrics/, reports/, grids, stores)
    def ls(*args: str) -> list[str]:
        out = subprocess.run(
            ["git", "ls-files", "-z", *args], cwd=ROOT, capture_output=True, check=True
        )
        return out.stdout.decode().split("\0")

    code = ("src/", "tests/", "pipelines/", "benchmarks/")
    files = ls("--cached") + [f for f in ls("--others", "--exclude-standard") if f.startswith(code)]
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    small = {
        "train": {"steps": 600, "g_width": 16, "d_width": 16, "sample_every": 300, "checkpoint_every": 300, "fid_samples": 200},
        "featurenet": {"steps": 60},
        "evaluate": {"num_samples": 1000, "bootstrap": 50, "kid_subsets": 10, "pr_samples": 500, "two_sample_steps": 300},
        "schedule": {"retries": 0, "retry_delay_s": 0},
    }  # fmt: skip
    for name, values in {**(small if tiny else {}), **sections}.items():
        params[name].update(values)
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid"]
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "project"], cwd=dest, check=True)
    return dest


@pytest.fixture(scope="session")
def default_project(tmp_path_factory) -> Path:
    """A project after `dvc repro` with params.yaml's own defaults (what `make run` does):
    prepare, feature network, training, evaluation, export and promotion, once a session.
    The tests about what the defaults produce read it; a test that changes its files works
    on its own copy (``shutil.copytree``)."""
    import subprocess
    import sys

    project = make_project(tmp_path_factory.mktemp("defaults"), tiny=False)
    done = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=project,
                          env=project_env(project), capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return project


def project_env(project: Path) -> dict:
    """Environment for running the stages in ``project``: this venv's tools, a local store."""
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(DO_NOT_TRACK="true", MLFLOW_DISABLE_TELEMETRY="true", GIT_AUTHOR_NAME="test",
               GIT_AUTHOR_EMAIL="test@example.invalid", GIT_COMMITTER_NAME="test",
               GIT_COMMITTER_EMAIL="test@example.invalid")  # fmt: skip
    return env


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float, proc=None) -> None:
    """Poll ``url`` until it answers 200 (or the process dies, or time runs out)."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def stop(proc) -> None:
    import signal

    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except Exception:
            proc.kill()
            proc.wait(timeout=10)
