"""WGAN-GP (Gulrajani et al. 2017): the DCGAN shapes with a critic trained on the
Wasserstein loss plus a gradient penalty (``train.gp_lambda``, 10 in the paper), and
``train.n_critic`` critic updates per generator update.

The critic has no BatchNorm (it would couple the samples the penalty treats one by
one) and no sigmoid: it uses per-sample layer norm and outputs an unbounded score.
"""

from __future__ import annotations

from functools import partial

from pydantic import Field

from ganforge.models import losses
from ganforge.models.base import Variant
from ganforge.models.dcgan import DCGANDiscriminator, DCGANGenerator
from ganforge.models.regularisers import GradientPenalty


class WGANGP(Variant):
    name = "wgan-gp"
    generator_cls = DCGANGenerator
    discriminator_cls = partial(DCGANDiscriminator, norm="layer")
    settings = {
        "n_critic": (
            int,
            Field(5, ge=1, le=100, description="critic updates per generator update"),
        ),
    }
    regulariser = GradientPenalty()

    @property
    def d_steps(self) -> int:
        return self.config["n_critic"]

    def d_loss(self, D, real, fake, labels):
        w_loss = losses.d_loss_wasserstein(D(real, labels), D(fake, labels))
        return w_loss, {"wasserstein": -w_loss.detach()}

    def g_loss(self, D, fake, labels):
        return losses.g_loss_wasserstein(D(fake, labels)), {}
