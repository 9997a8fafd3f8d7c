"""Shared fixtures: tiny configs, prepared datasets in tmp dirs, the real MNIST test set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from ganforge.config import parse_params
from ganforge.data import prepare

ROOT = Path(__file__).resolve().parents[1]
MNIST_DIR = Path(os.environ.get("GANFORGE_MNIST_DIR", ROOT.parent / "shared" / "data" / "mnist"))


def tiny_params(**sections):
    """Params for fast CPU tests: narrow nets, few steps. ``sections``: {"train": {...}, ...}."""
    raw = {
        "prepare": {"source": "digits", "image_size": 16, "seed": 0},
        "train": {
            "model": "dcgan",
            "latent_dim": 16,
            "g_width": 8,
            "d_width": 8,
            "batch_size": 32,
            "steps": 20,
            "sample_every": 10,
            "checkpoint_every": 10,
            "log_every": 5,
            "grid_size": 16,
            "device": "cpu",
        },
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return parse_params(raw, "tiny")


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared") / "digits16"
    prepare(tiny_params().prepare, out)
    return out


@pytest.fixture()
def mnist_dir() -> Path:
    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real MNIST test set not found at {MNIST_DIR} (set GANFORGE_MNIST_DIR)")
    return MNIST_DIR


@pytest.fixture()
def params_file(tmp_path):
    """Write a params.yaml from a dict and return its path."""

    def write(raw: dict) -> Path:
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump(raw))
        return path

    return write


@pytest.fixture(scope="session")
def digits_featurenet(digits_dir, tmp_path_factory) -> Path:
    """The feature network trained on the digits fixture (a few epochs, still > 95%)."""
    from ganforge.featurenet import train_featurenet

    out = tmp_path_factory.mktemp("featurenet")
    train_featurenet(tiny_params(featurenet={"epochs": 4}), digits_dir, out)
    return out / "featurenet.pt"


@pytest.fixture(scope="session")
def digits_generator(digits_dir, tmp_path_factory) -> Path:
    """A short-trained DCGAN on the digits fixture."""
    from ganforge.train import train

    out = tmp_path_factory.mktemp("runs")
    train(
        tiny_params(train={"steps": 200, "g_width": 16, "d_width": 16}),
        digits_dir,
        out,
        progress=False,
    )
    return out / "main" / "generator.pt"
