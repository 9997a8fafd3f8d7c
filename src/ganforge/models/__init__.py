"""The GAN family. ``VARIANTS`` maps ``train.model`` names to variants; adding a
variant is adding one module and one line here.
"""

from __future__ import annotations

from torch import nn

from ganforge.models.base import ModelSpec, Variant
from ganforge.models.cdcgan import CDCGAN
from ganforge.models.dcgan import DCGAN
from ganforge.models.mlp import MLPGAN
from ganforge.models.wgan_gp import WGANGP

VARIANTS: dict[str, type[Variant]] = {v.name: v for v in (MLPGAN, DCGAN, WGANGP, CDCGAN)}


def make_variant(
    family: str,
    spec: ModelSpec,
    *,
    n_critic: int = 1,
    gp_lambda: float = 10.0,
    r1_gamma: float = 0.0,
) -> Variant:
    if family not in VARIANTS:
        raise KeyError(f"unknown model family {family!r} (known: {', '.join(VARIANTS)})")
    return VARIANTS[family](spec, n_critic=n_critic, gp_lambda=gp_lambda, r1_gamma=r1_gamma)


def build_generator(family: str, kwargs: dict) -> nn.Module:
    """Rebuild a generator from a checkpoint's (family, constructor kwargs)."""
    if family not in VARIANTS:
        raise KeyError(f"unknown model family {family!r} (known: {', '.join(VARIANTS)})")
    return VARIANTS[family].generator_cls(**kwargs)


__all__ = ["VARIANTS", "ModelSpec", "Variant", "build_generator", "make_variant"]
