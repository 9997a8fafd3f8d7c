"""Training the domain feature network on uint8 images, and measuring it; no file I/O.

Three objectives (``featurenet.objective``):

- ``classifier``: cross-entropy on the class labels (AdamW, one-cycle schedule, label
  smoothing, random shifts). Its logits give IS and the class histogram.
- ``contrastive``: for data whose labels cannot teach it (one class, or too few images per
  class): SimCLR's NT-Xent loss (Chen et al. 2020) on two augmented views of each image,
  through a projection head that is dropped afterwards; the features are the layer below
  it, as in the paper. Its logits mean nothing (no classes): scores that need classes are
  not computed in its space.
- ``hybrid``: both losses, summed: class labels that carry little (two or three classes)
  teach features that tell the classes apart and nothing else; the contrastive term keeps
  what makes each image itself.

All run a fixed number of optimiser steps (``resolve_steps``): epochs would give a
300-image folder a handful of steps and a network that has not moved from its init.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ganforge.core.device import to_unit_range
from ganforge.core.fastpath import FastPath, follow_free_cores
from ganforge.metrics.featurenet import FeatureNet

# optimiser steps when featurenet.steps is auto: 8 passes over the data, but never fewer than
# MIN_STEPS (measured: on a 270-image two-class colour folder 16 steps left held-out accuracy
# at chance, 300 reach 1.0) and never more than MAX_STEPS (MNIST's 9,000 images need ~560)
PASSES, MIN_STEPS, MAX_STEPS = 8, 300, 4000
# the contrastive objective's temperature and projection size (SimCLR's defaults at small batch)
TEMPERATURE, PROJECTION_DIM = 0.2, 64

log = logging.getLogger("ganforge.stages.featurenet")


def resolve_steps(setting: int | str, n_images: int, batch_size: int) -> int:
    """Optimiser steps for ``featurenet.steps`` (auto: see PASSES, MIN_STEPS, MAX_STEPS)."""
    if setting != "auto":
        return int(setting)
    return min(MAX_STEPS, max(MIN_STEPS, math.ceil(PASSES * n_images / batch_size)))


def random_shift(x: Tensor, max_shift: int, gen: torch.Generator) -> Tensor:
    """Random per-image translation by up to ``max_shift`` px (zero-padded: background is -1)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen, device=gen.device).to(x.device)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen, device=gen.device).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None])[:, None, :, None]  # (N, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device)[None])[:, None, None, :]  # (N, 1, 1, W)
    idx_n = torch.arange(n, device=x.device)[:, None, None, None]
    idx_c = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[idx_n, idx_c, rows, cols]


def augment(
    x: Tensor, gen: torch.Generator, *, max_shift: int, hflip: bool, jitter: float = 0.0
) -> Tensor:
    """(N, C, S, S) in [-1, 1] -> a random view: shift, optional mirror, and with ``jitter``
    > 0 per-image brightness (+-jitter) and contrast (x 1 +- jitter), clamped to [-1, 1]."""
    if max_shift:
        x = random_shift(x, max_shift, gen)
    n = len(x)

    def uniform(lo: float, hi: float) -> Tensor:  # (N, 1, 1, 1)
        u = torch.rand(n, 1, 1, 1, generator=gen, device=gen.device).to(x.device)
        return lo + (hi - lo) * u

    if hflip:
        x = torch.where(uniform(0, 1) < 0.5, x.flip(-1), x)
    if jitter:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * uniform(1 - jitter, 1 + jitter) + mean + uniform(-jitter, jitter)
        x = x.clamp(-1, 1)
    return x


def contrastive_view(x: Tensor, gen: torch.Generator, *, max_shift: int, hflip: bool) -> Tensor:
    """One view for the contrastive loss and its held-out check: stronger than the
    classifier's augmentation (twice the shift, at least 2 px, and colour jitter 0.3)."""
    return augment(x, gen, max_shift=2 * max_shift or 2, hflip=hflip, jitter=0.3)


def nt_xent(a: Tensor, b: Tensor, temperature: float = TEMPERATURE) -> Tensor:
    """SimCLR's loss for projections a, b (N, D) of two views of the same N images."""
    z = F.normalize(torch.cat([a, b]), dim=1)  # (2N, D)
    sim = z @ z.T / temperature  # (2N, 2N) cosine similarities
    sim.fill_diagonal_(float("-inf"))  # an image is not its own positive
    n = len(a)
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(a.device)
    return F.cross_entropy(sim, target)


