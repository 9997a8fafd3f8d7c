"""Inference speed: the exported ONNX generator on onnxruntime vs the PyTorch generator, and
the HTTP service's latency.

    python -m benchmarks.onnx_speed [--size 16] [--requests 300]

Set-up (not timed): digits prepared at ``--size`` px, the default DCGAN trained for 1 step
(weights do not change the cost), exported with the parity gate. Timed, on this machine's
CPU: images/s of each runtime at batch 1 and 64 (best of 5 runs of ``--seconds`` each after
warm-up), then ``--requests`` sequential ``GET /generate?n=16`` to ``ganforge serve`` on
127.0.0.1: median and p99 latency, requests/s. Then the onnxruntime session options
(``session_options``): intra-op threads (1 and every usable core) x graph optimisation
level, on this generator and on the classic 64 px DCGAN (latent 100, width 64), with the
thread count ``OnnxGenerator`` picks for each when left to measure.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from ganforge.config import parse_params
from ganforge.core.cores import usable_cores
from ganforge.deploy.onnxrt import OnnxGenerator
from ganforge.models import load_generator
from ganforge.stages.export import export
from ganforge.stages.prepare import prepare
from ganforge.stages.train import train


def rate(fn, batch: int, seconds: float) -> float:
    """images/s: best of 5 timed windows after one warm-up call."""
    fn()
    best = 0.0
    for _ in range(5):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            fn()
            n += batch
        best = max(best, n / (time.perf_counter() - t0))
    return best


def options_sweep(path: Path, latent: int, seconds: float) -> list[dict]:
    """images/s per onnxruntime intra-op thread count and graph optimisation level, batch 1
    and 64, and the thread count ``OnnxGenerator`` measures for itself at load."""
    levels = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,  # onnxruntime's default
    }
    rows = []
    for threads in sorted({1, usable_cores()}):
        for name, level in levels.items():
            so = ort.SessionOptions()
            so.intra_op_num_threads, so.graph_optimization_level = threads, level
            sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
            row = {"model": path.stem, "threads": threads, "optimization": name}
            for batch in (1, 64):
                z = np.random.default_rng(0).standard_normal((batch, latent), dtype=np.float32)
                row[f"img_per_s_b{batch}"] = round(
                    rate(lambda z=z, s=sess: s.run(None, {"z": z}), batch, seconds), 1
                )
            rows.append(row)
            print(json.dumps(row), flush=True)
    chosen = OnnxGenerator(path, providers=["CPUExecutionProvider"]).threads
    rows.append({"model": path.stem, "ganforge_chooses_threads": chosen})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--seconds", type=float, default=1.0)
    args = ap.parse_args()
    params = parse_params(
        {
            "prepare": {"image_size": args.size},
            "train": {"steps": 1, "device": "cpu", "fid_samples": 0},
        }
    )
    out: dict = {
        "benchmark": "onnx_speed",
        "device": f"cpu ({platform.machine()}, torch threads {torch.get_num_threads()})",
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "image_size": args.size,
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        prepare(params.prepare, tmp / "data")
        train(params, tmp / "data", tmp / "runs", progress=False)
        export(params, tmp / "runs/main/generator.pt", tmp / "g.onnx", tmp / "export.json")
        G, meta = load_generator(tmp / "runs/main/generator.pt")
        onnx_gen = OnnxGenerator(tmp / "g.onnx", providers=["CPUExecutionProvider"])
        latent = meta["generator_kwargs"]["latent_dim"]
        for batch in (1, 64):
            z_t = torch.randn(batch, latent)
            z_n = z_t.numpy()

            def torch_call(z=z_t):
                with torch.inference_mode():
                    G(z)

            out[f"torch_img_per_s_b{batch}"] = round(rate(torch_call, batch, args.seconds), 1)
            out[f"onnx_img_per_s_b{batch}"] = round(
                rate(lambda z=z_n: onnx_gen.run(z), batch, args.seconds), 1
            )
            out[f"onnx_over_torch_b{batch}"] = round(
                out[f"onnx_img_per_s_b{batch}"] / out[f"torch_img_per_s_b{batch}"], 2
            )

        import httpx
        from tests.conftest import free_port, stop, wait_http

        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "ganforge", "serve", "--model", str(tmp / "g.onnx"), "--port", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            base = f"http://127.0.0.1:{port}"
            wait_http(f"{base}/healthz", 60, proc)
            lat = []
            with httpx.Client() as client:
                for i in range(10):
                    client.get(f"{base}/generate", params={"n": 16, "seed": i})
                t_all = time.perf_counter()
                for i in range(args.requests):
                    t0 = time.perf_counter()
                    r = client.get(f"{base}/generate", params={"n": 16, "seed": i})
                    lat.append((time.perf_counter() - t0) * 1000)
                    assert r.status_code == 200
                total = time.perf_counter() - t_all
        finally:
            stop(proc)

        # session options on the default generator and on the classic 64 px DCGAN
        out["session_options"] = options_sweep(tmp / "g.onnx", latent, args.seconds)
        big = parse_params(
            {
                "prepare": {"image_size": 64},
                "train": {"steps": 1, "device": "cpu", "fid_samples": 0, "latent_dim": 100,
                          "g_width": 64, "d_width": 64, "batch_size": 16, "run_name": "big"},
            }
        )  # fmt: skip
        prepare(big.prepare, tmp / "data64")
        train(big, tmp / "data64", tmp / "runs", progress=False)
        export(big, tmp / "runs/big/generator.pt", tmp / "dcgan64.onnx", tmp / "export64.json")
        out["session_options"] += options_sweep(tmp / "dcgan64.onnx", 100, args.seconds)
    out["http_requests"] = args.requests
    out["http_generate_n16_median_ms"] = round(statistics.median(lat), 2)
    out["http_generate_n16_p99_ms"] = round(float(np.percentile(lat, 99)), 2)
    out["http_requests_per_s"] = round(args.requests / total, 1)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
