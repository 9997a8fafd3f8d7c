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
