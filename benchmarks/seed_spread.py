"""How far do seeds move the judge's numbers? Generators of one recipe trained at several
seeds, each judged under feature networks trained at several seeds.

    python -m benchmarks.seed_spread [--data digits mnist] [--mnist ../shared/data/mnist]
        [--train-seeds 0 1 2] [--featurenet-seeds 0 1 2] [--train-precision fp32|auto]
        [--work DIR]

Default params throughout (fp32, contiguous, so the spread is the seeds' alone), and as in
the pipeline every generator trains with the first feature network as its FID probe
(``train.keep: best`` ships the probe's best step). ``--train-precision auto`` trains the
generators with ``train.bf16`` / ``channels_last`` auto, judged by the same fp32 feature
networks: the fast path's cost in quality, against the seeds' own spread. Printed: a
JSON line per (generator seed, feature network seed) with FID, its 95% interval, the floor
and the two-sample accuracy (pixel space, no feature network: the outside judge of
"bf16 costs nothing on average", by its mean over the training seeds), then a markdown table, then per feature network whether the generators keep one
order (Spearman of their FIDs against the first feature network's). This is the yardstick
the precision benchmark's rules are read against: a sampling interval says how well one
generator is measured under one judge, not how far two runs of one recipe land apart, and
FIDs from two feature networks are not comparable (so promotion never compares them).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import torch
from scipy.stats import spearmanr

from ganforge.config import parse_params
from ganforge.stages.evaluate import evaluate
from ganforge.stages.featurenet import train_featurenet
from ganforge.stages.prepare import prepare
from ganforge.stages.train import train

from .precision import AUTO, FP32, SOURCES


def spread(
    dataset: str, mnist: Path | None, train_seeds, featurenet_seeds, work: Path, precision="fp32"
) -> dict[str, Any]:
    prep = parse_params({"prepare": SOURCES[dataset](mnist)}).prepare
    data, work = work / dataset / "data", work / dataset
    if not (data / "manifest.json").is_file():
        prepare(prep, data)

    def params(train_seed: int, featurenet_seed: int):
        fast = FP32 if precision == "fp32" else AUTO
        raw = {
            "prepare": prep.model_dump(),
            "train": {**fast, "device": "cpu", "seed": train_seed},
            "featurenet": {**FP32, "device": "cpu", "seed": featurenet_seed},
            "evaluate": {**FP32, "device": "cpu"},
        }
        return parse_params(raw, "benchmark")

    for s in featurenet_seeds:  # kept in --work: a rerun reuses them
        if not (work / f"fn{s}/featurenet.pt").is_file():
            train_featurenet(params(0, s), data, work / f"fn{s}")
    probe = work / f"fn{featurenet_seeds[0]}/featurenet.pt"  # the pipeline's: keep-best's probe
    gen = {s: work / f"gen{s}" if precision == "fp32" else work / f"gen{s}_{precision}" for s in train_seeds}  # fmt: skip
    for s in train_seeds:
        if not (gen[s] / "main/generator.pt").is_file():
            train(params(s, 0), data, gen[s], progress=False, featurenet=probe)
    rows = []
    for g in train_seeds:
        for f in featurenet_seeds:
            out = work / f"eval_{gen[g].name}_f{f}"
            m = evaluate(
                params(g, f), data, gen[g] / "main/generator.pt",
                work / f"fn{f}/featurenet.pt", out / "eval.json", out / "reports",
            )  # fmt: skip
            row = {"train_seed": g, "featurenet_seed": f, "fid": m["fid"],
                   "fid_ci95": m["fid_ci95"], "fid_floor": m["fid_floor"],
                   # pixel space: the same under every feature network (a check of that)
                   "c2st_accuracy": m["c2st_accuracy"], "c2st_ci95": m["c2st_ci95"]}  # fmt: skip
            rows.append(row)
            print(json.dumps({dataset: row}), flush=True)
    fid = {(r["train_seed"], r["featurenet_seed"]): r["fid"] for r in rows}
    first = [fid[g, featurenet_seeds[0]] for g in train_seeds]
    order = {
        f: round(float(spearmanr(first, [fid[g, f] for g in train_seeds]).statistic), 3)
        for f in featurenet_seeds[1:]
    } if len(train_seeds) > 1 else {}  # fmt: skip
    by_seed = {r["train_seed"]: r["c2st_accuracy"] for r in rows}
    c2st_mean = round(sum(by_seed.values()) / len(by_seed), 4)  # over the training seeds
    return {"dataset": dataset, "rows": rows, "order_vs_first_featurenet": order,
            "c2st_by_train_seed": by_seed, "c2st_mean": c2st_mean}  # fmt: skip


def table(result: dict[str, Any], featurenet_seeds) -> str:
    lines = [
        "| generator | " + " | ".join(f"FID, feature network seed {f}" for f in featurenet_seeds)
        + " | two-sample accuracy [95%] |",
        "|---|" + "---|" * (len(featurenet_seeds) + 1),
    ]  # fmt: skip
    by = {(r["train_seed"], r["featurenet_seed"]): r for r in result["rows"]}
    for g in sorted({r["train_seed"] for r in result["rows"]}):
        cells = [
            f"{by[g, f]['fid']} [{by[g, f]['fid_ci95'][0]}, {by[g, f]['fid_ci95'][1]}]"
            for f in featurenet_seeds
        ]
        two = by[g, featurenet_seeds[0]]
        lines.append(f"| train seed {g} | " + " | ".join(cells) + f" | {two['c2st_accuracy']} {two['c2st_ci95']} |")
    floors = [str(by[min(by)[0], f]["fid_floor"]) for f in featurenet_seeds]
    lines.append("| floor | " + " | ".join(floors) + f" | mean {result['c2st_mean']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", default=["digits"], choices=list(SOURCES))
    ap.add_argument(
        "--mnist", default=str(Path(__file__).resolve().parents[2] / "shared/data/mnist")
    )
    ap.add_argument("--train-seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--featurenet-seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--train-precision", choices=["fp32", "auto"], default="fp32")
    ap.add_argument("--work", default=None, help="keep (and reuse) the work here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        for dataset in args.data:
            result = spread(
                dataset, Path(args.mnist), args.train_seeds, args.featurenet_seeds, work,
                args.train_precision,
            )  # fmt: skip
            print(table(result, args.featurenet_seeds))
            print(json.dumps({"benchmark": "seed_spread", "torch": torch.__version__,
                              "precision": args.train_precision, "c2st_mean": result["c2st_mean"],
                              "order_vs_first_featurenet": result["order_vs_first_featurenet"]}))  # fmt: skip


if __name__ == "__main__":
    main()
