"""Reading a prepared dataset back (written by ``ganforge prepare``), verified.

    data/prepared/{train,holdout}.npz   images uint8 (N, C, H, W), labels int64 (N,)
    data/prepared/manifest.json         source, size, channels, classes, sha256 per file

``load_split`` checks the file against the manifest's sha256, so a file changed or
damaged after ``prepare`` is never used silently.
"""

from __future__ import annotations

import io
import json
import zipfile
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
    """The dataset's short name (experiment and registered-model names use it), recorded by
    ``ganforge prepare``: ``prepare.name``, else the source's default (``core.sources``). The
    name is a label; the data's identity is its content (``content_sha256``), which promotion
    compares before it compares scores."""
    return manifest.get("name") or manifest["source"]


def read_manifest(data_dir: str | Path) -> dict[str, Any]:
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise DataError(f"{path}: not found; run `ganforge prepare` first")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise DataError(f"{path}: corrupt manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"{path}: not a ganforge prepared-data manifest (format {FORMAT})")
    _check_schema(manifest, path)
    return manifest


# the manifest's keys and their types; a hand-edited manifest is refused by key
_SCHEMA = {
    "source": str,
    "path": str,
    "image_size": int,
    "channels": int,
    "num_classes": int,
    "class_names": list,
    "splits": dict,
    "content_sha256": str,
    "params": dict,
}


def _check_schema(manifest: dict[str, Any], path: Path) -> None:
    for key, kind in _SCHEMA.items():
        if not isinstance(manifest.get(key), kind) or isinstance(manifest.get(key), bool):
            raise DataError(
                f"{path}: {key} is missing or not a {kind.__name__}; rerun `ganforge prepare`"
            )
    k = manifest["num_classes"]
    if not 1 <= k <= 100_000 or len(manifest["class_names"]) != k:
        raise DataError(
            f"{path}: num_classes {k} does not match its {len(manifest['class_names'])} class_names"
        )
    if not 1 <= manifest["channels"] <= 4 or not 1 <= manifest["image_size"] <= 4096:
        raise DataError(f"{path}: channels/image_size out of range; rerun `ganforge prepare`")
    for name in SPLITS:
        entry = manifest["splits"].get(name)
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("file"), str)
            and isinstance(entry.get("sha256"), str)
        ):
            raise DataError(
                f"{path}: splits.{name} is missing its file or sha256; rerun `ganforge prepare`"
            )
        if Path(entry["file"]).name != entry["file"]:
            raise DataError(
                f"{path}: splits.{name}.file {entry['file']!r} must be a name in {path.parent}"
            )


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
            f"{path}: checksum mismatch with manifest.json (corrupt or changed); rerun "
            "`ganforge prepare`"
        )
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            images, labels = z["images"], z["labels"]
    except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(
            f"{path}: not a prepared split ({exc.__class__.__name__}); rerun `ganforge prepare`"
        ) from None
    if images.ndim != 4 or labels.ndim != 1:
        raise DataError(f"{path}: arrays of the wrong rank ({images.shape}, {labels.shape})")
    size, ch = manifest["image_size"], manifest["channels"]
    if (
        labels.dtype != np.int64
        or labels.min(initial=0) < 0
        or labels.max(initial=0) >= manifest["num_classes"]
        or images.dtype != np.uint8
        or images.shape[1:] != (ch, size, size)
        or len(labels) != len(images)
    ):
        raise DataError(f"{path}: arrays do not match the manifest ({images.dtype} {images.shape})")
    return PreparedSplit(images, labels, manifest)
