"""The variant contract: what every GAN family gives the one training loop.

A variant is one module in this package holding one ``Variant`` subclass, which says
everything the rest of ganforge needs to know about the family:

- ``name`` (the ``train.model`` value), ``conditional`` (takes class labels),
  ``image_sizes`` (the sides it can build);
- ``settings``: its own ``train.*`` keys with type, default and range (pydantic
  ``Field``s); ``ganforge.config`` builds ``TrainParams`` from the registry, so a new key
  is declared here and nowhere else;
- how to build G and D from a ``ModelSpec`` and score one discriminator step and one
  generator step (pure functions of the outputs, from ``ganforge.models.losses``).

The loop in ``ganforge.engine.trainer`` never branches on the family. Shapes throughout:

    z       float (N, latent_dim)        labels  int64 (N,) or None (unconditional)
    images  float (N, C, H, W) in [-1, 1]
    G(z, labels) -> images               D(images, labels) -> float (N,) logits / scores
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from ganforge.models import losses

# Image sides the transposed-conv families can build (dcgan.conv_plan); the MLP takes any.
CONV_IMAGE_SIZES = (16, 28, 32, 64)

# A setting is (type, pydantic Field with default, range and description).
Setting = tuple[Any, Any]

# Shared by the BCE families (mlp, dcgan, cdcgan): one definition, so they cannot drift.
R1_GAMMA: Setting = (
    float,
    Field(1.0, ge=0.0, description="R1 penalty weight on real-data gradients; 0 = off"),
)
R1_EVERY: Setting = (
    int,
    Field(
        16, ge=1, le=1000,
        description="lazy R1 (StyleGAN2): the penalty at every k-th step only, weighted by k",
    ),
)  # fmt: skip


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
    """Subclass, set the class attributes below, and define the two step losses."""

    name: ClassVar[str]
    conditional: ClassVar[bool] = False
    image_sizes: ClassVar[tuple[int, ...]] = CONV_IMAGE_SIZES
    settings: ClassVar[Mapping[str, Setting]] = {}
    generator_cls: ClassVar[type[nn.Module]]
    discriminator_cls: ClassVar[type[nn.Module]]

    def __init__(self, spec: ModelSpec, settings: Mapping[str, Any] | None = None) -> None:
        """``settings``: values for this variant's own keys (defaults where absent)."""
        self.spec = spec
        given = dict(settings or {})
        self.config = {k: given.get(k, field.default) for k, (_, field) in self.settings.items()}

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

    # stats a step may leave out (NaN in the history): regularisers applied every k-th step
    sparse_stats: ClassVar[tuple[str, ...]] = ()
    # whether d_loss reports "d_real_sign" = E[sign(D(real))], the overfitting signal of
    # train.augment=ada (a logit's sign means real/fake; a Wasserstein critic's does not)
    ada_signal: ClassVar[bool] = False

    def d_loss(
        self, D: nn.Module, real: Tensor, fake: Tensor, labels: Tensor | None, step: int = 0
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss for one discriminator step (``fake`` is detached) and detached stats to log
        (a ``d_loss`` stat replaces the loss in the history); ``step``: the generator
        updates so far (for regularisers applied every k-th step)."""
        raise NotImplementedError

    def g_loss(
        self, D: nn.Module, fake: Tensor, labels: Tensor | None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError


class BCEVariant(Variant):
    """The original GAN game (mlp, dcgan, cdcgan): minimax discriminator loss with the
    non-saturating generator loss, plus the R1 penalty when ``train.r1_gamma`` > 0, at every
    ``train.r1_every``-th step with weight r1_gamma * r1_every (lazy regularisation,
    Karras et al. 2020: the same expected penalty for a fraction of the double backward)."""

    settings = {"r1_gamma": R1_GAMMA, "r1_every": R1_EVERY}
    sparse_stats = ("r1",)
    ada_signal = True

    def d_loss(self, D, real, fake, labels, step=0):
        real_logits, fake_logits = D(real, labels), D(fake, labels)
        loss = losses.d_loss_bce(real_logits, fake_logits)
        stats = {
            # the logged d_loss is the game's loss alone (2 ln 2 at equilibrium): with lazy R1
            # the penalty lands on every k-th step only and would make the curve a saw
            "d_loss": loss.detach(),
            "d_real": real_logits.detach().sigmoid().mean(),
            "d_fake": fake_logits.detach().sigmoid().mean(),
            "d_real_sign": real_logits.detach().sign().mean(),
        }
        r1_gamma, every = self.config["r1_gamma"], self.config["r1_every"]
        if r1_gamma > 0 and step % every == 0:
            r1 = losses.r1_penalty(lambda x: D(x, labels), real)
            loss = loss + 0.5 * r1_gamma * every * r1
            stats["r1"] = r1.detach()
        elif r1_gamma > 0:  # not measured at this step
            stats["r1"] = torch.full((), float("nan"), device=real.device)
        return loss, stats

    def g_loss(self, D, fake, labels):
        return losses.g_loss_nonsaturating(D(fake, labels)), {}


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
