"""Judges that need no feature network: a classifier two-sample test in pixel space, and a
data-copying test. Pure functions of image tensors (N, C, H, W) in [-1, 1].

Classifier two-sample test (C2ST; Lopez-Paz & Oquab 2017). A fresh small CNN learns to
tell real images from generated ones and is scored on images it did not train on:

- the images are split into ``folds`` folds (each half real, half generated); for each
  fold the critic trains on the others and predicts that fold, so every image is predicted
  once, by a critic that never saw it;
- the critic trains for a budget measured to be enough: in ``benchmarks/judge.py`` twice
  the steps and twice the width give no higher accuracy on the generators of the ladder
  (an under-trained critic says "indistinguishable" about generators a trained one
  separates: early stopping on a few dozen held-aside images stopped too soon and ranked
  a FID-7.6 generator as nearer real data than a FID-0.55 one, so it is not used);
- accuracy = share of the 2n predictions that are right, with its Wilson 95% interval.
  0.5: the critic cannot tell the sets apart; 1.0: it always can. The same procedure on
  two real sets gives the null (``null`` in the evaluate stage: held-out vs training
  images), which shows what "cannot tell" measures as on this data.

Data-copying test (Meehan, Chaudhuri & Dasgupta 2020, the global form of their C_T): the
distances from generated images to their nearest training image are compared with the
distances from held-out real images to theirs by a Mann-Whitney U test. Its z-score is
negative when generated images sit closer to the training set than unseen real images do
(copying), about 0 when they are as close, positive when farther (under-fitting).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def wilson(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (95% for z = 1.96) of a proportion correct / n."""
    if n <= 0:
        return 0.0, 1.0
    p = correct / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    denom = 1 + z * z / n
    return max(0.0, (centre - spread) / denom), min(1.0, (centre + spread) / denom)


class Critic(nn.Module):
    """The two-sample test's classifier: three convs and a linear logit (N, C, H, W) -> (N,)."""

    def __init__(self, channels: int, width: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 4, 2, 1),  # (N, w, H/2, W/2): overlapping, sees every pixel
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, 2, 1),  # (N, 2w, H/4, W/4)
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 2 * width, 3, 1, 1),  # (N, 2w, H/4, W/4)
            nn.LeakyReLU(0.2),
        )
        self.head = nn.Linear(2 * width, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x).mean(dim=(2, 3))).squeeze(1)


def _fit_and_predict(
    x: Tensor, y: Tensor, test: Tensor, settings: dict[str, Any], gen: torch.Generator
) -> Tensor:
    """Train a fresh critic on (x, y) for ``settings["steps"]`` Adam steps; predict ``test``
    -> predicted labels (M,)."""
    critic = Critic(x.shape[1], settings["width"]).to(x.device)
    opt = torch.optim.Adam(critic.parameters(), lr=settings["lr"], betas=(0.5, 0.999))
    batch = min(settings["batch_size"], len(x))
    for _ in range(settings["steps"]):
        idx = torch.randint(len(x), (batch,), generator=gen, device=x.device)
        loss = F.binary_cross_entropy_with_logits(critic(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = torch.cat([critic(test[i : i + 1024]) for i in range(0, len(test), 1024)]) > 0
    return pred.float()


def c2st(
    a: Tensor,
    b: Tensor,
    *,
    folds: int = 3,
    steps: int = 1500,
    width: int = 16,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
) -> dict[str, Any]:
    """Classifier two-sample test between image sets ``a`` (real) and ``b`` (n each; the
    larger is cut to the smaller) -> accuracy, its 95% interval, n and the settings."""
    n = min(len(a), len(b))
    if n < 2 * folds:
        raise ValueError(f"two-sample test: {n} images per side; need at least {2 * folds}")
    settings = dict(steps=steps, width=width, batch_size=batch_size, lr=lr)
    device = a.device
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)  # the critics' initial weights
        ia = torch.randperm(len(a), generator=gen, device=device)[:n]
        ib = torch.randperm(len(b), generator=gen, device=device)[:n]
        x = torch.cat([a[ia], b[ib]]).float()  # (2n, C, H, W)
        y = torch.cat([torch.zeros(n, device=device), torch.ones(n, device=device)])
        # folds with n/folds images of each side: every image is predicted once
        fold_of = torch.cat([torch.arange(n, device=device) % folds] * 2)
        fold_of = fold_of[torch.cat([torch.randperm(n, generator=gen, device=device)] * 2)]
        correct = 0
        for k in range(folds):
            test, train = fold_of == k, fold_of != k
            pred = _fit_and_predict(x[train], y[train], x[test], settings, gen)
            correct += int((pred == y[test]).sum())
    lo, hi = wilson(correct, 2 * n)
    return {
        "accuracy": correct / (2 * n),
        "ci95": [lo, hi],
        "n_per_side": n,
        "folds": folds,
        **settings,
    }


def nearest_distances(x: Tensor, ref: Tensor, chunk: int = 1024) -> tuple[Tensor, Tensor]:
    """L2 distance from each row of ``x`` (flattened) to its nearest row of ``ref``, and
    that row's index -> ((N,), (N,))."""
    x, ref = x.flatten(1).float(), ref.flatten(1).float()
    dist, idx = [], []
    for i in range(0, len(x), chunk):
        d = torch.cdist(x[i : i + chunk], ref)  # (c, R)
        values, where = d.min(dim=1)
        dist.append(values)
        idx.append(where)
    return torch.cat(dist), torch.cat(idx)


def copying_z(fake_to_train: Tensor, heldout_to_train: Tensor) -> float:
    """Mann-Whitney z of generated vs held-out nearest-training distances (Meehan et al.
    2020): negative when generated images are closer to the training set (copying)."""
    from scipy.stats import mannwhitneyu

    m, n = len(fake_to_train), len(heldout_to_train)
    u = mannwhitneyu(fake_to_train.cpu().numpy(), heldout_to_train.cpu().numpy()).statistic
    return float((u - m * n / 2) / np.sqrt(m * n * (m + n + 1) / 12))
