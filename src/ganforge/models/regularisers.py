"""Discriminator regularisers: a penalty added to a game's discriminator loss, declared once
and usable by any variant (``Variant.regulariser``), whatever its game.

A regulariser declares its own ``train.*`` keys (``settings``, as a variant does) and is
called once per discriminator step after the game's loss:

    penalty, stats = regulariser(config, D, real, fake, labels, step)

``penalty`` is a 0-d tensor to add to the loss, or None when it does not apply at this step;
``stats`` are detached 0-d tensors for the history. A stat named in ``sparse_stats`` may be
NaN on the steps it is not measured (the loss log accepts that for those names only).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from ganforge.models import losses

# A setting is (type, pydantic Field with default, range and description).
Setting = tuple[Any, Any]


class Regulariser:
    settings: ClassVar[Mapping[str, Setting]] = {}
    sparse_stats: ClassVar[tuple[str, ...]] = ()

    def __call__(
        self,
        config: Mapping[str, Any],
        D: nn.Module,
        real: Tensor,
        fake: Tensor,
        labels: Tensor | None,
        step: int,
    ) -> tuple[Tensor | None, dict[str, Tensor]]:
        raise NotImplementedError


class LazyR1(Regulariser):
    """R1 on real data (Mescheder et al. 2018), lazily (Karras et al. 2020): the penalty at
    every ``train.r1_every``-th step only, weighted by r1_gamma / 2 * r1_every, so the
    expected penalty is that of R1 on every step at a fraction of the double backward."""

    settings = {
        "r1_gamma": (
            float,
            Field(1.0, ge=0.0, description="R1 penalty weight on real-data gradients; 0 = off"),
        ),
        "r1_every": (
            int,
            Field(16, ge=1, le=1000, description="lazy R1: the penalty at every k-th step only"),
        ),
    }
    sparse_stats = ("r1",)

    def __call__(self, config, D, real, fake, labels, step):
        gamma, every = config["r1_gamma"], config["r1_every"]
        if gamma <= 0:
            return None, {}
        if step % every:  # not measured at this step
            return None, {"r1": torch.full((), float("nan"), device=real.device)}
        r1 = losses.r1_penalty(lambda x: D(x, labels), real)
        return 0.5 * gamma * every * r1, {"r1": r1.detach()}


class GradientPenalty(Regulariser):
    """WGAN-GP's penalty (Gulrajani et al. 2017) on random real/fake interpolates, every
    step, weighted by ``train.gp_lambda`` (10 in the paper)."""

    settings = {"gp_lambda": (float, Field(10.0, ge=0.0, description="gradient-penalty weight"))}

    def __call__(self, config, D, real, fake, labels, step):
        gp = losses.gradient_penalty(lambda x: D(x, labels), real, fake)
        return config["gp_lambda"] * gp, {"gp": gp.detach()}
