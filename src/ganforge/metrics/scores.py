"""The metric functions: pure functions of feature sets (N, F) and logits (N, K).

FID, KID and IS are torchmetrics' (imported lazily: only evaluation needs the library):
the features are computed once and passed through an identity module, so no Frechet,
kernel or entropy maths is written here. Known answers are tested: FID of a set with
itself is ~0 and grows with noise; a generator stuck on one class is flagged.

Adding a metric: a pure function here, called from ``ganforge.stages.evaluate`` (which
puts it in ``eval.json`` and its protocol), and a known-answer test in tests/test_scores.py.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

# torchmetrics warns that KID/IS keep their inputs in memory: here those are the (N, F)
# features, already in memory, so the warning says nothing to our users.
warnings.filterwarnings(
    "ignore", message=r"Metric `(Kernel Inception Distance|InceptionScore)` will save"
)


class _Precomputed(nn.Module):
    """Identity 'feature extractor': lets torchmetrics score features computed once."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: Tensor) -> Tensor:
        return x


# Every score here is of the features this process holds. torchmetrics would otherwise
# all-gather its state over an initialised process group at compute(): the training FID
# probe runs on rank 0 alone, so under torchrun rank 0 waited in that gather while rank 1
# waited in the stop-flag broadcast, both until the 30-minute timeout.
LOCAL = {"sync_on_compute": False}


def fid(real: Tensor, fake: Tensor) -> float:
    """torchmetrics FID of two feature sets (N, F), (M, F)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=_Precomputed(real.shape[1]), normalize=False, **LOCAL)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return float(metric.compute())


def fid_bootstrap(
    real: Tensor, fake: Tensor, replicates: int, seed: int, estimate: float | None = None
) -> tuple[float, float]:
    """95% interval of FID from resampling the rows of both sets, centred on ``estimate``.

    Resampling with replacement duplicates rows, and a duplicate lowers the sets' effective
    size, which raises FID: every replicate is biased upward, by far more than the sampling
    spread when FID is near zero (a digits cdcgan: FID 0.1206, plain percentile interval
    [0.1515, 0.3924], wholly above it). So the interval is the replicates' 2.5-97.5% spread
    around their median, moved onto the estimate: [F - (med - q2.5), F + (q97.5 - med)],
    clipped at 0 (a bias-corrected percentile interval). ``estimate``: the FID of the two
    sets as given (computed here when None)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if replicates <= 0:
        return (float("nan"), float("nan"))
    g = torch.Generator().manual_seed(seed + 1)
    metric = FrechetInceptionDistance(feature=_Precomputed(real.shape[1]), normalize=False, **LOCAL)
    real64, fake64 = real.double().cpu(), fake.double().cpu()
    values = []
    for _ in range(replicates):
        metric.reset()
        metric.update(real64[torch.randint(len(real64), (len(real64),), generator=g)], real=True)
        metric.update(fake64[torch.randint(len(fake64), (len(fake64),), generator=g)], real=False)
        values.append(float(metric.compute()))
    lo, med, hi = np.percentile(values, [2.5, 50.0, 97.5])
    f = fid(real, fake) if estimate is None else estimate
    return max(0.0, f - (med - lo)), f + (hi - med)


def kid(
    real: Tensor, fake: Tensor, subsets: int, subset_size: int, seed: int
) -> tuple[float, float]:
    """torchmetrics KID (polynomial-kernel MMD, unbiased) -> (mean, std over subsets)."""
    from torchmetrics.image.kid import KernelInceptionDistance

    size = min(subset_size, len(real), len(fake))
    metric = KernelInceptionDistance(
        feature=_Precomputed(real.shape[1]), subsets=subsets, subset_size=size, **LOCAL
    )
    metric.update(real.float(), real=True)
    metric.update(fake.float(), real=False)
    with torch.random.fork_rng():
        torch.manual_seed(seed + 2)  # KID draws its subsets from the global RNG
        mean, std = metric.compute()
    return float(mean), float(std)


def inception_score(logits: Tensor, splits: int, seed: int) -> tuple[float, float]:
    """torchmetrics IS from classifier logits (it applies the softmax) -> (mean, std)."""
    from torchmetrics.image.inception import InceptionScore

    metric = InceptionScore(
        feature=_Precomputed(logits.shape[1]), splits=splits, normalize=False, **LOCAL
    )
    metric.update(logits.float())
    with torch.random.fork_rng():
        torch.manual_seed(seed + 3)  # IS shuffles before splitting
        mean, std = metric.compute()
    return float(mean), float(std)


