"""Stage ``featurenet``: train and check the feature network that FID, KID and IS use.

    ganforge featurenet [--data data/prepared] [--out models/featurenet]

Trains ``ganforge.metrics.featurenet.FeatureNet`` on the prepared training split and
checks it on the held-out split: the stage fails if held-out accuracy is below
``featurenet.min_accuracy`` (auto: 98% for MNIST, 95% for digits; other sources have no
measured threshold, so auto refuses them and asks for an explicit one). A weak classifier
would make every score meaningless.

Writes ``<out>/featurenet.pt`` (+ ``.sha256``: the version every score records) and
``<out>/metrics.json``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from ganforge.config import Params
from ganforge.core.dataset import load_split
from ganforge.core.device import resolve_device
from ganforge.core.files import claim_dir, mark_dir, write_json
from ganforge.engine.featurenet import accuracy, fit_classifier
from ganforge.errors import ConfigError, GanforgeError
from ganforge.metrics.featurenet import FeatureNet, save_featurenet

# held-out accuracy the network must reach when featurenet.min_accuracy is auto, per dataset
# (measured: 0.99 on MNIST at 28 px, 1.0 on digits at 16 px with the defaults)
AUTO_MIN_ACCURACY = {"digits": 0.95, "mnist-idx": 0.98, "MNIST": 0.98}


class FeatureNetError(GanforgeError):
    """The feature network is too weak to judge generators with."""


def min_accuracy(setting: float | str, manifest: dict[str, Any]) -> float:
    """The accuracy gate for this dataset; ``auto`` without a measured threshold is refused."""
    if setting != "auto":
        return float(setting)
    source = manifest["source"]
    key = manifest["params"].get("torchvision_dataset") if source == "torchvision" else source
    if key not in AUTO_MIN_ACCURACY:
        raise ConfigError(
            f"featurenet.min_accuracy: auto has no threshold for {key} data (known: "
            f"{', '.join(AUTO_MIN_ACCURACY)}); set a fraction, e.g. --set featurenet.min_accuracy=0.9"
        )
    return AUTO_MIN_ACCURACY[key]


def train_featurenet(params: Params, data_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Train, check and save the feature network; returns its metrics."""
    fp = params.featurenet
    out_dir = claim_dir(out_dir, "featurenet")
    device = resolve_device(fp.device, "featurenet.device")
    train_split, hold = load_split(data_dir, "train"), load_split(data_dir, "holdout")
    manifest = train_split.manifest
    gate = min_accuracy(fp.min_accuracy, manifest)

    torch.manual_seed(fp.seed)
    kwargs = {
        "channels": manifest["channels"],
        "num_classes": manifest["num_classes"],
        "width": fp.width,
        "feature_dim": fp.feature_dim,
    }
    net = FeatureNet(**kwargs).to(device)
    t0 = time.perf_counter()
    fit_classifier(
        net, train_split.images, train_split.labels, epochs=fp.epochs, batch_size=fp.batch_size,
        lr=fp.lr, max_shift=fp.max_shift, seed=fp.seed, device=device,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    train_acc = accuracy(net, train_split.images, train_split.labels, device)
    hold_acc = accuracy(net, hold.images, hold.labels, device)
    if hold_acc < gate:
        raise FeatureNetError(
            f"featurenet: held-out accuracy {hold_acc:.4f} is below featurenet.min_accuracy {gate:.2f} "
            f"on {data_dir}; train longer (featurenet.epochs) or widen it (featurenet.width)"
        )
    record = {
        "image_size": manifest["image_size"],
        "class_names": manifest["class_names"],
        "data_sha256": manifest["content_sha256"],
        "holdout_accuracy": hold_acc,
        "params": fp.model_dump(),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    mark_dir(out_dir, "featurenet")
    digest = save_featurenet(net, kwargs, record, out_dir / "featurenet.pt")
    metrics = {
        "holdout_accuracy": round(hold_acc, 5),
        "train_accuracy": round(train_acc, 5),
        "min_accuracy": gate,
        "holdout_images": len(hold.images),
        "epochs": fp.epochs,
        "seconds": round(seconds, 2),
        "sha256": digest,
        "device": str(device),
    }
    write_json(out_dir / "metrics.json", metrics)
    return metrics
