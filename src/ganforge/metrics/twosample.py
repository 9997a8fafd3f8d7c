"""Judges that need no feature network: a classifier two-sample test in pixel space, and a
data-copying test. Pure functions of image tensors (N, C, H, W) in [-1, 1].

Classifier two-sample test (C2ST; Lopez-Paz & Oquab 2017). A fresh small CNN learns to
tell real images from generated ones and is scored on images it did not train on:

- the images are split into ``folds`` folds (each half real, half generated); for each
  fold a critic trains on the others and predicts that fold, so every image is predicted
  once, by a critic that never saw it (the critics of all folds, and of several tests, train
  side by side as one grouped network: ``Critics``);
- the critic trains for a budget measured to be enough (``auto_steps``: a fixed number of
  passes over its training rows, at least ``MIN_STEPS``): in ``benchmarks/judge.py`` twice
  the steps and twice the width give no higher accuracy on the generators of the ladder.
  A fixed step count is not enough: with 1,000 images a side (MNIST) 1,500 steps scored
  the best MNIST rung 0.614, 6,000 steps 0.68 and width 32 x 6,000 steps 0.70, where on
  180 a side (digits) 1,500 steps had converged. An under-trained critic says
  "indistinguishable" about generators a trained one separates; early stopping on a few
  dozen held-aside images stopped too soon and ranked a FID-7.6 generator as nearer real
  data than a FID-0.55 one, so it is not used;
- each fold is predicted by ``critics`` critics of their own seeds (initial weights and
  batches), so that the test measures its own randomness: on one fixed pair of sets five
  critic seeds spread with sd 0.024, as much as the Wilson interval's half-width on 180
  images a side. A binomial interval alone covers which images were predicted, not how
  the critics happened to train;
- accuracy = the mean share of the 2n predictions that are right over the critics. Its 95%
  interval is the Wilson interval of that share on 2n images, each side widened in
  quadrature by 1.96 x the critics' seed spread (per fold, the variance of the replicate
  critics' accuracies, over ``critics`` and folds: ``critic_sd``, the sd of the mean).
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

from ganforge.core.fastpath import follow_free_cores

# the auto budget: passes over a critic's training rows (measured enough on digits: 1,500
# steps of 64 over 240 rows), and never fewer steps than that
PASSES, MIN_STEPS = 400, 1500
BATCH_SIZE = 64  # images per critic per step


def auto_steps(n_per_side: int, folds: int, batch_size: int) -> int:
    """Adam steps for ``evaluate.two_sample_steps: auto``: PASSES passes over the
    2n (folds - 1) / folds rows each critic trains on, at least MIN_STEPS (digits, 180 a
    side: 1,500; MNIST, 1,000 a side: 8,334)."""
    rows = 2 * n_per_side * (folds - 1) / folds
    return max(MIN_STEPS, math.ceil(PASSES * rows / batch_size))


def wilson(correct: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval (95% for z = 1.96) of a proportion correct / n (correct may be
    a mean count over replicate critics)."""
    if n <= 0:
        return 0.0, 1.0
    p = correct / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    denom = 1 + z * z / n
    return max(0.0, (centre - spread) / denom), min(1.0, (centre + spread) / denom)


class Critics(nn.Module):
    """``groups`` independent two-sample critics evaluated in one pass: each is three convs
    and a linear logit, held as grouped convolutions so that training them together costs
    about as much per step as training one (every group has its own weights and Adam state,
    initialised as a lone critic would be). (N, groups, C, H, W) -> logits (N, groups)."""

    def __init__(self, channels: int, width: int, groups: int) -> None:
        super().__init__()
        c, w, g = channels * groups, width * groups, groups
        self.body = nn.Sequential(
            nn.Conv2d(c, w, 4, 2, 1, groups=g),  # (N, w, H/2, W/2): overlapping, sees every pixel
            nn.LeakyReLU(0.2),
            nn.Conv2d(w, 2 * w, 4, 2, 1, groups=g),  # (N, 2w, H/4, W/4)
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * w, 2 * w, 3, 1, 1, groups=g),  # (N, 2w, H/4, W/4)
            nn.LeakyReLU(0.2),
        )
        self.head = nn.Conv2d(2 * w, g, 1, groups=g)  # a linear layer per group, after pooling

    def forward(self, x: Tensor) -> Tensor:
        # channels-last: on this CPU (oneDNN, no AMX) 1.27x faster a step than NCHW with 12
        # critics side by side, the same fp32 arithmetic
        x = x.flatten(1, 2).contiguous(memory_format=torch.channels_last)
        pooled = self.body(x).mean(dim=(2, 3), keepdim=True)
        return self.head(pooled).flatten(1)


