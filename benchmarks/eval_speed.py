"""Evaluation speed: the ``evaluate`` stage end to end, 10,000 generated vs ~10,000 real images.

    python -m benchmarks.eval_speed [--mnist ../shared/data/mnist] [--size 28] [--device auto]

Set-up (not timed): the real MNIST test set prepared at ``--size`` px with a 0.1% held-out
split (so ~9,990 real images remain in the train split), the feature network trained on
it, and a DCGAN trained for a few hundred steps (its quality does not matter for speed).
Timed: ``ganforge.stages.evaluate.evaluate`` with the default protocol (FID + 200 bootstrap
replicates, floor, KID, IS, class histogram, 5,000-per-side precision/recall, reports),
run twice with the default fast path (``evaluate.bf16/channels_last: auto``); the second run
is the warm figure. Then once more, warm, with fp32 contiguous features
(``fp32_features``): the same generator and feature network, so the two FIDs show what
bf16 features change. Prints the stage's own timing breakdown.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from ganforge.config import parse_params
from ganforge.stages.evaluate import evaluate
from ganforge.stages.featurenet import train_featurenet
from ganforge.stages.prepare import prepare
from ganforge.stages.train import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--mnist", default=str(Path(__file__).resolve().parents[2] / "shared/data/mnist")
    )
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--num-samples", type=int, default=10000)
    ap.add_argument("--train-steps", type=int, default=300)
    args = ap.parse_args()

    params = parse_params(
        {
            "prepare": {
                "source": "mnist-idx",
                "path": args.mnist,
                "image_size": args.size,
                "holdout_fraction": 0.001,
            },
            "train": {"steps": args.train_steps, "device": args.device, "sample_every": 10**6},
            "featurenet": {"device": args.device},
            "evaluate": {"num_samples": args.num_samples, "device": args.device},
        },
        "benchmark",
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        prepare(params.prepare, tmp / "data")
        fn = train_featurenet(params, tmp / "data", tmp / "fn")
        train(params, tmp / "data", tmp / "runs", progress=False)
        setup_s = time.perf_counter() - t
        runs = []
        fp32 = params.model_copy(
            update={"evaluate": params.evaluate.model_copy(update={"bf16": False, "channels_last": False})}
        )  # fmt: skip
        for i, p in enumerate((params, params, fp32)):  # auto cold, auto warm, fp32 warm
            t = time.perf_counter()
            m = evaluate(
                p,
                tmp / "data",
                tmp / "runs/main/generator.pt",
                tmp / "fn/featurenet.pt",
                tmp / f"e{i}.json",
                tmp / "rep",
            )
            runs.append((time.perf_counter() - t, m))
    (runs_fp32_wall, m_fp32), runs = runs[2], runs[:2]
    wall, m = runs[-1]
    device = m["protocol"]["device"]
    name = (
        torch.cuda.get_device_name()
        if device.startswith("cuda")
        else platform.processor() or platform.machine()
    )
    print(
        json.dumps(
            {
                "benchmark": "eval_speed",
                "device": f"{device} ({name}, {torch.get_num_threads()} threads)",
                "torch": torch.__version__,
                "image_size": args.size,
                "num_generated": m["protocol"]["num_generated"],
                "num_real": m["protocol"]["num_real"],
                "featurenet_holdout_accuracy": fn["holdout_accuracy"],
                "setup_s": round(setup_s, 1),
                "evaluate_wall_s": [round(w, 2) for w, _ in runs],
                "stage_breakdown_s": m["timing_s"],
                "fast_path": {k: m["protocol"][k] for k in ("feature_bf16",)},
                "fid": m["fid"],
                "fid_floor": m["fid_floor"],
                "fp32_features": {
                    "evaluate_wall_s": round(runs_fp32_wall, 2),
                    "stage_breakdown_s": m_fp32["timing_s"],
                    "fid": m_fp32["fid"],
                    "fid_floor": m_fp32["fid_floor"],
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
