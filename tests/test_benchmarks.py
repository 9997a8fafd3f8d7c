"""The benchmarks run (tiny sizes, CPU): their code paths are the product's, so they must not rot."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import ROOT


@pytest.mark.slow
def test_train_throughput_benchmark_runs_on_cpu(mnist_dir):
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.train_throughput", "--mnist", str(mnist_dir), "--size", "16",
         "--latent", "16", "--width", "8", "--batches", "16", "32", "--steps", "3", "--windows", "2", "--workers", "0",
         "--equal-time", "2", "--fid-samples", "300", "--device", "cpu"],
        capture_output=True, text=True, cwd=ROOT, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout[proc.stdout.index("{\n") :])
    assert [r["batch"] for r in result["throughput"]] == [16, 32]
    assert all(
        r["reference_img_per_s"] > 0 and r["ganforge_img_per_s"] > 0 for r in result["throughput"]
    )
    eq = result["equal_time"]
    assert eq["reference"]["steps"] > 0 and eq["ganforge"]["steps"] > 0
    assert eq["reference"]["fid"] > 0 and eq["ganforge"]["fid"] > 0


@pytest.mark.slow
def test_quality_benchmark_runs_on_cpu():
    """Two arms on the 300-image digits subset, a few steps each: every column is filled."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.quality", "--data", "digits-300", "--arms", "dcgan:none",
         "sngan:diffaugment", "--steps", "20", "--set", "train.g_width=8", "train.d_width=8",
         "train.latent_dim=16", "train.batch_size=32", "train.sample_every=10", "train.fid_samples=200",
         "evaluate.num_samples=500", "evaluate.bootstrap=20", "evaluate.kid_subsets=5",
         "evaluate.pr_samples=300", "evaluate.two_sample_steps=50", "evaluate.two_sample_critics=1",
         "evaluate.truncation_curve=[]"],  # the judge's own budget is tested elsewhere
        capture_output=True, text=True, cwd=ROOT, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"dataset": "digits-300", "arm"')]  # fmt: skip
    assert [r["arm"] for r in rows] == ["dcgan:none", "sngan:diffaugment"]
    for r in rows:
        assert r["steps"] == 20 and r["fid"] > 0 and r["fid_floor"] > 0 and 0 <= r["recall"] <= 1
        assert [s for s, _ in r["probe_curve"]] == [10, 20]
    assert "| digits-300 | sngan:diffaugment | 20 |" in proc.stdout