def _fit_and_predict(
    x: Tensor, y: Tensor, train: list[Tensor], settings: dict[str, Any], gen: torch.Generator
) -> Tensor:
    """Train one fresh critic per index set in ``train`` (rows of ``x``, labels ``y``), all
    at once, for ``settings["steps"]`` Adam steps, each on its own random batches; then
    every critic predicts every row -> predicted labels (len(x), critics)."""
    groups, device = len(train), x.device
    critics = Critics(x.shape[1], settings["width"], groups)
    critics = critics.to(device, memory_format=torch.channels_last)
    # fused: one kernel for every parameter's update (on this CPU 1.5x faster a step)
    opt = torch.optim.Adam(critics.parameters(), settings["lr"], betas=(0.5, 0.999), fused=True)
    batch = min(settings["batch_size"], *(len(t) for t in train))
    sizes = torch.tensor([len(t) for t in train], device=device)
    table = torch.nn.utils.rnn.pad_sequence(train, batch_first=True)  # (critics, max size)
    rows = torch.arange(groups, device=device)[:, None]
    for _ in range(settings["steps"]):
        follow_free_cores()
        pick = (torch.rand(groups, batch, generator=gen, device=device) * sizes[:, None]).long()
        idx = table[rows, pick].T  # (batch, critics): each critic's own training rows
        # a sum of per-critic means: each critic's gradient is that of its own loss
        loss = F.binary_cross_entropy_with_logits(critics(x[idx]), y[idx], reduction="sum")
        opt.zero_grad(set_to_none=True)
        (loss / batch).backward()
        opt.step()
    with torch.no_grad():
        chunks = (
            x[i : i + 256, None].expand(-1, groups, -1, -1, -1) for i in range(0, len(x), 256)
        )
        return torch.cat([critics(c) > 0 for c in chunks]).float()


def c2st_many(
    pairs: list[tuple[Tensor, Tensor]],
    *,
    folds: int = 3,
    critics: int = 2,
    steps: int | None = None,
    width: int = 16,
    batch_size: int = BATCH_SIZE,
    lr: float = 1e-3,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Classifier two-sample tests between image sets (a = real, b; per pair the larger set
    is cut to the smaller, n each), their ``folds`` x ``critics`` x len(pairs) critics
    trained together for ``steps`` Adam steps (None: ``auto_steps`` for the first pair's n)
    -> per pair: accuracy, its 95% interval (seed spread included), critic_sd, n and the
    settings."""
    if steps is None:
        steps = auto_steps(min(len(pairs[0][0]), len(pairs[0][1])), folds, batch_size)
    settings = dict(steps=steps, width=width, batch_size=batch_size, lr=lr)
    device = pairs[0][0].device
    gen = torch.Generator(device=device).manual_seed(seed)
    xs, ys, tests, train, sizes, offset = [], [], [], [], [], 0
    for a, b in pairs:
        n = min(len(a), len(b))
        sizes.append(n)
        if n < 2 * folds:
            raise ValueError(f"two-sample test: {n} images per side; need at least {2 * folds}")
        ia = torch.randperm(len(a), generator=gen, device=device)[:n]
        ib = torch.randperm(len(b), generator=gen, device=device)[:n]
        xs.append(torch.cat([a[ia], b[ib]]).float())  # (2n, C, H, W)
        ys.append(torch.cat([torch.zeros(n, device=device), torch.ones(n, device=device)]))
        # folds with n/folds images of each side: every image is predicted once per replicate
        fold_of = torch.cat([torch.arange(n, device=device) % folds] * 2)
        fold_of = fold_of[torch.cat([torch.randperm(n, generator=gen, device=device)] * 2)]
        for k in range(folds):
            tests.append(offset + torch.nonzero(fold_of == k).flatten())
            train += [offset + torch.nonzero(fold_of != k).flatten()] * critics
        offset += 2 * n
    x, y = torch.cat(xs), torch.cat(ys)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)  # the critics' initial weights
        pred = _fit_and_predict(x, y, train, settings, gen)
    results = []
    for p, n in enumerate(sizes):
        # right[k, r]: images of fold k that replicate r of that fold predicts right
        right = torch.tensor(
            [
                [
                    float((pred[t, (p * folds + k) * critics + r] == y[t]).sum())
                    for r in range(critics)
                ]
                for k, t in enumerate(tests[p * folds : (p + 1) * folds])
            ]
        )
        fold_n = torch.tensor([float(len(t)) for t in tests[p * folds : (p + 1) * folds]])
        accuracy = float(right.mean(1).sum()) / (2 * n)
        results.append(
            {
                "accuracy": accuracy,
                **_interval(accuracy, 2 * n, right / fold_n[:, None], fold_n / (2 * n)),
                "n_per_side": n,
                "folds": folds,
                "critics": critics,
                **settings,
            }
        )
    return results


def _interval(accuracy: float, n: int, fold_acc: Tensor, weight: Tensor) -> dict[str, Any]:
    """The Wilson interval of ``accuracy`` on ``n`` predictions, each side widened in
    quadrature by 1.96 x the seed sd of the mean over replicates: per fold the replicates'
    variance (fold_acc: (folds, critics)) / critics, weighted by the fold's share of the
    images. One critic per fold measures no spread: the interval is Wilson's alone."""
    lo, hi = wilson(accuracy * n, n)
    if fold_acc.shape[1] < 2:
        return {"ci95": [lo, hi], "critic_sd": None}
    sd = float((weight**2 * fold_acc.var(dim=1) / fold_acc.shape[1]).sum().sqrt())
    lo = max(0.0, accuracy - math.hypot(accuracy - lo, 1.96 * sd))
    hi = min(1.0, accuracy + math.hypot(hi - accuracy, 1.96 * sd))
    return {"ci95": [lo, hi], "critic_sd": sd}


def c2st(a: Tensor, b: Tensor, **settings: Any) -> dict[str, Any]:
    """One classifier two-sample test between ``a`` (real) and ``b``; see ``c2st_many``."""
    return c2st_many([(a, b)], **settings)[0]


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
