"""Stage ``prepare``: read a source dataset, resize it, split it, write it atomically.

    ganforge prepare [--params params.yaml] [--set prepare.source=mnist-idx] [--out data/prepared]

Output directory (replaced as a whole, never half-written)::

    train.npz      images uint8 (N, C, H, W), labels int64 (N,)
    holdout.npz    same layout; the held-out split for evaluation (prepare.holdout_fraction)
    manifest.json  source, image size, channels, class names, counts per class, sha256 per file

``ganforge.core.dataset.load_split`` reads a split back and checks it against the
manifest's checksum, so a file changed or damaged after ``prepare`` is never used silently.
Adding a data source: one ``load_<source>`` function here returning an ``ImageSet``, its
branch in ``load_source``, and its name in ``config.PrepareParams.source``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ganforge.config import PrepareParams
from ganforge.core.dataset import FORMAT, MANIFEST, SPLITS, dataset_name
from ganforge.core.files import atomic_dir, claim_dir, sha256_bytes
from ganforge.errors import DataError

IMAGE_EXTENSIONS = {
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".pgm",
    ".ppm",
}


@dataclass(frozen=True)
class ImageSet:
    images: np.ndarray  # uint8 (N, C, H, W)
    labels: np.ndarray  # int64 (N,)
    class_names: list[str]


# --------------------------------------------------------------------------- sources


def _read_maybe_gzip(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip data ({exc})") from None


def read_idx(path: Path, expect_ndim: int) -> np.ndarray:
    """Parse an MNIST idx file of unsigned bytes: magic 0x0000_08_<ndim>, big-endian dims, data."""
    data = _read_maybe_gzip(path)
    if len(data) < 4:
        raise DataError(f"{path}: too short to be an idx file ({len(data)} bytes)")
    zero, dtype_code, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
    if zero != 0 or dtype_code != 0x08 or ndim != expect_ndim:
        magic = int.from_bytes(data[:4], "big")
        raise DataError(
            f"{path}: wrong magic number 0x{magic:08x} (expected 0x{0x800 + expect_ndim:08x}, "
            f"an idx{expect_ndim} file of unsigned bytes)"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated idx header")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims))
    if len(data) != expected:
        raise DataError(
            f"{path}: wrong length {len(data)} bytes for dims {dims} (expected {expected}); truncated or corrupt"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _check_md5sums(directory: Path) -> None:
    sums = directory / "MD5SUMS"
    if not sums.is_file():
        return
    for line in sums.read_text().splitlines():
        parts = line.split()
        if len(parts) != 2:
            continue
        digest, name = parts[0], parts[1].lstrip("*")
        target = directory / name
        if target.is_file() and hashlib.md5(target.read_bytes()).hexdigest() != digest:
            raise DataError(f"{target}: MD5 does not match {sums} (corrupt or altered file)")


def load_mnist_idx(directory: Path) -> ImageSet:
    """Every ``<prefix>-images-idx3-ubyte[.gz]`` with its ``<prefix>-labels-idx1-ubyte[.gz]``."""
    if not directory.is_dir():
        raise DataError(f"{directory}: directory not found (prepare.path for source mnist-idx)")
    _check_md5sums(directory)
    image_files = sorted(
        p
        for p in directory.iterdir()
        if p.name.endswith(("images-idx3-ubyte", "images-idx3-ubyte.gz"))
    )
    if not image_files:
        raise DataError(f"{directory}: no *-images-idx3-ubyte[.gz] files found")
    images, labels = [], []
    for img_path in image_files:
        stem = img_path.name.replace("images-idx3-ubyte", "labels-idx1-ubyte")
        candidates = [
            directory / stem,
            directory / stem.removesuffix(".gz"),
            directory / (stem + ".gz"),
        ]
        lbl_path = next((c for c in candidates if c.is_file()), None)
        if lbl_path is None:
            raise DataError(f"{img_path}: no matching labels file {stem} in {directory}")
        imgs = read_idx(img_path, 3)
        lbls = read_idx(lbl_path, 1)
        if len(imgs) != len(lbls):
            raise DataError(
                f"{lbl_path}: {len(lbls)} labels but {img_path.name} has {len(imgs)} images"
            )
        if lbls.max(initial=0) > 9:
            raise DataError(f"{lbl_path}: label {int(lbls.max())} outside MNIST classes 0-9")
        images.append(imgs[:, None])  # (N, 1, 28, 28)
        labels.append(lbls.astype(np.int64))
    return ImageSet(np.concatenate(images), np.concatenate(labels), [str(i) for i in range(10)])


def load_digits() -> ImageSet:
    from sklearn.datasets import load_digits as sk_load_digits

    d = sk_load_digits()
    # 8x8 intensities 0..16 -> 0..255
    images = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (1797, 1, 8, 8)
    return ImageSet(images, d.target.astype(np.int64), [str(n) for n in d.target_names])


def load_torchvision(root: Path, name: str, download: bool) -> ImageSet:
    import torchvision.datasets as tvd

    cls = getattr(tvd, name)
    parts = []
    for train in (True, False):
        try:
            ds = cls(root=str(root), train=train, download=download)
        except RuntimeError as exc:
            hint = (
                "" if download else "; set prepare.download=true on a machine with network access"
            )
            raise DataError(
                f"{root}: torchvision {name} files not found or corrupt ({exc}){hint}"
            ) from None
        except OSError as exc:  # URLError and friends: offline with download=true
            raise DataError(
                f"{root}: cannot download torchvision {name} (offline?): {exc}"
            ) from None
        data = np.asarray(ds.data)
        data = data[:, None] if data.ndim == 3 else data.transpose(0, 3, 1, 2)  # (N, C, H, W)
        parts.append((data.astype(np.uint8), np.asarray(ds.targets, dtype=np.int64)))
        class_names = list(ds.classes)
    return ImageSet(
        np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), class_names
    )


def load_imagefolder(root: Path, image_size: int, channels: str | int) -> ImageSet:
    """``root/<class>/<image>``; images are centre-cropped to square and resized with PIL."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not root.is_dir():
        raise DataError(f"{root}: directory not found (prepare.path for source imagefolder)")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{root}: no class sub-folders (expected root/<class>/<image files>)")
    files: list[tuple[Path, int]] = []
    for label, d in enumerate(class_dirs):
        found = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not found:
            raise DataError(
                f"{d}: class folder holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})"
            )
        files += [(p, label) for p in found]
    pics = []
    for path, _ in files:
        try:
            with Image.open(path) as im:
                im.load()
                pics.append(im.copy())
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            raise DataError(f"{path}: unreadable image ({exc.__class__.__name__}: {exc})") from None
    if channels == "auto":
        channels = 1 if all(p.mode in ("1", "L", "LA", "I", "I;16", "F") for p in pics) else 3
    mode = "L" if channels == 1 else "RGB"
    arrays = []
    for im in pics:
        im = ImageOps.fit(im.convert(mode), (image_size, image_size), Image.Resampling.BICUBIC)
        a = np.asarray(im, dtype=np.uint8)
        arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    labels = np.array([label for _, label in files], dtype=np.int64)
    return ImageSet(np.stack(arrays), labels, [d.name for d in class_dirs])


def load_source(p: PrepareParams) -> ImageSet:
    path = Path(p.path)
    if p.source == "digits":
        return load_digits()
    if p.source == "mnist-idx":
        return load_mnist_idx(path)
    if p.source == "torchvision":
        return load_torchvision(path, p.torchvision_dataset, p.download)
    return load_imagefolder(path, p.image_size, p.channels)


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
    ds = load_source(params)
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
    manifest["name"] = dataset_name(manifest)  # recorded, so later stages need not derive it
    with atomic_dir(out_dir, owner="prepare") as tmp:
        for name, blob in blobs.items():
            (tmp / f"{name}.npz").write_bytes(blob)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
