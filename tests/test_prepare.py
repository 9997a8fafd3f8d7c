from __future__ import annotations

import gzip
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from ganforge.core.dataset import load_split
from ganforge.core.sources import read_idx
from ganforge.errors import DataError
from ganforge.stages.prepare import prepare

from .conftest import tiny_params


def write_idx(path, array: np.ndarray, gz: bool = False) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    blob = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(blob) if gz else blob)


def fake_mnist(directory, n=40, gz=True, prefix="train"):
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = np.arange(n) % 10
    write_idx(directory / f"{prefix}-images-idx3-ubyte{ext}", images, gz)
    write_idx(directory / f"{prefix}-labels-idx1-ubyte{ext}", labels, gz)
    return images, labels


def prep(tmp_path, **prepare_keys):
    out = tmp_path / "prepared"
    manifest = prepare(tiny_params(prepare=prepare_keys).prepare, out)
    return out, manifest


def test_digits(digits_dir):
    train, hold = load_split(digits_dir, "train"), load_split(digits_dir, "holdout")
    m = train.manifest
    assert (m["source"], m["image_size"], m["channels"], m["num_classes"]) == ("digits", 16, 1, 10)
    assert len(train.images) + len(hold.images) == 1797
    assert len(hold.images) == 180  # holdout_fraction 0.1, rounded
    assert train.images.dtype == np.uint8 and train.images.shape[1:] == (1, 16, 16)
    assert train.labels.dtype == np.int64
    assert train.images.max() > 200 and train.images.min() == 0
    # stratified: every class in both splits, roughly in proportion
    assert set(m["splits"]["holdout"]["per_class"].values()) <= set(range(16, 21))
    assert sum(m["splits"]["train"]["per_class"].values()) == len(train.images)


def test_same_params_same_bytes(tmp_path, digits_dir):
    _, manifest = prep(tmp_path)
    assert manifest["content_sha256"] == load_split(digits_dir).manifest["content_sha256"]


def test_real_mnist(tmp_path, mnist_dir):
    out, m = prep(
        tmp_path, source="mnist-idx", path=str(mnist_dir), image_size=32, holdout_fraction=0.2
    )
    train = load_split(out, "train")
    assert m["splits"]["train"]["count"] == 8000 and m["splits"]["holdout"]["count"] == 2000
    assert train.images.shape == (8000, 1, 32, 32)
    assert sum(m["splits"]["holdout"]["per_class"].values()) == 2000
    assert m["splits"]["train"]["per_class"]["1"] == round(
        1135 * 0.8
    )  # MNIST test set has 1135 ones


def test_mnist_idx_plain_and_gz_directories_agree(tmp_path):
    images, labels = fake_mnist(tmp_path / "gz", gz=True)
    fake_mnist(tmp_path / "raw", gz=False)
    a = read_idx(tmp_path / "gz" / "train-images-idx3-ubyte.gz", 3)
    b = read_idx(tmp_path / "raw" / "train-images-idx3-ubyte", 3)
    assert np.array_equal(a, images) and np.array_equal(a, b)
    _, m = prep(tmp_path, source="mnist-idx", path=str(tmp_path / "raw"), image_size=28)
    assert m["splits"]["train"]["count"] + m["splits"]["holdout"]["count"] == 40


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("magic", "wrong magic number 0x00000801"),
        ("truncate", "wrong length"),
        ("extra", "wrong length"),
        ("count", "10 labels but train-images-idx3-ubyte has 40 images"),
        ("gz-truncate", "corrupt or truncated gzip data"),
        ("no-labels", "no matching labels file"),
        ("empty", "too short to be an idx file"),
    ],
)
def test_corrupt_idx_is_named(tmp_path, damage, expected):
    d = tmp_path / "mnist"
    images, labels = fake_mnist(d, gz=damage == "gz-truncate")
    img = d / "train-images-idx3-ubyte"
    lbl = d / "train-labels-idx1-ubyte"
    if damage == "magic":
        write_idx(img, images.reshape(-1))  # an idx1 file where an idx3 belongs
    elif damage == "truncate":
        img.write_bytes(img.read_bytes()[:-100])
    elif damage == "extra":
        img.write_bytes(img.read_bytes() + b"\0")
    elif damage == "count":
        write_idx(lbl, labels[:10])
    elif damage == "gz-truncate":
        gz = d / "train-images-idx3-ubyte.gz"
        gz.write_bytes(gz.read_bytes()[:500])
    elif damage == "no-labels":
        lbl.unlink()
    elif damage == "empty":
        img.write_bytes(b"")
    out = tmp_path / "prepared"
    with pytest.raises(DataError, match=expected) as err:
        prepare(
            tiny_params(prepare={"source": "mnist-idx", "path": str(d), "image_size": 28}).prepare,
            out,
        )
    assert "train-" in str(err.value) and "\n" not in str(err.value)
    assert not out.exists()


def test_md5sums_mismatch_is_detected(tmp_path, mnist_dir):
    d = tmp_path / "mnist"
    shutil.copytree(mnist_dir, d)
    lbl = d / "t10k-labels-idx1-ubyte.gz"
    lbl.chmod(0o644)
    blob = bytearray(lbl.read_bytes())
    blob[-20] ^= 0xFF
    lbl.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz: MD5 does not match"):
        prep(tmp_path, source="mnist-idx", path=str(d))


def test_missing_directory(tmp_path):
    with pytest.raises(DataError, match="nope: directory not found"):
        prep(tmp_path, source="mnist-idx", path=str(tmp_path / "nope"))
    with pytest.raises(DataError, match="nope: directory not found"):
        prep(tmp_path, source="imagefolder", path=str(tmp_path / "nope"))


