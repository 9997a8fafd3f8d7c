"""Class-conditional DCGAN: ask the generator for a class.

The generator concatenates a learned label embedding (N, 32) to z; the discriminator is
the DCGAN discriminator with a projection term (Miyato & Koyama 2018). Fakes are drawn
with the real batch's labels, so classes are seen at their data frequency.
"""

from __future__ import annotations

from ganforge.models.dcgan import DCGAN, DCGANDiscriminator, DCGANGenerator


class CDCGAN(DCGAN):
    name = "cdcgan"
    conditional = True
    generator_cls = DCGANGenerator
    discriminator_cls = DCGANDiscriminator
