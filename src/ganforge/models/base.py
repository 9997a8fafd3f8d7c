"""The variant contract: what every GAN family gives the one training loop.

A variant is one module in this package holding one ``Variant`` subclass, which says
everything the rest of ganforge needs to know about the family:

- ``name`` (the ``train.model`` value), ``conditional`` (takes class labels),
  ``image_sizes`` (the sides it can build);
- ``settings``: its own ``train.*`` keys with type, default and range (pydantic
  ``Field``s); ``ganforge.config`` builds ``TrainParams`` from the registry, so a new key
  is declared here and nowhere else;
- how to build G and D from a ``ModelSpec`` and the game: ``d_loss`` and ``g_loss``, pure
  functions of the outputs (from ``ganforge.models.losses``);
- ``regulariser``: a penalty added to the discriminator's loss, independent of the game
  (``ganforge.models.regularisers``: lazy R1, the gradient penalty), with its own keys.

Stats conventions (what the history, MLflow and ``train.augment=ada`` read):

- ``d_loss`` and ``g_loss`` return ``(loss, stats)``: stats are detached 0-d tensors on the
  device, one row of the history per step (no host sync is made to get them);
- the history's ``d_loss`` is the game's loss alone (``d_step`` records it before adding the
  penalty, so a penalty applied every k-th step does not make the curve a saw); a
  regulariser logs its penalty under its own name;
- a stat that is measured on some steps only (lazy R1) is NaN on the others and is named in
  the regulariser's ``sparse_stats``; any other non-finite stat stops training as divergence;
- ``d_real_sign`` = E[sign(D(real))] of the step: the variant sets ``ada_signal = True`` when
  its outputs' sign means real/fake (logits, hinge scores), and ``ada`` adapts its
  probability to this number (a Wasserstein critic's sign means nothing, so no ada there).

The loop in ``ganforge.engine.trainer`` never branches on the family. Shapes throughout:

    z       float (N, latent_dim)        labels  int64 (N,) or None (unconditional)
    images  float (N, C, H, W) in [-1, 1]
    G(z, labels) -> images               D(images, labels) -> float (N,) logits / scores
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from ganforge.models import losses
from ganforge.models.regularisers import LazyR1, Regulariser, Setting

# Image sides the transposed-conv families can build (dcgan.conv_plan); the MLP takes any.
CONV_IMAGE_SIZES = (16, 28, 32, 64)


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
    regulariser: ClassVar[Regulariser | None] = None
    generator_cls: ClassVar[type[nn.Module]]
    discriminator_cls: ClassVar[type[nn.Module]]

    def __init__(self, spec: ModelSpec, settings: Mapping[str, Any] | None = None) -> None:
        """``settings``: values for this variant's own keys (defaults where absent)."""
        self.spec = spec
        given = dict(settings or {})
        own = self.all_settings()
        self.config = {k: given.get(k, field.default) for k, (_, field) in own.items()}

    @classmethod
    def all_settings(cls) -> dict[str, Setting]:
        """The ``train.*`` keys of this family: its own and its regulariser's."""
        return {**cls.settings, **(cls.regulariser.settings if cls.regulariser else {})}

    @property
    def sparse_stats(self) -> tuple[str, ...]:
        """Stats that may be NaN (measured on some steps only)."""
        return self.regulariser.sparse_stats if self.regulariser else ()

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

    # whether d_loss reports "d_real_sign" = E[sign(D(real))] (see the module docstring)
    ada_signal: ClassVar[bool] = False

    def d_loss(
        self, D: nn.Module, real: Tensor, fake: Tensor, labels: Tensor | None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The game's loss for one discriminator step (``fake`` is detached) and its stats."""
        raise NotImplementedError

    def g_loss(
        self, D: nn.Module, fake: Tensor, labels: Tensor | None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def d_step(
        self, D: nn.Module, real: Tensor, fake: Tensor, labels: Tensor | None, step: int = 0
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """What the trainer minimises for one discriminator step: the game's loss plus the
        regulariser's penalty; ``step``: generator updates so far (lazy regularisers)."""
        loss, stats = self.d_loss(D, real, fake, labels)
        stats = {"d_loss": loss.detach(), **stats}
        if self.regulariser is not None:
            penalty, extra = self.regulariser(self.config, D, real, fake, labels, step)
            if penalty is not None:
                loss = loss + penalty
            stats.update(extra)
        return loss, stats


class BCEVariant(Variant):
    """The original GAN game (mlp, dcgan, cdcgan): minimax discriminator loss with the
    non-saturating generator loss, regularised by lazy R1 (``train.r1_gamma``, ``r1_every``)."""

    regulariser = LazyR1()
    ada_signal = True

    def d_loss(self, D, real, fake, labels):
        real_logits, fake_logits = D(real, labels), D(fake, labels)
        return losses.d_loss_bce(real_logits, fake_logits), {
            "d_real": real_logits.detach().sigmoid().mean(),
            "d_fake": fake_logits.detach().sigmoid().mean(),
            "d_real_sign": real_logits.detach().sign().mean(),
        }

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