def fit_featurenet(
    net: FeatureNet,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    objective: str,
    steps: int,
    batch_size: int,
    lr: float,
    max_shift: int,
    hflip: bool,
    seed: int,
    device: torch.device,
    fast: FastPath | None = None,
) -> None:
    """Train ``net`` in place for ``steps`` optimiser steps with ``objective``; ``fast``:
    bf16 autocast and channels-last (ganforge.core.fastpath), weights and losses fp32."""
    gen = torch.Generator(device=device).manual_seed(seed)
    fast = fast or FastPath.plain()
    amp, fmt = fast.autocast(device), fast.memory_format
    net.to(memory_format=fmt)
    x_all = to_unit_range(images, device)  # (N, C, S, S) in [-1, 1]
    y_all = torch.as_tensor(labels, device=device)
    n = len(x_all)
    batch = min(batch_size, n)
    head: nn.Module | None = None
    params = list(net.parameters())
    if objective in ("contrastive", "hybrid"):
        fd = net.embedding_dim  # the contrastive objective shapes the embedding
        head = nn.Sequential(nn.Linear(fd, fd), nn.ReLU(), nn.Linear(fd, PROJECTION_DIM))
        head.to(device)
        params += list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    net.train()
    perm, pos = torch.randperm(n, generator=gen, device=device), 0
    t0, every = time.perf_counter(), max(1, steps // 10)  # a progress line every tenth
    for step in range(1, steps + 1):
        follow_free_cores()
        if pos + batch > n:  # a new pass: every image once per pass, in a fresh order
            perm, pos = torch.randperm(n, generator=gen, device=device), 0
        idx = perm[pos : pos + batch]
        pos += batch
        loss = torch.zeros((), device=device)
        if objective in ("classifier", "hybrid"):
            x = augment(x_all[idx], gen, max_shift=max_shift, hflip=hflip)
            with amp:
                logits = net(x.contiguous(memory_format=fmt)).float()
            loss = F.cross_entropy(logits, y_all[idx], label_smoothing=0.05)
        if head is not None:
            a, b = (
                contrastive_view(x_all[idx], gen, max_shift=max_shift, hflip=hflip).contiguous(
                    memory_format=fmt
                )
                for _ in "ab"
            )
            with amp:
                za, zb = head(net.embedding(a)).float(), head(net.embedding(b)).float()
            loss = loss + nt_xent(za, zb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % every == 0 or step == steps:
            elapsed = time.perf_counter() - t0
            eta = elapsed * (steps - step) / step
            log.info(
                "featurenet step %d/%d (%d%%)  loss %.3f  %.0f s, eta %.0f s",
                *(step, steps, 100 * step // steps, float(loss.detach()), elapsed, eta),
            )
    net.eval()


@torch.no_grad()
def predictions(net: FeatureNet, images: np.ndarray, device: torch.device, batch: int = 1000):
    """Predicted class of each of ``images`` (uint8) -> (N,) int64 on the CPU."""
    net.eval()
    out = [
        net(to_unit_range(images[i : i + batch], device)).argmax(1).cpu()
        for i in range(0, len(images), batch)
    ]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def accuracy(pred: Tensor, labels: np.ndarray) -> float:
    """Share of predictions ``pred`` (N,) equal to ``labels``."""
    return float((pred == torch.as_tensor(labels)).float().mean())


def class_accuracy(pred: Tensor, labels: np.ndarray, num_classes: int) -> list[float | None]:
    """Accuracy of predictions ``pred`` (N,) per class (None for a class with no image)."""
    truth = torch.as_tensor(labels)
    out: list[float | None] = []
    for c in range(num_classes):
        mask = truth == c
        out.append(float((pred[mask] == c).float().mean()) if mask.any() else None)
    return out


@torch.no_grad()
def retrieval_accuracy(
    net: FeatureNet, images: np.ndarray, *, max_shift: int, hflip: bool, seed: int, device
) -> float:
    """How often an augmented view's nearest neighbour (cosine, in feature space) among the
    other views of ``images`` is a view of the same image: the contrastive objective's
    held-out check of the embedding it trains (1/N for an embedding that ignores the image)."""
    net.eval()
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    x = to_unit_range(images, device)
    a, b = (
        F.normalize(
            net.embedding(contrastive_view(x, gen, max_shift=max_shift, hflip=hflip)), dim=1
        )
        for _ in "ab"
    )
    nearest = (a @ b.T).argmax(1)  # (N,)
    return float((nearest.cpu() == torch.arange(len(images))).float().mean())
