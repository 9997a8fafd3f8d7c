"""Training the domain feature network (a classifier) on uint8 images; no file I/O."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ganforge.core.device import to_unit_range
from ganforge.metrics.featurenet import FeatureNet


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


def fit_classifier(
    net: FeatureNet,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    max_shift: int,
    seed: int,
    device: torch.device,
) -> None:
    """AdamW with a one-cycle schedule, label smoothing and random shifts; trains in place."""
    gen = torch.Generator(device=device).manual_seed(seed)
    x_all = to_unit_range(images, device)  # (N, C, S, S) in [-1, 1]
    y_all = torch.as_tensor(labels, device=device)
    n = len(x_all)
    steps_per_epoch = max(1, n // batch_size)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=epochs * steps_per_epoch
    )
    for _epoch in range(epochs):
        net.train()
        perm = torch.randperm(n, generator=gen, device=device)
        for i in range(steps_per_epoch):
            idx = perm[i * batch_size : (i + 1) * batch_size]
            x = random_shift(x_all[idx], max_shift, gen) if max_shift else x_all[idx]
            loss = F.cross_entropy(net(x), y_all[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()


@torch.no_grad()
def accuracy(
    net: FeatureNet, images: np.ndarray, labels: np.ndarray, device: torch.device, batch: int = 1000
) -> float:
    """Share of ``images`` (uint8) classified as ``labels``."""
    net.eval()
    correct = 0
    for i in range(0, len(images), batch):
        logits = net(to_unit_range(images[i : i + batch], device))
        correct += int((logits.argmax(1).cpu() == torch.as_tensor(labels[i : i + batch])).sum())
    return correct / len(images)
