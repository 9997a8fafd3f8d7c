"""Stage ``prepare``: read a source dataset, resize it, split it, write it atomically.

    ganforge prepare [--params params.yaml] [--set prepare.source=mnist-idx] [--out data/prepared]

Output directory (replaced as a whole, never half-written)::

    train.npz      images uint8 (N, C, H, W), labels int64 (N,)
    holdout.npz    same layout; the held-out split for evaluation (prepare.holdout_fraction)
    manifest.json  source, image size, channels, class names, counts per class, sha256 per file

``ganforge.core.dataset.load_split`` reads a split back and checks it against the
manifest's checksum, so a file changed or damaged after ``prepare`` is never used silently.
The readers and their registry are ``ganforge.core.sources`` (``SOURCES``).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from ganforge.config import PrepareParams
from ganforge.core.dataset import FORMAT, MANIFEST, SPLITS
from ganforge.core.files import atomic_dir, claim_dir, sha256_bytes
from ganforge.core.sources import source
from ganforge.errors import DataError

# --------------------------------------------------------------------------- transforms


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 (N, C, h, w) -> uint8 (N, C, size, size), antialiased bilinear (identity if same)."""
    if images.shape[-2:] == (size, size):
        return images
    import torch
    import torch.nn.functional as F

    out = []
    for chunk in torch.from_numpy(images).split(4096):
        x = F.interpolate(
            chunk.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
        out.append(x.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out).numpy()


def to_channels(images: np.ndarray, channels: str | int) -> np.ndarray:
    c = images.shape[1]
    if channels == "auto" or channels == c:
        return images
    if channels == 3 and c == 1:
        return np.repeat(images, 3, axis=1)
    # RGB -> luminance (ITU-R BT.601)
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)[None, :, None, None]
    return np.rint((images.astype(np.float32) * weights).sum(1, keepdims=True)).astype(np.uint8)


def split_indices(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (when every class has >= 2 images) random split -> (train_idx, holdout_idx)."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    counts = np.bincount(labels)
    stratify = labels if counts[counts > 0].min() >= 2 else None
    n_hold = max(1, round(fraction * len(labels)))
    if stratify is not None and n_hold < (counts > 0).sum():
        stratify = None  # too few held-out images to hold one of each class
    train_idx, hold_idx = train_test_split(
        idx, test_size=n_hold, random_state=seed, stratify=stratify
    )
    return np.sort(train_idx), np.sort(hold_idx)


# --------------------------------------------------------------------------- stage


def _npz_bytes(images: np.ndarray, labels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, images=images, labels=labels)
    return buf.getvalue()


def prepare(params: PrepareParams, out_dir: str | Path) -> dict[str, Any]:
    """Build the prepared dataset in ``out_dir`` and return its manifest."""
    out_dir = claim_dir(out_dir, "prepare")  # before any work: never replace a user's folder
    ds = source(params.source).load(params)  # core/sources.py: SOURCES
    if len(ds.images) < 2:
        raise DataError(
            f"{params.path or params.source}: only {len(ds.images)} image(s); need at least 2"
        )
    images, labels = ds.images, ds.labels
    if params.max_images and params.max_images < len(images):
        keep, _ = split_indices(labels, 1.0 - params.max_images / len(images), params.seed)
        images, labels = images[keep], labels[keep]
    images = to_channels(resize(images, params.image_size), params.channels)
    train_idx, hold_idx = split_indices(labels, params.holdout_fraction, params.seed)

    num_classes = len(ds.class_names)
    splits: dict[str, Any] = {}
    blobs = {}
    for name, idx in (("train", train_idx), ("holdout", hold_idx)):
        imgs, lbls = np.ascontiguousarray(images[idx]), labels[idx]
        blob = _npz_bytes(imgs, lbls)
        blobs[name] = blob
        per_class = np.bincount(lbls, minlength=num_classes)
        splits[name] = {
            "file": f"{name}.npz",
            "count": int(len(idx)),
            "per_class": {ds.class_names[i]: int(n) for i, n in enumerate(per_class)},
            "sha256": sha256_bytes(blob),
        }
    manifest = {
        "format": FORMAT,
        "name": params.name,
        "source": params.source,
        "path": params.path,
        "image_size": params.image_size,
        "channels": int(images.shape[1]),
        "num_classes": num_classes,
        "class_names": ds.class_names,
        "splits": splits,
        "content_sha256": sha256_bytes(*(splits[s]["sha256"].encode() for s in SPLITS)),
        "params": params.model_dump(),
    }
    # recorded, so later stages need not derive it (nor depend on the readers)
    manifest["name"] = params.name or source(params.source).name(manifest)
    with atomic_dir(out_dir, owner="prepare") as tmp:
        for name, blob in blobs.items():
            (tmp / f"{name}.npz").write_bytes(blob)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
