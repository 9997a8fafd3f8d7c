"""Source datasets as uint8 arrays, and ``SOURCES``: the registry ``prepare.source`` names.

Each ``load_<source>`` returns an ``ImageSet`` (uint8 (N, C, H, W), int64 labels, class
names) and reports every bad input as one ``DataError`` naming the file. Inputs are
bounded: ``MAX_INPUT_BYTES`` per file (stored or inflated), ``MAX_IMAGE_PIXELS`` per image.

A source is one ``Source`` entry in ``SOURCES`` (at the end of this module): its loader, whether
it needs ``prepare.path``, the dataset's default name and the feature network's automatic
accuracy gate. Config validation, ``ganforge prepare``, experiment and registered-model
names and the feature-network stage all read that entry; nothing else names a source.
"""

from __future__ import annotations

import hashlib
import math
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

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


MAX_INPUT_BYTES = 1 << 30  # an input file, as stored or inflated: 1 GiB (MNIST's largest: 47 MB)
MAX_IMAGE_PIXELS = 64 * 1024 * 1024  # one image; larger is refused as a decompression bomb


def _read_maybe_gzip(path: Path) -> bytes:
    """The file's bytes, gunzipped if gzip; at most ``MAX_INPUT_BYTES`` either way."""
    if not path.is_file():
        raise DataError(f"{path}: not a regular file")
    try:
        if path.stat().st_size > MAX_INPUT_BYTES:
            raise DataError(f"{path}: larger than {MAX_INPUT_BYTES >> 20} MiB")
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    if raw[:2] != b"\x1f\x8b":
        return raw
    inflate = zlib.decompressobj(wbits=31)  # gzip framing
    try:
        data = inflate.decompress(raw, MAX_INPUT_BYTES)
    except zlib.error as exc:
        raise DataError(f"{path}: corrupt or truncated gzip data ({exc})") from None
    if inflate.unconsumed_tail:
        raise DataError(f"{path}: inflates to more than {MAX_INPUT_BYTES >> 20} MiB; refused")
    if not inflate.eof:
        raise DataError(f"{path}: corrupt or truncated gzip data (ends early)")
    return data


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
    if 0 in dims[1:]:
        raise DataError(f"{path}: degenerate idx dims {dims}")
    expected = header + math.prod(dims)  # Python ints: no overflow on hostile headers
    if len(data) != expected:
        raise DataError(
            f"{path}: wrong length {len(data)} bytes for dims {dims} (expected {expected}); "
            "truncated or corrupt"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _check_md5sums(directory: Path) -> None:
    sums = directory / "MD5SUMS"
    if not sums.is_file():
        return
    for line in sums.read_text(errors="replace").splitlines():
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
        if imgs.shape[1] != imgs.shape[2]:
            raise DataError(
                f"{img_path}: images are {imgs.shape[1]}x{imgs.shape[2]}; only square idx "
                "images are "
                "supported (stretching would distort them)"
            )
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


def _to_8bit(im, mode: str):
    """A PIL image as 8-bit ``mode`` ("L" or "RGB"), converted by value, not saturated:
    16/32-bit grey is scaled from its full range, alpha is composited onto black and
    palettes are expanded first."""
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        im = Image.fromarray(np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8), "L")
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("LA", "PA", "RGBA", "La", "RGBa"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        im = Image.alpha_composite(background, rgba)
    return im.convert(mode)


def load_imagefolder(root: Path, image_size: int, channels: str | int) -> ImageSet:
    """``root/<class>/<image>``; images are centre-cropped to square and resized with PIL.

    Only regular files with an image extension are read (a FIFO or device there would block
    forever); an image over ``MAX_IMAGE_PIXELS`` is refused as a decompression bomb.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not root.is_dir():
        raise DataError(f"{root}: directory not found (prepare.path for source imagefolder)")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{root}: no class sub-folders (expected root/<class>/<image files>)")
    files: list[tuple[Path, int]] = []
    for label, d in enumerate(class_dirs):
        found = sorted(
            p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        )
        if not found:
            raise DataError(
                f"{d}: class folder holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})"
            )
        files += [(p, label) for p in found]
    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    pics = []
    for path, _ in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as im:
                    im.load()
                    pics.append(im.copy())
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise DataError(
                f"{path}: over {MAX_IMAGE_PIXELS >> 20} MP; refused as a decompression bomb"
            ) from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
            raise DataError(f"{path}: unreadable image ({exc.__class__.__name__}: {exc})") from None
    grey = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
    if channels == "auto":
        channels = 1 if all(p.mode in grey for p in pics) else 3
    mode = "L" if channels == 1 else "RGB"
    arrays = []
    for im in pics:
        im = ImageOps.fit(_to_8bit(im, mode), (image_size, image_size), Image.Resampling.BICUBIC)
        a = np.asarray(im, dtype=np.uint8)
        arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    labels = np.array([label for _, label in files], dtype=np.int64)
    return ImageSet(np.stack(arrays), labels, [d.name for d in class_dirs])


# --------------------------------------------------------------------------- the registry


def _slug(text: str, fallback: str) -> str:
    """A name for experiments and registered models: lower case, [a-z0-9._-]."""
    out = "".join(c if c.isalnum() or c in "._-" else "-" for c in text.lower()).strip("-._")
    return out or fallback


@dataclass(frozen=True)
class Source:
    """One ``prepare.source``. ``load(p)`` reads it from the ``prepare`` params ``p`` (any object
    with the ``prepare.*`` attributes); ``name(manifest)`` is the dataset's default name when
    ``prepare.name`` is empty; ``min_accuracy(manifest)`` the feature network's held-out
    accuracy gate for ``featurenet.min_accuracy: auto`` (None: the generic rule)."""

    load: Callable[[Any], ImageSet]
    needs_path: bool
    name: Callable[[dict[str, Any]], str]
    min_accuracy: Callable[[dict[str, Any]], float | None] = lambda manifest: None


# measured: 1.0 on digits at 16 px, 0.99 on MNIST at 28 px with the feature network's defaults
_MNIST_GATE = 0.98

SOURCES: dict[str, Source] = {
    "digits": Source(
        load=lambda p: load_digits(),
        needs_path=False,
        name=lambda m: "digits",
        min_accuracy=lambda m: 0.95,
    ),
    "mnist-idx": Source(
        load=lambda p: load_mnist_idx(Path(p.path)),
        needs_path=True,
        name=lambda m: "mnist",
        min_accuracy=lambda m: _MNIST_GATE,
    ),
    "torchvision": Source(
        load=lambda p: load_torchvision(Path(p.path), p.torchvision_dataset, p.download),
        needs_path=True,
        name=lambda m: m["params"]["torchvision_dataset"].lower(),
        min_accuracy=lambda m: (
            _MNIST_GATE if m["params"]["torchvision_dataset"] == "MNIST" else None
        ),
    ),
    "imagefolder": Source(
        load=lambda p: load_imagefolder(Path(p.path), p.image_size, p.channels),
        needs_path=True,
        name=lambda m: _slug(Path(m["path"]).name, "images"),
    ),
}


def source(name: str) -> Source:
    """The registry entry, or one line naming the unknown source and the known ones."""
    if name not in SOURCES:
        raise DataError(f"prepare.source: unknown source {name!r} (known: {', '.join(SOURCES)})")
    return SOURCES[name]
