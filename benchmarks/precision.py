"""Does the fast path change what users see? The default pipeline in fp32 vs with ``auto``.

    python -m benchmarks.precision [--data digits mnist] [--mnist ../shared/data/mnist]
        [--steps N]

For each dataset (the embedded digits at 16 px; the real MNIST test set at 28 px), the
pipeline's stages run twice from the same prepared data with the default params: once with
every ``bf16`` and ``channels_last`` key false (featurenet, train, evaluate: fp32, contiguous),
once with them ``auto``. Each run is scored in its own feature space, as a user's run
would be. Printed: FID with its 95% interval, floor, precision, recall, the stage seconds,
and whether the auto run's FID lies inside the fp32 run's interval (the acceptance rule).
``--steps`` overrides ``train.steps`` (the slow test uses fewer on MNIST).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ganforge.config import parse_params
from ganforge.stages.evaluate import evaluate
from ganforge.stages.featurenet import train_featurenet
from ganforge.stages.prepare import prepare
from ganforge.stages.train import train

FP32 = {"bf16": False, "channels_last": False}
AUTO = {"bf16": "auto", "channels_last": "auto"}
SOURCES = {
    "digits": lambda _mnist: {"source": "digits", "image_size": 16},
    "mnist": lambda mnist: {"source": "mnist-idx", "path": str(mnist), "image_size": 28},
}


def run_pipeline(raw: dict[str, Any], data: Path, work: Path) -> dict[str, Any]:
    params = parse_params(raw, "benchmark")
    times = {}
    t = time.perf_counter()
    fn = train_featurenet(params, data, work / "fn")
    times["featurenet_s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    summary = train(params, data, work / "runs", progress=False)
    times["train_s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    m = evaluate(
        params, data, work / "runs/main/generator.pt", work / "fn/featurenet.pt",
        work / "eval.json", work / "reports",
    )  # fmt: skip
    times["evaluate_s"] = round(time.perf_counter() - t, 2)
    return {
        "fid": m["fid"], "fid_ci95": m["fid_ci95"], "fid_floor": m["fid_floor"],
        "precision": m["precision"], "recall": m["recall"], "mode_collapse": m["mode_collapse"],
        "featurenet_holdout_accuracy": fn["holdout_accuracy"], "fast_path": summary["fast_path"],
        "img_per_s": summary["img_per_s"], **times,
    }  # fmt: skip


def compare(dataset: str, mnist: Path | None, steps: int | None, tmp: Path) -> dict[str, Any]:
    """fp32 then auto on one dataset; ``auto_inside_fp32_interval`` is the acceptance rule."""
    prep = parse_params({"prepare": SOURCES[dataset](mnist)}).prepare
    prepare(prep, tmp / dataset / "data")
    out: dict[str, Any] = {"dataset": dataset, "steps": steps or "default"}
    for name, keys in (("fp32", FP32), ("auto", AUTO)):
        raw = {
            "prepare": prep.model_dump(),
            "train": {**keys, "device": "cpu", **({"steps": steps} if steps else {})},
            "featurenet": {**keys, "device": "cpu"},
            "evaluate": {**keys, "device": "cpu"},
        }
        out[name] = run_pipeline(raw, tmp / dataset / "data", tmp / dataset / name)
        print(json.dumps({dataset: {name: out[name]}}), flush=True)
    lo, hi = out["fp32"]["fid_ci95"]
    out["auto_inside_fp32_interval"] = bool(lo <= out["auto"]["fid"] <= hi)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", default=["digits", "mnist"], choices=list(SOURCES))
    ap.add_argument(
        "--mnist", default=str(Path(__file__).resolve().parents[2] / "shared/data/mnist")
    )
    ap.add_argument("--steps", type=int, default=None)
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for dataset in args.data:
            results.append(compare(dataset, Path(args.mnist), args.steps, Path(tmp)))
    print(json.dumps({"benchmark": "precision", "torch": torch.__version__, "results": results}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
