"""How good are the generators? Each family and augmentation mode for a fixed wall-clock budget.

    python -m benchmarks.quality [--data digits mnist digits-300 mnist-300] [--minutes 2 | --steps N]
        [--arms dcgan:none sngan:diffaugment ...] [--mnist ../shared/data/mnist] [--set k=v ...]

Datasets: the embedded digits at 16 px, the real MNIST test set at 28 px, and stratified
300-image subsets of both (``digits-300``: ``prepare.max_images=300``; small data, where GANs
fail first); any ``<source>-N`` works (``digits-1000``).
Per dataset the data is prepared once and the feature network trained once, so every arm is
scored in the same feature space against the same real images. A subset is run as a user
with N images would run it: its own feature network and its 0.9 N training images as the
reals, with the default feature-network gate (at 300 the held-out accuracy rests on 30
images; the auto gate allows for that). Each arm trains with the
default params except its family and ``train.augment``, for ``--minutes`` of wall clock
(``train.max_minutes``; ``train.steps`` is no limit), keeps the best-probe EMA generator as
the pipeline does, and is evaluated by the evaluate stage. Printed per arm: steps reached,
FID with its 95% interval, the real-data floor, FID/floor, KID, precision, recall, class
coverage, class KL and the collapse flag; then a markdown table of all arms.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from ganforge.config import parse_params
from ganforge.core.files import read_csv
from ganforge.engine.best import plateau_stop
from ganforge.stages.evaluate import evaluate
from ganforge.stages.featurenet import train_featurenet
from ganforge.stages.prepare import prepare
from ganforge.stages.train import train

MNIST = Path(__file__).resolve().parents[2] / "shared/data/mnist"
SOURCES = {
    "digits": lambda _m: {"source": "digits", "image_size": 16},
    "mnist": lambda m: {"source": "mnist-idx", "path": str(m), "image_size": 28},
}
DATASETS = ["digits", "mnist", "digits-300", "mnist-300"]  # <source>-N: a stratified N-image subset


def source(name: str, mnist: Path) -> dict[str, Any]:
    """``digits``, ``mnist`` or ``<either>-N`` -> the prepare section."""
    base, _, n = name.partition("-")
    if base not in SOURCES or (n and not n.isdigit()):
        raise SystemExit(
            f"--data {name}: expected one of {', '.join(SOURCES)}, optionally -N (e.g. digits-300)"
        )
    return {**SOURCES[base](mnist), **({"max_images": int(n)} if n else {})}


# the default matrix: every family on the full sets, every augmentation mode on all four
FULL_ARMS = ["dcgan:none", "sngan:none", "wgan-gp:none", "cdcgan:none", "mlp:none",
             "dcgan:diffaugment", "dcgan:ada"]  # fmt: skip
SMALL_ARMS = ["dcgan:none", "dcgan:diffaugment", "dcgan:ada"]
PATIENCES = (4, 8, 16)  # train.patience values whose stopping point each curve is checked for
ROW_KEYS = ("steps", "fid", "fid_ci95", "fid_floor", "fid_over_floor", "kid_mean", "precision",
            "recall", "class_coverage", "kl_class", "mode_collapse", "best_probe_step")  # fmt: skip


def _overrides(pairs: list[str]) -> dict[str, dict[str, Any]]:
    """``section.key=value`` pairs -> nested dict (values read as YAML scalars, as --set's)."""
    out: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        section, _, name = key.partition(".")
        out.setdefault(section, {})[name] = yaml.safe_load(value)
    return out


def run_arm(
    raw: dict[str, Any],
    arm: str,
    minutes: float,
    data: Path,
    fn: Path,
    work: Path,
    steps: int | None = None,
) -> dict[str, Any]:
    """Train one ``family:augment`` arm on ``data`` for ``minutes`` (or exactly ``steps``), then
    run the evaluate stage."""
    family, _, augment = arm.partition(":")
    budget = {"steps": steps} if steps else {"steps": 1_000_000, "max_minutes": minutes}
    train_raw = {**raw.get("train", {}), "model": family, "augment": augment or "none",
                 **budget, "device": "cpu"}  # fmt: skip
    params = parse_params({**raw, "train": train_raw}, "benchmark")
    t = time.perf_counter()
    summary = train(params, data, work / "runs", featurenet=fn / "featurenet.pt", progress=False)
    train_s = time.perf_counter() - t
    m = evaluate(
        params, data, work / "runs/main/generator.pt", fn / "featurenet.pt",
        work / "eval.json", work / "reports",
    )  # fmt: skip
    row = {"arm": arm, "steps": summary["steps"], "train_s": round(train_s, 1),
           "best_probe_step": summary.get("best_probe_step"), **m}  # fmt: skip
    row["fid_over_floor"] = round(m["fid"] / m["fid_floor"], 2) if m["fid_floor"] else None
    # the probe's FID at every grid: [step, fid]
    history = read_csv(work / "runs/main/fid_history.csv")
    row["probe_curve"] = [[int(r["step"]), round(r["fid"], 3)] for r in history]
    row["patience_would_stop"] = {p: plateau_stop(row["probe_curve"], p) for p in PATIENCES}
    return {
        k: row.get(k) for k in ("arm", "train_s", *ROW_KEYS, "patience_would_stop", "probe_curve")
    }


def run_dataset(
    name: str,
    arms: list[str],
    minutes: float,
    mnist: Path,
    sets: dict,
    tmp: Path,
    steps: int | None = None,
) -> list[dict[str, Any]]:
    prep = parse_params({"prepare": {**source(name, mnist), **sets.get("prepare", {})}}).prepare
    data = tmp / name / "data"
    manifest = prepare(prep, data)
    fn_raw = {"device": "cpu", **sets.get("featurenet", {})}
    raw = {**sets, "prepare": prep.model_dump(), "featurenet": fn_raw,
           "evaluate": {**sets.get("evaluate", {}), "device": "cpu"}}  # fmt: skip
    fn_metrics = train_featurenet(parse_params(raw, "benchmark"), data, tmp / name / "fn")
    head = {"dataset": name, "train_images": manifest["splits"]["train"]["count"],
            "featurenet_holdout_accuracy": fn_metrics["holdout_accuracy"]}  # fmt: skip
    print(json.dumps(head), flush=True)
    rows = []
    for i, arm in enumerate(arms):
        row = {
            "dataset": name,
            **run_arm(raw, arm, minutes, data, tmp / name / "fn", tmp / name / f"arm{i}", steps),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| data | family:augment | steps | FID [95% interval] | floor | FID/floor | KID | "
             "precision | recall | coverage | class KL | collapse |", "|" + "---|" * 12]  # fmt: skip
    for r in rows:
        lo, hi = r["fid_ci95"] or (None, None)
        lines.append(
            f"| {r['dataset']} | {r['arm']} | {r['steps']:,} | {r['fid']} [{lo}, {hi}] | "
            f"{r['fid_floor']} | {r['fid_over_floor']} | {r['kid_mean']} | {r['precision']} | "
            f"{r['recall']} | {r['class_coverage']} | {r['kl_class']:.4f} | {r['mode_collapse']} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data", nargs="+", default=DATASETS, help="digits, mnist, or a subset: digits-300"
    )
    ap.add_argument("--arms", nargs="+", default=None, help="family:augment (default: the matrix)")
    ap.add_argument("--minutes", type=float, default=2.0, help="training wall clock per arm")
    ap.add_argument("--steps", type=int, default=None, help="train exactly this many steps instead")
    ap.add_argument("--mnist", type=Path, default=MNIST)
    ap.add_argument("--set", nargs="*", default=[], help="section.key=value for every arm")
    args = ap.parse_args()
    sets = _overrides(args.set)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.data:
            arms = args.arms or (SMALL_ARMS if "-" in name else FULL_ARMS)
            rows += run_dataset(name, arms, args.minutes, args.mnist, sets, Path(tmp), args.steps)
    budget = {"steps": args.steps} if args.steps else {"minutes": args.minutes}
    print(
        json.dumps({"benchmark": "quality", **budget, "set": args.set, "torch": torch.__version__})
    )
    print(table(rows))


if __name__ == "__main__":
    main()