def make_folder(root, mode="L", n=4, size=(20, 12)):
    colors = {"L": 200, "RGB": (200, 30, 30)}
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new(mode, size, colors[mode]).save(root / cls / f"{i}.png")


def test_imagefolder_grey_and_colour(tmp_path):
    make_folder(tmp_path / "grey", "L")
    out, m = prep(
        tmp_path, source="imagefolder", path=str(tmp_path / "grey"), holdout_fraction=0.25
    )
    assert (m["channels"], m["class_names"]) == (1, ["cat", "dog"])
    assert load_split(out).images.shape[1:] == (1, 16, 16)
    make_folder(tmp_path / "rgb", "RGB")
    out, m = prep(tmp_path, source="imagefolder", path=str(tmp_path / "rgb"), holdout_fraction=0.25)
    imgs = load_split(out).images
    assert m["channels"] == 3 and imgs.shape[1:] == (3, 16, 16)
    assert tuple(imgs[0, :, 8, 8]) == (200, 30, 30)
    _, m = prep(
        tmp_path,
        source="imagefolder",
        path=str(tmp_path / "rgb"),
        channels=1,
        holdout_fraction=0.25,
    )
    assert m["channels"] == 1


def test_imagefolder_errors(tmp_path):
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(DataError, match="cat: class folder holds no images"):
        prep(tmp_path, source="imagefolder", path=str(tmp_path / "empty"))
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match="none: no class sub-folders"):
        prep(tmp_path, source="imagefolder", path=str(tmp_path / "none"))
    make_folder(tmp_path / "broken", "L")
    (tmp_path / "broken" / "dog" / "9.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DataError, match=r"dog/9.png: unreadable image"):
        prep(tmp_path, source="imagefolder", path=str(tmp_path / "broken"))


def test_torchvision_offline_missing_files(tmp_path):
    with pytest.raises(DataError, match="torchvision MNIST files not found.*prepare.download=true"):
        prep(tmp_path, source="torchvision", path=str(tmp_path / "root"))


def test_torchvision_reads_local_mnist(tmp_path, mnist_dir):
    raw = tmp_path / "root" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(gzip.decompress((mnist_dir / f"{name}.gz").read_bytes()))
    fake_mnist(raw, n=60, gz=False, prefix="train")
    out, m = prep(tmp_path, source="torchvision", path=str(tmp_path / "root"), image_size=28)
    assert m["splits"]["train"]["count"] + m["splits"]["holdout"]["count"] == 10060
    assert m["class_names"][0].startswith("0")


def test_failed_prepare_keeps_previous_output(tmp_path):
    out, m = prep(tmp_path)
    before = (out / "manifest.json").read_text()
    with pytest.raises(DataError):
        prep(tmp_path, source="mnist-idx", path=str(tmp_path / "missing"))
    assert (out / "manifest.json").read_text() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_load_split_detects_changed_files(tmp_path):
    out, _ = prep(tmp_path)
    f = out / "train.npz"
    blob = bytearray(f.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    f.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="train.npz: checksum mismatch"):
        load_split(out, "train")
    (out / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(DataError, match="not a ganforge prepared-data manifest"):
        load_split(out, "train")
    with pytest.raises(DataError, match="run `ganforge prepare` first"):
        load_split(tmp_path / "nothing", "train")


def test_max_images_subsamples_stratified(tmp_path):
    _, m = prep(tmp_path, max_images=500)
    total = {
        k: m["splits"]["train"]["per_class"][k] + m["splits"]["holdout"]["per_class"][k]
        for k in m["class_names"]
    }
    assert sum(total.values()) == 500 and min(total.values()) >= 45


def test_unknown_source_is_an_error_everywhere():
    """An unknown name is refused by the config and by the registry itself (no silent
    fallback to an image folder)."""
    from ganforge.config import parse_params
    from ganforge.core.sources import source
    from ganforge.errors import ConfigError

    with pytest.raises(
        ConfigError, match=r"prepare\.source: unknown source 'npy' \(allowed: digits,"
    ):
        parse_params({"prepare": {"source": "npy"}})
    with pytest.raises(DataError, match="unknown source 'npy'"):
        source("npy")


def test_a_source_added_to_the_registry_works_end_to_end(tmp_path, monkeypatch):
    """Adding a source is one registry entry: config validation, prepare, the dataset name
    and the feature network's auto gate all read it (a folder of .npy arrays here)."""
    from ganforge.core import sources
    from ganforge.errors import ConfigError
    from ganforge.stages.featurenet import min_accuracy

    def load_npy(p):
        arrays = sorted(__import__("pathlib").Path(p.path).glob("*.npy"))
        images = np.stack([np.load(a) for a in arrays])[:, None]  # (N, 1, H, W)
        return sources.ImageSet(images, np.arange(len(images)) % 2, ["even", "odd"])

    entry = sources.Source(load=load_npy, needs_path=True, name=lambda m: "npyset",
                           min_accuracy=lambda m: 0.7)  # fmt: skip
    monkeypatch.setitem(sources.SOURCES, "npy", entry)
    folder = tmp_path / "arrays"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        np.save(folder / f"{i:02d}.npy", rng.integers(0, 256, (10, 10), dtype=np.uint8))
    with pytest.raises(ConfigError, match="source 'npy' needs a directory in prepare.path"):
        tiny_params(prepare={"source": "npy"})
    _, manifest = prep(tmp_path, source="npy", path=str(folder), image_size=16)
    assert manifest["name"] == "npyset"
    assert manifest["splits"]["train"]["count"] + manifest["splits"]["holdout"]["count"] == 12
    assert min_accuracy("auto", manifest, "classifier") == 0.7
