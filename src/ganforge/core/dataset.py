"""Reading a prepared dataset back (written by ``ganforge prepare``), verified.

    data/prepared/{train,holdout}.npz   images uint8 (N, C, H, W), labels int64 (N,)
    data/prepared/manifest.json         source, size, channels, classes, sha256 per file

``load_split`` checks the file against the manifest's sha256, so a file changed or
damaged after ``prepare`` is never used silently.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ganforge.core.files import sha256_bytes
from ganforge.errors import DataError

FORMAT = "ganforge.prepared/1"
SPLITS = ("train", "holdout")
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class PreparedSplit:
    images: np.ndarray  # uint8 (N, C, H, W)
    labels: np.ndarray  # int64 (N,)
    manifest: dict[str, Any]


def dataset_name(manifest: dict[str, Any]) -> str:
    """The dataset's short name (experiment and registered-model names use it): ``prepare.name``,
    else derived from the source. The name is a label; the data's identity is its content
    (``content_sha256``), which promotion compares before it compares scores."""
    if manifest.get("name"):
        return manifest["name"]
    source = manifest["source"]
    if source == "mnist-idx":
        return "mnist"
    if source == "torchvision":
        return manifest["params"]["torchvision_dataset"].lower()
    if source == "imagefolder":
        folder = Path(manifest["path"]).name.lower()
        return (
            "".join(c if c.isalnum() or c in "._-" else "-" for c in folder).strip("-._")
            or "images"
        )
    return source


def read_manifest(data_dir: str | Path) -> dict[str, Any]:
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise DataError(f"{path}: not found; run `ganforge prepare` first")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: corrupt manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path}: not a ganforge prepared-data manifest (format {FORMAT})")
    return manifest


def load_split(data_dir: str | Path, split: str = "train") -> PreparedSplit:
    """Read one split, verified against the manifest's sha256."""
    manifest = read_manifest(data_dir)
    if split not in manifest["splits"]:
        raise DataError(f"{data_dir}: no split '{split}' (have: {', '.join(manifest['splits'])})")
    entry = manifest["splits"][split]
    path = Path(data_dir) / entry["file"]
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror}); rerun `ganforge prepare`") from None
    if sha256_bytes(blob) != entry["sha256"]:
        raise DataError(
            f"{path}: checksum mismatch with manifest.json (corrupt or changed); rerun `ganforge prepare`"
        )
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        images, labels = z["images"], z["labels"]
    size, ch = manifest["image_size"], manifest["channels"]
    if (
        images.dtype != np.uint8
        or images.shape[1:] != (ch, size, size)
        or len(labels) != len(images)
    ):
        raise DataError(f"{path}: arrays do not match the manifest ({images.dtype} {images.shape})")
    return PreparedSplit(images, labels, manifest)
