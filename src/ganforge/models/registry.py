"""The registry: ``train.model`` name -> variant class. Adding a variant adds one line here."""

from __future__ import annotations

from typing import Any

from torch import nn

from ganforge.models.base import ModelSpec, Setting, Variant
from ganforge.models.cdcgan import CDCGAN
from ganforge.models.dcgan import DCGAN
from ganforge.models.mlp import MLPGAN
from ganforge.models.sngan import SNGAN
from ganforge.models.wgan_gp import WGANGP

VARIANTS: dict[str, type[Variant]] = {v.name: v for v in (MLPGAN, DCGAN, WGANGP, CDCGAN, SNGAN)}


def variant_class(family: str) -> type[Variant]:
    if family not in VARIANTS:
        raise KeyError(f"unknown model family {family!r} (known: {', '.join(VARIANTS)})")
    return VARIANTS[family]


def all_settings() -> dict[str, Setting]:
    """Every variant's own ``train.*`` keys; a key two variants share must be one definition."""
    merged: dict[str, Setting] = {}
    for v in VARIANTS.values():
        for key, setting in v.all_settings().items():
            if merged.setdefault(key, setting) is not setting:
                raise TypeError(f"train.{key} is declared differently by two variants")
    return merged


def make_variant(family: str, spec: ModelSpec, settings: dict[str, Any] | None = None) -> Variant:
    """The variant for ``family``; ``settings`` may hold any train.* keys, it takes its own."""
    return variant_class(family)(spec, settings)


def build_generator(family: str, kwargs: dict) -> nn.Module:
    """Rebuild a generator from a checkpoint's (family, constructor kwargs)."""
    return variant_class(family).generator_cls(**kwargs)
