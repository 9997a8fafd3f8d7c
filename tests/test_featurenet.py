from __future__ import annotations

import json

import pytest
import torch

from ganforge.errors import CheckpointError
from ganforge.metrics.featurenet import FeatureNet, load_featurenet
from ganforge.stages.featurenet import FeatureNetError, train_featurenet
from ganforge.stages.prepare import prepare

from .conftest import tiny_params


def test_shapes_and_num_features():
    net = FeatureNet(channels=3, num_classes=7, width=8, feature_dim=24)
    x = torch.rand(5, 3, 32, 32) * 2 - 1
    f, logits = net.features_and_logits(x)
    assert f.shape == (5, 24) and logits.shape == (5, 7) and net.num_features == 24


def test_digits_accuracy_and_record(digits_featurenet):
    net, meta = load_featurenet(digits_featurenet)
    assert meta["holdout_accuracy"] >= 0.95
    metrics = json.loads((digits_featurenet.parent / "metrics.json").read_text())
    assert metrics["sha256"] == meta["sha256"] and metrics["min_accuracy"] == 0.95
    assert not net.training


def test_untrained_network_fails_the_gate(tmp_path, digits_dir):
    """A network that has not learned (learning rate ~0) fails the auto gate (95% on digits)."""
    params = tiny_params(featurenet={"epochs": 1, "lr": 1e-12})
    with pytest.raises(
        FeatureNetError, match=r"held-out accuracy 0\.\d+ is below featurenet.min_accuracy 0.95"
    ):
        train_featurenet(params, digits_dir, tmp_path / "fn")
    assert not (tmp_path / "fn" / "featurenet.pt").exists()


def test_damaged_file_is_refused(tmp_path, digits_featurenet):
    bad = tmp_path / "featurenet.pt"
    blob = bytearray(digits_featurenet.read_bytes())
    blob[len(blob) // 2] ^= 0x40
    bad.write_bytes(bytes(blob))
    (tmp_path / "featurenet.pt.sha256").write_text(
        (digits_featurenet.parent / "featurenet.pt.sha256").read_text()
    )
    with pytest.raises(CheckpointError, match="featurenet.pt: sha256 does not match"):
        load_featurenet(bad)


@pytest.mark.slow
def test_real_mnist_reaches_98_percent(tmp_path, mnist_dir):
    params = tiny_params(prepare={"source": "mnist-idx", "path": str(mnist_dir), "image_size": 28})
    prepare(params.prepare, tmp_path / "mnist")
    metrics = train_featurenet(params, tmp_path / "mnist", tmp_path / "fn")
    assert metrics["min_accuracy"] == 0.98
    assert metrics["holdout_accuracy"] >= 0.98, metrics


def test_same_data_and_seed_give_the_same_file(tmp_path, digits_dir):
    params = tiny_params(featurenet={"epochs": 1, "min_accuracy": 0.0})
    a = train_featurenet(params, digits_dir, tmp_path / "a")
    b = train_featurenet(params, digits_dir, tmp_path / "b")
    assert a["sha256"] == b["sha256"]


def test_auto_gate_refuses_data_without_a_measured_threshold(tmp_path):
    """An image folder has no automatic accuracy gate: the stage says so instead of using 0."""
    from PIL import Image

    from ganforge.config import parse_params
    from ganforge.errors import ConfigError

    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(6):
            Image.new("L", (16, 16), 40 * i + (0 if cls == "a" else 20)).save(
                tmp_path / "imgs" / cls / f"{i}.png"
            )
    raw = {
        "prepare": {
            "source": "imagefolder",
            "path": str(tmp_path / "imgs"),
            "holdout_fraction": 0.25,
        }
    }
    prepare(parse_params(raw).prepare, tmp_path / "prep")
    params = parse_params({**raw, "featurenet": {"epochs": 1}})
    with pytest.raises(
        ConfigError, match=r"featurenet.min_accuracy: auto has no threshold for imagefolder data"
    ):
        train_featurenet(params, tmp_path / "prep", tmp_path / "fn")
    assert not (tmp_path / "fn").exists()
    explicit = parse_params({**raw, "featurenet": {"epochs": 1, "min_accuracy": 0.0}})
    assert train_featurenet(explicit, tmp_path / "prep", tmp_path / "fn")["min_accuracy"] == 0.0
