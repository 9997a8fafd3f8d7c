"""Does the feature space rank generators the way an independent judge does? A ladder of
generators of graded quality, each scored by the evaluate stage, and each score's rank
agreement (Spearman) with the classifier two-sample test's accuracy.

    python -m benchmarks.judge [--data digits mnist] [--mnist ../shared/data/mnist]
        [--ladder cdcgan:100 cdcgan:300 ...] [--budget] [--critic-seeds K] [--no-controls]
        [--work DIR] [--no-texture]

Per dataset: prepare, the feature network (defaults), then every ladder rung (family:steps,
default params otherwise, keep: last) trained and evaluated with the default evaluate
params (so the two-sample test is the pipeline's own). Printed: a JSON line per rung, then
a markdown table, then the rank agreement of each score with the two-sample accuracy
(signs so that +1 = same order: FID, KID and FID/floor fall as quality rises, precision,
recall, density and coverage rise). ``--budget`` re-runs the two-sample test of every rung
with twice the width and twice the (resolved) steps, to show whether the default critic has
converged: its accuracy should not rise beyond its interval (one critic a fold there: the
question is the level, not the spread). ``--critic-seeds K`` re-runs the default test on the
same held-out and generated images at critic seeds 0..K-1: the sd of those accuracies is
what the interval's seed part (``c2st_critic_sd``, estimated inside one test from its
replicate critics) claims to measure.
Controls: the evaluate stage's subtle negative controls (slight blur, a 0.1 checkerboard, 0.1
high-frequency noise on real images), scored by FID in the feature space (against the floor)
and by the two-sample test.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from scipy.stats import spearmanr

from ganforge.config import parse_params
from ganforge.core.dataset import load_split
from ganforge.core.device import to_unit_range
from ganforge.metrics.controls import control_images
from ganforge.metrics.features import DomainFeatures
from ganforge.metrics.scores import fid
from ganforge.metrics.twosample import c2st
from ganforge.stages.evaluate import evaluate
from ganforge.stages.featurenet import train_featurenet
from ganforge.stages.prepare import prepare
from ganforge.stages.train import train

MNIST = Path(__file__).resolve().parents[2] / "shared/data/mnist"
DATA = {
    "digits": lambda m: {"source": "digits", "image_size": 16},
    "mnist": lambda m: {"source": "mnist-idx", "path": str(m), "image_size": 28},
}
LADDER = ["cdcgan:100", "cdcgan:300", "cdcgan:1000", "cdcgan:2600", "dcgan:1000", "mlp:1000", "sngan:1000"]
# score -> +1 if higher is better, -1 if lower is better (the two-sample accuracy: lower)
SCORES = {"fid": -1, "fid_over_floor": -1, "kid_mean": -1, "precision": 1, "recall": 1, "density": 1, "coverage": 1}


def heldout_and_fake(data: Path, gen: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The held-out split and as many images of the generator ``gen`` (conditional: with
    the held-out labels), both in [-1, 1] on the CPU."""
    from ganforge.models import load_generator
    from ganforge.stages.evaluate import generate

    cpu = torch.device("cpu")
    split = load_split(data, "holdout")
    hold = to_unit_range(split.images, cpu)
    G, meta = load_generator(gen, cpu)
    y = torch.as_tensor(split.labels) if meta["conditional"] else None
    return hold, generate(G, len(hold), meta["generator_kwargs"]["latent_dim"], y, 500, cpu, 0)