def class_histogram(pred: Tensor | np.ndarray, num_classes: int) -> np.ndarray:
    counts = np.bincount(np.asarray(pred), minlength=num_classes).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def mode_collapse(
    real_hist: np.ndarray, fake_hist: np.ndarray, coverage_threshold: float, kl_threshold: float
) -> dict[str, Any]:
    """Class coverage, KL(real || generated) and the collapse flag with its rule."""
    present = real_hist > 0
    covered = fake_hist >= coverage_threshold * real_hist
    coverage = float((covered & present).sum() / present.sum())
    eps = 1e-6  # a missing class costs log(p / 1e-6) instead of infinity
    q = (fake_hist + eps) / (fake_hist + eps).sum()
    kl = float(
        np.sum(np.where(present, real_hist * np.log(np.where(present, real_hist, 1.0) / q), 0.0))
    )
    collapsed = coverage < 1.0 or kl > kl_threshold
    return {
        "class_coverage": coverage,
        "classes_missed": [int(i) for i in np.flatnonzero(present & ~covered)],
        "kl_class": kl,
        "mode_collapse": bool(collapsed),
        "mode_collapse_rule": (
            "mode_collapse = class_coverage < 1 (some class generated at under "
            f"{coverage_threshold:g}x "
            "its real share) or kl_class = KL(real || generated class histogram) > "
            f"{kl_threshold:g}"
        ),
    }


def _kth_radius(x: Tensor, k: int, chunk: int = 2048) -> Tensor:
    """Distance from each row of x (N, F) to its k-th nearest other row -> (N,)."""
    out = []
    for i in range(0, len(x), chunk):
        d = torch.cdist(x[i : i + chunk], x)  # (c, N), includes the zero self-distance
        out.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(out)


def _inside(points: Tensor, centres: Tensor, radii: Tensor, chunk: int = 2048) -> Tensor:
    """For each point, whether it lies in any ball (centre, radius) -> bool (P,)."""
    out = []
    for i in range(0, len(points), chunk):
        d = torch.cdist(points[i : i + chunk], centres)  # (c, C)
        out.append((d <= radii[None]).any(dim=1))
    return torch.cat(out)


def precision_recall(real: Tensor, fake: Tensor, k: int) -> tuple[float, float]:
    """Improved precision/recall (Kynkaanniemi et al. 2019) with k-NN manifolds.

    precision: share of generated samples inside the real manifold (fidelity);
    recall: share of real samples inside the generated manifold (diversity).
    """
    if len(real) <= k or len(fake) <= k:
        return float("nan"), float("nan")
    real, fake = real.float(), fake.float()
    precision = _inside(fake, real, _kth_radius(real, k)).float().mean()
    recall = _inside(real, fake, _kth_radius(fake, k)).float().mean()
    return float(precision), float(recall)


def rounded(x: float | None, nd: int = 5) -> float | None:
    """``x`` rounded to ``nd`` places for the metrics files; None when missing or not finite."""
    return None if x is None or not np.isfinite(x) else round(float(x), nd)


def density_coverage(real: Tensor, fake: Tensor, k: int) -> tuple[float, float]:
    """Density and coverage (Naeem et al. 2020) with k-NN balls around the real samples.

    density: how many real balls a generated sample falls in, on average, over k (about 1
    for a generator like the data, above 1 where it piles up on dense regions); coverage:
    the share of real balls holding at least one generated sample (diversity that, unlike
    recall, is not inflated by generated outliers).
    """
    if len(real) <= k or len(fake) < 1:
        return float("nan"), float("nan")
    real, fake = real.float(), fake.float()
    radii = _kth_radius(real, k)  # (R,)
    count = torch.zeros(len(real))
    hits = 0.0
    for i in range(0, len(fake), 2048):
        inside = torch.cdist(fake[i : i + 2048], real) <= radii[None]  # (c, R)
        hits += float(inside.sum())
        count += inside.sum(0).cpu().float()
    return hits / (k * len(fake)), float((count > 0).float().mean())
