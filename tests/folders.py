"""Small synthetic image folders, as a user's own data would look: random photo patches.

The patches are crops of scikit-learn's two bundled photos (``china.jpg``: buildings,
``flower.jpg``: a flower), so they are real colour photographs and need no download.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def photo_patches(
    root: Path,
    classes: tuple[str, ...] = ("building", "flower"),
    per_class: int = 150,
    size: int = 32,
    grey: bool = False,
    seed: int = 0,
) -> Path:
    """``root/<class>/<i>.png``: ``per_class`` random ``size``-px crops (from 48-96 px windows,
    resized) of the class's photo. Returns ``root``."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = dict(zip(("building", "flower"), load_sample_images().images, strict=True))
    rng = np.random.default_rng(seed)
    for name in classes:
        photo = photos[name]  # (427, 640, 3) uint8
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            side = int(rng.integers(48, 97))
            top = int(rng.integers(0, photo.shape[0] - side))
            left = int(rng.integers(0, photo.shape[1] - side))
            im = Image.fromarray(photo[top : top + side, left : left + side]).resize((size, size))
            (im.convert("L") if grey else im).save(root / name / f"{i}.png")
    return root