def run_dataset(name: str, mnist: Path, ladder: list[str], budget: bool, work: Path, texture: bool = True,
                critic_seeds: int = 0, controls: bool = True) -> list[dict]:
    base = parse_params({"prepare": DATA[name](mnist), "featurenet": {"texture": texture}}, "judge")
    data, fn = work / name / "data", work / name / "featurenet"
    if not (data / "manifest.json").exists():  # --work: what a previous run left is reused
        prepare(base.prepare, data)
    if not (fn / "featurenet.pt").exists():
        train_featurenet(base, data, fn)
    rows = []
    for rung in ladder:
        family, steps = rung.split(":")
        raw = {"prepare": DATA[name](mnist), "featurenet": {"texture": texture}, "train": {"model": family, "steps": int(steps), "keep": "last", "run_name": f"r{len(rows)}"}}
        params = parse_params(raw, "judge")
        gen = work / name / "runs" / f"r{len(rows)}" / "generator.pt"
        t0, train_s = time.perf_counter(), None
        if not gen.exists():
            train(params, data, work / name / "runs", progress=False, featurenet=fn / "featurenet.pt")
            train_s = round(time.perf_counter() - t0, 1)
        m = evaluate(params, data, gen, fn / "featurenet.pt", work / name / f"e{len(rows)}.json", work / name / f"rep{len(rows)}")
        row = {"dataset": name, "rung": rung, "train_s": train_s, "eval_s": m["timing_s"]["total_s"],
               "two_sample_s": m["timing_s"]["two_sample_s"],
               **{k: m[k] for k in ("c2st_accuracy", "c2st_ci95", "c2st_null_accuracy", "copying", "copying_z_pixel", "fid", "fid_at_floor_samples", "fid_floor", *SCORES)},
               "c2st_steps": m["c2st_protocol"]["steps"]}
        n2 = m["c2st_protocol"]["n_per_side"]  # the test's own n
        if budget or critic_seeds:
            hold, fake = heldout_and_fake(data, gen)
            hold, fake = hold[:n2], fake[:n2]
        if budget:  # twice its steps and width
            big = c2st(hold, fake, width=32, steps=2 * row["c2st_steps"], critics=1, seed=0)
            row["c2st_2x"] = round(big["accuracy"], 4)
            row["c2st_2x_ci95"] = [round(v, 4) for v in big["ci95"]]
        if critic_seeds:
            runs = [c2st(hold, fake, seed=s) for s in range(critic_seeds)]
            acc = torch.tensor([r["accuracy"] for r in runs])
            row["c2st_by_seed"] = [round(float(a), 4) for a in acc]
            row["c2st_seed_sd"] = round(float(acc.std()), 4)  # what the seed part should match
            row["c2st_critic_sd_mean"] = round(sum(r["critic_sd"] for r in runs) / len(runs), 4)
            row["c2st_halfwidth_mean"] = round(sum(r["ci95"][1] - r["ci95"][0] for r in runs) / (2 * len(runs)), 4)
        print(json.dumps(row), flush=True)
        rows.append(row)
    if not controls:
        return rows
    # negative controls: the feature space's FID against its floor, and the two-sample test
    ep = base.evaluate
    hold = to_unit_range(load_split(data, "holdout").images, torch.device("cpu"))
    other = to_unit_range(load_split(data, "train").images, torch.device("cpu"))
    other = other[torch.randperm(len(other), generator=torch.Generator().manual_seed(1))][: len(hold)]
    ex = DomainFeatures(fn / "featurenet.pt", torch.device("cpu"), ep.batch_size)
    feat = lambda x: ex(x)[0].cpu()  # noqa: E731
    floor = fid(feat(hold), feat(other))
    for i, cname in enumerate(("slight_blur", "checkerboard", "hf_noise")):
        images = control_images(cname, other, i)
        r = c2st(hold, images, seed=0)
        print(json.dumps({"dataset": name, "control": cname, "fid": round(fid(feat(hold), feat(images)), 4),
                          "floor_same_n": round(floor, 4), "c2st_accuracy": round(r["accuracy"], 4),
                          "c2st_ci95": [round(v, 4) for v in r["ci95"]]}), flush=True)
    return rows


def agreement(rows: list[dict]) -> dict[str, float]:
    """Spearman rank correlation of each score with the two-sample accuracy, signed so that
    +1 means the score orders the generators as the test does."""
    acc = [r["c2st_accuracy"] for r in rows]
    out = {}
    for k, sign in SCORES.items():
        rho = spearmanr([-sign * r[k] for r in rows], acc).statistic  # both: higher = worse
        out[k] = round(float(rho), 3)
    if all("c2st_2x" in r for r in rows):  # the ceiling: how well the test agrees with itself
        out["two_sample_2x_critic"] = round(float(spearmanr([r["c2st_2x"] for r in rows], acc).statistic), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", nargs="+", default=["digits", "mnist"], choices=list(DATA))
    ap.add_argument("--mnist", type=Path, default=MNIST)
    ap.add_argument("--ladder", nargs="+", default=LADDER)
    ap.add_argument("--budget", action="store_true", help="re-run the two-sample test at 2x width and steps")
    ap.add_argument("--critic-seeds", type=int, default=0, help="re-run each rung's default test at this many critic seeds")
    ap.add_argument("--no-controls", action="store_true", help="skip the negative controls")
    ap.add_argument("--work", type=Path, help="keep data, feature network and generators here (and reuse those already "
                    "there: delete featurenet/ to re-score the same generators in a new feature space)")
    ap.add_argument("--no-texture", action="store_true", help="judge in the feature network's embedding alone (featurenet.texture: false)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        all_rows = {d: run_dataset(d, args.mnist, args.ladder, args.budget, work, not args.no_texture,
                                   args.critic_seeds, not args.no_controls) for d in args.data}
    print("\n| data | rung | train s | two-sample accuracy [95%] | null | 2x critic | copying (z pixel) | FID | FID/floor (like for like) | KID | precision | recall | density | coverage |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for d, rows in all_rows.items():
        for r in rows:
            two = f"{r['c2st_2x']} {r['c2st_2x_ci95']}" if "c2st_2x" in r else "-"
            print(f"| {d} | {r['rung']} | {r['train_s']} | {r['c2st_accuracy']} {r['c2st_ci95']} | {r['c2st_null_accuracy']} | {two} | "
                  f"{r['copying']} ({r['copying_z_pixel']}) | {r['fid']} | {r['fid_over_floor']} | {r['kid_mean']} | {r['precision']} | "
                  f"{r['recall']} | {r['density']} | {r['coverage']} |")
    print("\nRank agreement with the two-sample test (Spearman; +1 = same order):")
    for d, rows in all_rows.items():
        print(d, json.dumps(agreement(rows)))


if __name__ == "__main__":
    main()
