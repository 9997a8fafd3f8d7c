"""DCGAN (Radford et al. 2015): transposed-conv generator, strided-conv discriminator.

Works at 16, 28, 32 and 64 px and any channel count. The first generator layer makes a
``base`` x ``base`` map (7 for 28 px, else 4) and each stride-2 layer doubles it, so at
64 px with ``g_width=64, latent_dim=100`` this is exactly the classic 64 px DCGAN:

    z (N, 100, 1, 1) -> (N, 512, 4, 4) -> (N, 256, 8, 8) -> (N, 128, 16, 16)
      -> (N, 64, 32, 32) -> (N, C, 64, 64)

The discriminator mirrors it down to (N, 8w, 4, 4) and a ``base`` x ``base`` conv gives
one logit per image. ``cdcgan``, ``wgan-gp`` and ``sngan`` reuse these modules.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ganforge.models.base import BCEVariant, init_dcgan_weights


def conv_plan(image_size: int) -> tuple[int, int]:
    """(base side, number of stride-2 layers):
    16 -> (4, 2), 28 -> (7, 2), 32 -> (4, 3), 64 -> (4, 4)."""
    base = 7 if image_size % 7 == 0 else 4
    n_up = int(math.log2(image_size // base))
    if base * 2**n_up != image_size or n_up < 1:
        raise ValueError(f"image_size {image_size} is not base*2^k with base 4 or 7")
    return base, n_up


class DCGANGenerator(nn.Module):
    def __init__(
        self,
        latent_dim: int,
        image_size: int,
        channels: int,
        g_width: int,
        num_classes: int = 0,
        embed_dim: int = 32,
    ) -> None:
        super().__init__()
        base, n_up = conv_plan(image_size)
        self.latent_dim, self.num_classes = latent_dim, num_classes
        self.embed = nn.Embedding(num_classes, embed_dim) if num_classes else None
        in_dim = latent_dim + (embed_dim if num_classes else 0)
        c = g_width * 2 ** (n_up - 1)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(in_dim, c, base, 1, 0, bias=False),  # (N, c, base, base)
            nn.BatchNorm2d(c),
            nn.ReLU(inplace=True),
        ]
        for _ in range(n_up - 1):  # each: (N, c, s, s) -> (N, c/2, 2s, 2s)
            layers += [
                nn.ConvTranspose2d(c, c // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(c // 2),
                nn.ReLU(inplace=True),
            ]
            c //= 2
        layers += [
            nn.ConvTranspose2d(c, channels, 4, 2, 1, bias=False),
            nn.Tanh(),
        ]  # (N, C, H, W) in [-1, 1]
        self.net = nn.Sequential(*layers)
        init_dcgan_weights(self)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        if self.embed is not None:
            z = torch.cat([z, self.embed(labels).to(z.dtype)], dim=1)  # (N, latent + embed)
        return self.net(z[:, :, None, None])  # (N, latent[, +embed], 1, 1) -> (N, C, H, W)


class DCGANDiscriminator(nn.Module):
    """Strided convs with LeakyReLU(0.2); ``norm`` batch (DCGAN), layer (WGAN-GP critic) or none.

    With ``num_classes`` > 0 it is a projection discriminator (Miyato & Koyama 2018):
    logit = head(h) + <embed(y), sum-pooled h>.
    """

    def __init__(
        self,
        image_size: int,
        channels: int,
        d_width: int,
        num_classes: int = 0,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        base, n_down = conv_plan(image_size)
        c = d_width
        layers: list[nn.Module] = [
            nn.Conv2d(channels, c, 4, 2, 1, bias=False),
            nn.LeakyReLU(0.2, inplace=True),
        ]  # (N, w, H/2, W/2)
        for _ in range(n_down - 1):  # each: (N, c, s, s) -> (N, 2c, s/2, s/2)
            layers += [
                nn.Conv2d(c, 2 * c, 4, 2, 1, bias=norm == "none"),
                _norm(norm, 2 * c),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            c *= 2
        self.features = nn.Sequential(*layers)  # (N, w * 2^(n-1), base, base)
        self.head = nn.Conv2d(c, 1, base, 1, 0, bias=False)  # (N, 1, 1, 1)
        self.embed = nn.Embedding(num_classes, c) if num_classes else None
        init_dcgan_weights(self)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        h = self.features(x)
        out = self.head(h).flatten()  # (N,)
        if self.embed is not None:
            out = out + (self.embed(labels).to(h.dtype) * h.sum(dim=(2, 3))).sum(dim=1)
        return out


def _norm(kind: str, c: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(c)
    if kind == "layer":  # per-sample normalisation: keeps the gradient penalty per-sample
        return nn.GroupNorm(1, c)
    return nn.Identity()


class DCGAN(BCEVariant):
    name = "dcgan"
    generator_cls = DCGANGenerator
    discriminator_cls = DCGANDiscriminator
