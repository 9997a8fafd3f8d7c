"""HTTP load: ``ganforge serve`` under concurrent ``GET /generate`` on 127.0.0.1.

    python -m benchmarks.http_load [--requests 2000] [--concurrency 16] [--n 16] [--model FILE.onnx]

Without ``--model`` it builds the default conditional DCGAN (digits, 16 px, 1 training
step: the weights do not change the cost) and exports it. Prints p50/p99 latency,
requests/s and the error count (any status other than 200, or a transport error).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


async def load(base: str, total: int, concurrency: int, n: int, conditional: bool) -> dict:
    import httpx

    latencies: list[float] = []
    errors = 0
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:

        async def one(i: int) -> None:
            nonlocal errors
            params = {"n": n, "seed": i} | ({"label": i % 10} if conditional else {})
            async with sem:
                t0 = time.perf_counter()
                try:
                    r = await client.get("/generate", params=params)
                    errors += r.status_code != 200
                except httpx.HTTPError:
                    errors += 1
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(total)))
        wall = time.perf_counter() - t0
    lat = sorted(latencies)
    return {
        "requests": total,
        "concurrency": concurrency,
        "images_per_request": n,
        "errors": errors,
        "p50_ms": round(statistics.median(lat) * 1000, 1),
        "p99_ms": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000, 1),
        "requests_per_s": round(total / wall, 1),
    }


def run_load(
    base: str, total: int = 2000, concurrency: int = 16, n: int = 16, conditional: bool = True
) -> dict:
    return asyncio.run(load(base, total, concurrency, n, conditional))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--model", help="an exported ONNX generator (default: build one)")
    args = ap.parse_args()
    from tests.conftest import free_port, stop, wait_http

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            from ganforge.config import parse_params
            from ganforge.stages.export import export
            from ganforge.stages.prepare import prepare
            from ganforge.stages.train import train

            params = parse_params(
                {"train": {"model": "cdcgan", "steps": 1, "device": "cpu", "fid_samples": 0}}
            )
            prepare(params.prepare, Path(tmp) / "data")
            train(params, Path(tmp) / "data", Path(tmp) / "runs", progress=False)
            model = str(Path(tmp) / "g.onnx")
            export(params, Path(tmp) / "runs/main/generator.pt", model, Path(tmp) / "export.json")
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "ganforge", "serve", "--model", model, "--port", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            base = f"http://127.0.0.1:{port}"
            wait_http(f"{base}/healthz", 60, proc)
            import httpx

            info = httpx.get(f"{base}/model", timeout=30).json()
            result = run_load(
                base, args.requests, args.concurrency, args.n, bool(info.get("conditional", True))
            )
        finally:
            stop(proc)
    print(json.dumps({"benchmark": "http_load", "model": info.get("family"), **result}, indent=2))


if __name__ == "__main__":
    main()
