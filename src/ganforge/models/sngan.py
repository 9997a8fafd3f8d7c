"""SNGAN (Miyato et al. 2018): spectral normalisation in the discriminator, hinge loss.

Generator: the DCGAN generator. Discriminator: the DCGAN shapes with every conv (and the
projection embedding) wrapped in spectral normalisation and no BatchNorm, so each layer is
1-Lipschitz by construction instead of by a penalty: no extra backward pass per step
(WGAN-GP's cost), and stable with the hinge loss. One power iteration per forward (the
paper's setting); its vector ``u`` is a buffer, so checkpoints resume it exactly.

    D: x (N, C, H, W) -> SN conv4 s2 (N, w, H/2, W/2) -> ... -> (N, 8w, base, base)
       -> SN conv base x base -> (N,) scores
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from ganforge.models import losses
from ganforge.models.base import Variant
from ganforge.models.dcgan import DCGANDiscriminator, DCGANGenerator


class SNDiscriminator(DCGANDiscriminator):
    def __init__(self, image_size: int, channels: int, d_width: int, num_classes: int = 0) -> None:
        super().__init__(image_size, channels, d_width, num_classes, norm="none")
        for module in list(self.modules()):
            if isinstance(module, (nn.Conv2d, nn.Embedding)):
                spectral_norm(module)


class SNGAN(Variant):
    name = "sngan"
    generator_cls = DCGANGenerator
    discriminator_cls = SNDiscriminator
    ada_signal = True

    def d_loss(self, D, real, fake, labels):
        real_s, fake_s = D(real, labels), D(fake, labels)
        return losses.d_loss_hinge(real_s, fake_s), {
            "d_real": real_s.detach().mean(),
            "d_fake": fake_s.detach().mean(),
            "d_real_sign": real_s.detach().sign().mean(),
        }

    def g_loss(self, D, fake, labels):
        return losses.g_loss_hinge(D(fake, labels)), {}
