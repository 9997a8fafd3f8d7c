"""The truncation trick's fidelity/diversity trade-off, measured so a user can pick a
threshold with evidence (``ganforge generate --truncation``, ``serve``'s ``truncation``).

For each threshold of ``evaluate.truncation_curve`` (and "none" first, the untruncated
generator) the same number of images, from the same seed and labels, truncated at that
threshold (``core.latent.truncate``): precision and density (fidelity), recall and
coverage (diversity) in the evaluation's feature space, FID at the floor's sample size,
and with ``evaluate.truncation_two_sample`` the two-sample accuracy against the held-out
split (all thresholds' critics trained side by side). Rows -> ``reports/truncation.csv``
and ``reports/truncation.png``; ``reports/truncation_samples.png`` shows the same noise at
each threshold, a row each (top: none).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ganforge.config import EvaluateParams
from ganforge.core.latent import truncate
from ganforge.metrics.scores import density_coverage, fid, precision_recall
from ganforge.metrics.twosample import c2st_many

COLUMNS = ("truncation", "precision", "recall", "density", "coverage", "fid_at_floor_samples",
           "c2st_accuracy", "c2st_ci95_low", "c2st_ci95_high")  # fmt: skip


@torch.no_grad()
def generate(
    G: Callable[[Tensor, Tensor | None], Tensor],
    n: int,
    latent_dim: int,
    labels: Tensor | None,
    batch: int,
    device: torch.device,
    seed: int,
    truncation: float | None = None,
) -> Tensor:
    """n images (n, C, H, W) in [-1, 1] on ``device``, from seeded noise truncated at
    ``truncation`` (``core.latent``; None: not). The same seed gives the same noise before
    truncation, so images at two thresholds are the same samples pulled in more or less."""
    g = torch.Generator(device=device).manual_seed(seed)
    rng = np.random.default_rng(seed + 17)  # the redraws' own stream
    out = []
    for i in range(0, n, batch):
        m = min(batch, n - i)
        z = torch.randn(m, latent_dim, device=device, generator=g)
        if truncation is not None:
            z = torch.from_numpy(truncate(z.cpu().numpy(), truncation, rng)).to(device)
        y = labels[i : i + m].to(device) if labels is not None else None
        out.append(G(z, y).float())
    return torch.cat(out)


def truncation_curve(
    ep: EvaluateParams,
    G: Callable[[Tensor, Tensor | None], Tensor],
    latent_dim: int,
    labels: Tensor | None,
    featurise: Callable[[Tensor], Tensor],
    real_f: Tensor,
    floor_half: Tensor,
    holdout: Tensor,
    device: torch.device,
    per_row: int = 10,
) -> tuple[list[dict[str, Any]], Tensor]:
    """One row per threshold (None first): the scores above, of n = min(evaluate.pr_samples,
    len(real_f)) images from the seed after the evaluation's own (precision, recall,
    density, coverage against ``real_f``'s first n; FID against ``floor_half``, at its
    size) -> (rows, the first ``per_row`` images of each threshold: the same noise and
    labels, truncated more from row to row)."""
    n = min(ep.pr_samples, len(real_f))
    y = None if labels is None else labels[:n]
    rows, images = [], []
    for t in [None, *ep.truncation_curve]:
        x = generate(G, n, latent_dim, y, ep.batch_size, device, ep.seed + 1, t)
        f = featurise(x).float()
        precision, recall = precision_recall(real_f[:n], f, ep.pr_k)
        density, coverage = density_coverage(real_f[:n], f, ep.pr_k)
        m = min(len(floor_half), n)
        rows.append({"truncation": t, "precision": precision, "recall": recall,
                     "density": density, "coverage": coverage,
                     "fid_at_floor_samples": fid(floor_half[:m], f[:m])})  # fmt: skip
        images.append(x)
    if ep.truncation_two_sample:
        k = min(len(holdout), ep.two_sample_samples, n)
        steps = None if ep.two_sample_steps == "auto" else ep.two_sample_steps
        tests = c2st_many(
            [(holdout[:k], x[:k]) for x in images], folds=ep.two_sample_folds,
            critics=ep.two_sample_critics, steps=steps, width=ep.two_sample_width, seed=ep.seed,
        )  # fmt: skip
        for row, test in zip(rows, tests, strict=True):
            row |= {"c2st_accuracy": test["accuracy"], "c2st_ci95_low": test["ci95"][0],
                    "c2st_ci95_high": test["ci95"][1]}  # fmt: skip
    strips = torch.cat([x[:per_row] for x in images])
    return [{k: _round(row.get(k)) for k in COLUMNS} for row in rows], strips


def _round(v: Any) -> Any:
    return round(float(v), 5) if isinstance(v, (float, int)) and not isinstance(v, bool) else v


def write_curve(rows: list[dict[str, Any]], out: Path) -> None:
    """``truncation.csv`` and ``truncation.png`` (each score against the threshold; "none"
    drawn at the right, where truncation stops mattering) into the directory ``out``."""
    with (out / "truncation.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, COLUMNS)
        w.writeheader()
        w.writerows(
            {k: "none" if v is None and k == "truncation" else v for k, v in r.items()}
            for r in rows
        )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = [r["truncation"] for r in rows if r["truncation"] is not None]
    right = 1.25 * max(finite, default=1.0)  # where "none" is drawn
    xs = [right if r["truncation"] is None else r["truncation"] for r in rows]
    order = np.argsort(xs)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("precision", "recall", "density", "coverage", "c2st_accuracy"):
        ys = [rows[i][key] for i in order]
        if all(y is not None for y in ys):
            ax.plot([xs[i] for i in order], ys, marker="o", label=key)
    ax.set_title("fidelity (precision, density) vs diversity (recall, coverage)")
    ax.legend(fontsize=8)
    ax2.plot([xs[i] for i in order], [rows[i]["fid_at_floor_samples"] for i in order], marker="o")
    ax2.set_title("FID at the floor's sample size")
    ticks = sorted(set(xs))
    for a in (ax, ax2):
        a.set_xticks(ticks, ["none" if t == right else f"{t:g}" for t in ticks])
        a.set_xlabel("truncation threshold")
    fig.tight_layout()
    fig.savefig(out / "truncation.png", dpi=100)
    plt.close(fig)
