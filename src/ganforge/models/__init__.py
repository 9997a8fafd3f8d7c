"""The GAN family: one module per variant, one registry (``registry.VARIANTS``) mapping
``train.model`` names to them; the one source of what a family is (name, image sizes,
conditional or not, its own ``train.*`` settings).

Adding a variant is adding one module with a ``Variant`` subclass (``base.py`` says what
it declares), its loss functions in ``losses.py`` if new, and one entry in
``registry.py``. Config validation, training, evaluation, export and serving read
everything else from the registry.
"""

from __future__ import annotations

from ganforge.models.base import ModelSpec, Variant
from ganforge.models.generator_file import GENERATOR_FORMAT, load_generator, save_generator
from ganforge.models.registry import (
    VARIANTS,
    all_settings,
    build_generator,
    make_variant,
    variant_class,
)

__all__ = [
    "GENERATOR_FORMAT",
    "VARIANTS",
    "ModelSpec",
    "Variant",
    "all_settings",
    "build_generator",
    "load_generator",
    "make_variant",
    "save_generator",
    "variant_class",
]
