"""Differentiable augmentation for small data: the discriminator sees augmented real *and*
fake images, so it cannot memorise a few hundred images, and the generator cannot learn the
augmentation (it is applied to both sides of the game, never to what G outputs).

- ``diffaugment`` (Zhao et al. 2020): colour (brightness, saturation, contrast), translation
  by up to 1/8 of the side, and cutout of a half-side square, on every image, every step.
- ``ada`` (Karras et al. 2020, the adaptive idea on the same operations): each operation is
  applied to an image with probability p; every ``ADA_INTERVAL`` steps p moves up when the
  discriminator is over-confident on reals (r_t = E[sign(D(x_real))] above ``ADA_TARGET``)
  and down otherwise, at a speed that could take it from 0 to 1 in ``ADA_KIMG`` thousand
  real images.

Every operation is a differentiable function of the images (N, C, H, W) in [-1, 1], drawing
its randomness from one ``torch.Generator`` whose state is checkpointed (exact resume).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

ADA_TARGET = 0.6  # r_t the adaptive probability aims for (Karras et al. 2020)
ADA_INTERVAL = 4  # steps between adjustments
# thousand real images for p to be able to go from 0 to 1 (the paper: 500; our runs are short)
ADA_KIMG = 100


Shard = tuple[int, int]  # (rank, world size): draws are made for the global batch, then sliced
ONE: Shard = (0, 1)


def _mine(draw: Tensor, n: int, shard: Shard) -> Tensor:
    """This rank's n rows of a draw made for all ranks (so every rank's generator stays equal
    and a run draws the same numbers on any number of ranks)."""
    return draw[shard[0] * n : (shard[0] + 1) * n]


def _rand(n: int, gen: torch.Generator, device, shard: Shard = ONE) -> Tensor:
    u = torch.rand(n * shard[1], 1, 1, 1, generator=gen, device=gen.device)
    return _mine(u, n, shard).to(device)


def _randint(lo: int, hi: int, n: int, gen: torch.Generator, device, shard: Shard) -> Tensor:
    r = torch.randint(lo, hi, (n * shard[1], 1, 1), generator=gen, device=gen.device)
    return _mine(r, n, shard).to(device)


def _colour(x: Tensor, gen: torch.Generator, shard: Shard = ONE) -> Tensor:
    n, c = x.shape[:2]
    x = x + (_rand(n, gen, x.device, shard) - 0.5)  # brightness +-0.5 (images span 2)
    if c == 3:
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * (_rand(n, gen, x.device, shard) * 2) + mean  # saturation x[0, 2]
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_rand(n, gen, x.device, shard) + 0.5) + mean  # contrast x[0.5, 1.5]


def _translation(
    x: Tensor, gen: torch.Generator, shard: Shard = ONE, ratio: float = 0.125
) -> Tensor:
    """Shift each image by up to ratio x side in x and y, filling with -1 (black)."""
    n, _, h, w = x.shape
    sh, sw = max(1, int(h * ratio + 0.5)), max(1, int(w * ratio + 0.5))
    dy = _randint(-sh, sh + 1, n, gen, x.device, shard)  # (N, 1, 1)
    dx = _randint(-sw, sw + 1, n, gen, x.device, shard)
    ys = torch.arange(h, device=x.device).view(1, h, 1) - dy  # (N, H, 1) source rows
    xs = torch.arange(w, device=x.device).view(1, 1, w) - dx  # (N, 1, W) source columns
    inside = ((ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)).unsqueeze(1)  # (N, 1, H, W)
    ys, xs = ys.clamp(0, h - 1).expand(n, h, w), xs.clamp(0, w - 1).expand(n, h, w)
    idx = (ys * w + xs).view(n, 1, h * w).expand(-1, x.shape[1], -1)
    out = x.flatten(2).gather(2, idx).view_as(x)
    return torch.where(inside, out, torch.full_like(out, -1.0))


def _cutout(x: Tensor, gen: torch.Generator, shard: Shard = ONE, ratio: float = 0.5) -> Tensor:
    """Zero (grey 0 in [-1, 1]) a square of ratio x side at a random place in each image."""
    n, _, h, w = x.shape
    ch, cw = max(1, int(h * ratio + 0.5)), max(1, int(w * ratio + 0.5))
    cy = _randint(0, h, n, gen, x.device, shard)
    cx = _randint(0, w, n, gen, x.device, shard)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    hole = ((ys - cy).abs() <= ch // 2) & ((xs - cx).abs() <= cw // 2)  # (N, H, W)
    return x * (~hole).unsqueeze(1).to(x.dtype)


OPS = (_colour, _translation, _cutout)


class Augment:
    """``mode``: none | diffaugment | ada. ``__call__(x)`` augments a batch."""

    def __init__(
        self, mode: str, device: torch.device, seed: int, batch_size: int, shard: Shard = ONE
    ) -> None:
        self.mode, self.batch_size, self.shard = mode, batch_size, shard
        self.gen = torch.Generator(device=device).manual_seed(seed + 7)
        self.p = 1.0 if mode == "diffaugment" else 0.0
        self.signs: list[Tensor] = []  # sign(D(real)) means since the last adjustment

    @property
    def active(self) -> bool:
        return self.mode != "none"

    def __call__(self, x: Tensor) -> Tensor:
        for op in OPS:
            if self.p >= 1.0:
                x = op(x, self.gen, self.shard)
            elif self.p > 0.0:  # ada: each image gets the operation with probability p
                keep = _rand(len(x), self.gen, x.device, self.shard) < self.p
                x = torch.where(keep, op(x, self.gen, self.shard), x)
        return x

    def observe(self, r_t: Tensor) -> None:
        """ada (the trainer calls it then only): record one step's overfitting signal
        ``r_t`` = E[sign(D(real))] (a 0-d tensor in [-1, 1], already the mean of the signs:
        the variant's ``d_real_sign`` stat, averaged over ranks); every ``ADA_INTERVAL``
        steps p moves up if the interval's mean r_t is above ``ADA_TARGET``, else down."""
        self.signs.append(r_t.detach().float().reshape(()))
        if len(self.signs) >= ADA_INTERVAL:
            r_t = float(torch.stack(self.signs).mean())  # one host sync per interval
            step = len(self.signs) * self.batch_size / (ADA_KIMG * 1000)
            self.p = min(1.0, max(0.0, self.p + step * (1 if r_t > ADA_TARGET else -1)))
            self.signs.clear()

    def state_dict(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state(), "p": self.p, "signs": [float(s) for s in self.signs]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gen.set_state(state["gen"])
        self.p = float(state["p"])
        self.signs = [torch.tensor(s) for s in state["signs"]]


class AugmentedD(nn.Module):
    """The discriminator behind the augmentation: D(augment(x), labels)."""

    def __init__(self, D: nn.Module, augment: Augment) -> None:
        super().__init__()
        self.D, self.augment = D, augment

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.D(self.augment(x), labels)
