"""The variant contract: what every GAN family gives the one training loop.

A variant builds a generator and a discriminator (or critic) from a ``ModelSpec`` and
says how to score one discriminator step and one generator step. The loop in
``ganforge.train`` never branches on the family. Shapes throughout:

    z       float (N, latent_dim)        labels  int64 (N,) or None (unconditional)
    images  float (N, C, H, W) in [-1, 1]
    G(z, labels) -> images               D(images, labels) -> float (N,) logits / scores
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from ganforge import losses


@dataclass(frozen=True)
class ModelSpec:
    """Constructor arguments shared by every family; saved in checkpoints."""

    latent_dim: int
    image_size: int
    channels: int
    num_classes: int
    g_width: int
    d_width: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class Variant:
    """Subclass, set ``name`` and the two model classes, and define the two step losses."""

    name: ClassVar[str]
    conditional: ClassVar[bool] = False
    generator_cls: ClassVar[type[nn.Module]]
    discriminator_cls: ClassVar[type[nn.Module]]

    def __init__(
        self, spec: ModelSpec, *, n_critic: int = 1, gp_lambda: float = 10.0, r1_gamma: float = 0.0
    ) -> None:
        self.spec = spec
        self.n_critic = n_critic
        self.gp_lambda = gp_lambda
        self.r1_gamma = r1_gamma

    @property
    def d_steps(self) -> int:
        """Discriminator updates per generator update."""
        return 1

    def generator_kwargs(self) -> dict[str, int]:
        kw = self.spec.to_dict()
        kw.pop("d_width")
        if not self.conditional:
            kw.pop("num_classes")
        return kw

    def discriminator_kwargs(self) -> dict[str, int]:
        kw = self.spec.to_dict()
        kw.pop("g_width")
        kw.pop("latent_dim")
        if not self.conditional:
            kw.pop("num_classes")
        return kw

    def make_generator(self) -> nn.Module:
        return self.generator_cls(**self.generator_kwargs())

    def make_discriminator(self) -> nn.Module:
        return self.discriminator_cls(**self.discriminator_kwargs())

    def d_loss(
        self, D: nn.Module, real: Tensor, fake: Tensor, labels: Tensor | None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss for one discriminator step (``fake`` is detached) and detached stats to log."""
        raise NotImplementedError

    def g_loss(
        self, D: nn.Module, fake: Tensor, labels: Tensor | None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError


def bce_d_loss(
    variant: Variant, D: nn.Module, real: Tensor, fake: Tensor, labels: Tensor | None
) -> tuple[Tensor, dict[str, Tensor]]:
    """The minimax discriminator step shared by mlp, dcgan and cdcgan, plus R1 if r1_gamma > 0."""
    real_logits, fake_logits = D(real, labels), D(fake, labels)
    loss = losses.d_loss_bce(real_logits, fake_logits)
    stats = {
        "d_real": real_logits.detach().sigmoid().mean(),
        "d_fake": fake_logits.detach().sigmoid().mean(),
    }
    if variant.r1_gamma > 0:
        r1 = losses.r1_penalty(lambda x: D(x, labels), real)
        loss = loss + 0.5 * variant.r1_gamma * r1
        stats["r1"] = r1.detach()
    return loss, stats


def init_dcgan_weights(module: nn.Module) -> None:
    """DCGAN paper init: conv weights N(0, 0.02), norm scales N(1, 0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)


def sample_latent(
    n: int, latent_dim: int, device: torch.device | str, generator: torch.Generator | None = None
) -> Tensor:
    return torch.randn(n, latent_dim, device=device, generator=generator)
