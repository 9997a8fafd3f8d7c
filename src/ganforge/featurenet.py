"""Stage ``featurenet``: the domain feature network that FID, KID and IS are computed with.

    ganforge featurenet [--data data/prepared] [--out models/featurenet]

InceptionV3 cannot be downloaded here and on 28 px digits its features say little, so
the pipeline trains its own small CNN classifier on the prepared training split and
checks it on the held-out split. Its penultimate layer (``features``, 128-d by default)
is the embedding for FID/KID and precision/recall; its logits give IS and the class
histogram used for mode-collapse detection. The stage fails if held-out accuracy is
below ``featurenet.min_accuracy`` (auto: 98% for MNIST, 95% for digits): a weak
classifier would make every score meaningless.

Writes ``<out>/featurenet.pt`` (+ ``.sha256``: the version every score records) and
``<out>/metrics.json``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ganforge.checkpoint import load_verified, save_verified
from ganforge.config import Params
from ganforge.data import load_split
from ganforge.errors import GanforgeError
from ganforge.io import sha256_file, write_json

log = logging.getLogger(__name__)

FORMAT = "ganforge.featurenet/1"
# held-out accuracy the network must reach when featurenet.min_accuracy is auto
AUTO_MIN_ACCURACY = {"digits": 0.95, "mnist-idx": 0.98, "MNIST": 0.98}


class FeatureNetError(GanforgeError):
    """The feature network is too weak to judge generators with."""


class FeatureNet(nn.Module):
    """Small VGG-style classifier on images in [-1, 1].

    (N, C, S, S) -> 2x[conv3 BN ReLU] (N, w, S, S) -> maxpool (N, w, S/2, S/2)
      -> 2x[conv3 BN ReLU] (N, 2w, S/2, S/2) -> maxpool (N, 2w, S/4, S/4)
      -> conv3 BN ReLU (N, 4w, S/4, S/4) -> global mean (N, 4w)
      -> linear ReLU = features (N, feature_dim) -> linear = logits (N, num_classes)
    """

    def __init__(
        self, channels: int, num_classes: int, width: int = 32, feature_dim: int = 128
    ) -> None:
        super().__init__()
        w = width

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]

        self.body = nn.Sequential(
            *block(channels, w), *block(w, w), nn.MaxPool2d(2),
            *block(w, 2 * w), *block(2 * w, 2 * w), nn.MaxPool2d(2),
            *block(2 * w, 4 * w), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.embed = nn.Sequential(nn.Linear(4 * w, feature_dim), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(feature_dim, num_classes)
        self.num_features = feature_dim  # torchmetrics reads this instead of probing a 299 px image

    def features(self, x: Tensor) -> Tensor:
        return self.embed(self.body(x))  # (N, feature_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))  # (N, num_classes) logits

    @torch.no_grad()
    def features_and_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f = self.features(x)
        return f, self.classifier(f)


def _shift(x: Tensor, max_shift: int, gen: torch.Generator) -> Tensor:
    """Random per-image translation by up to ``max_shift`` px (zero-padded: background is -1)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen, device=gen.device).to(x.device)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen, device=gen.device).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None])[:, None, :, None]  # (N, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device)[None])[:, None, None, :]  # (N, 1, 1, W)
    idx_n = torch.arange(n, device=x.device)[:, None, None, None]
    idx_c = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[idx_n, idx_c, rows, cols]


def to_float(images: np.ndarray | Tensor, device: torch.device) -> Tensor:
    x = torch.as_tensor(images).to(device)
    return x.float().div_(127.5).sub_(1.0)


@torch.no_grad()
def accuracy(
    net: FeatureNet, images: np.ndarray, labels: np.ndarray, device: torch.device, batch: int = 1000
) -> float:
    net.eval()
    correct = 0
    for i in range(0, len(images), batch):
        logits = net(to_float(images[i : i + batch], device))
        correct += int((logits.argmax(1).cpu() == torch.as_tensor(labels[i : i + batch])).sum())
    return correct / len(images)


def train_featurenet(params: Params, data_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Train, check and save the feature network; returns its metrics."""
    from ganforge.train import resolve_device

    fp = params.featurenet
    device = resolve_device(fp.device)
    train_split, hold = load_split(data_dir, "train"), load_split(data_dir, "holdout")
    manifest = train_split.manifest
    key = (
        manifest["params"].get("torchvision_dataset")
        if manifest["source"] == "torchvision"
        else manifest["source"]
    )
    min_acc = fp.min_accuracy if fp.min_accuracy != "auto" else AUTO_MIN_ACCURACY.get(key, 0.0)

    torch.manual_seed(fp.seed)
    gen = torch.Generator(device=device).manual_seed(fp.seed)
    net = FeatureNet(manifest["channels"], manifest["num_classes"], fp.width, fp.feature_dim).to(
        device
    )
    x_all = to_float(train_split.images, device)  # (N, C, S, S) in [-1, 1]
    y_all = torch.as_tensor(train_split.labels, device=device)
    n = len(x_all)
    steps_per_epoch = max(1, n // fp.batch_size)
    opt = torch.optim.AdamW(net.parameters(), lr=fp.lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=fp.lr, total_steps=fp.epochs * steps_per_epoch
    )
    t0 = time.perf_counter()
    for _epoch in range(fp.epochs):
        net.train()
        perm = torch.randperm(n, generator=gen, device=device)
        for i in range(steps_per_epoch):
            idx = perm[i * fp.batch_size : (i + 1) * fp.batch_size]
            x = _shift(x_all[idx], fp.max_shift, gen) if fp.max_shift else x_all[idx]
            loss = F.cross_entropy(net(x), y_all[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    seconds = time.perf_counter() - t0
    train_acc = accuracy(net, train_split.images, train_split.labels, device)
    hold_acc = accuracy(net, hold.images, hold.labels, device)
    if hold_acc < min_acc:
        raise FeatureNetError(
            f"featurenet: held-out accuracy {hold_acc:.4f} is below featurenet.min_accuracy {min_acc:.2f} "
            f"on {data_dir}; train longer (featurenet.epochs) or widen it (featurenet.width)"
        )
    out_dir = Path(out_dir)
    path = save_verified(
        {
            "format": FORMAT,
            "kwargs": {
                "channels": manifest["channels"],
                "num_classes": manifest["num_classes"],
                "width": fp.width,
                "feature_dim": fp.feature_dim,
            },
            "state_dict": {k: v.cpu() for k, v in net.state_dict().items()},
            "image_size": manifest["image_size"],
            "class_names": manifest["class_names"],
            "data_sha256": manifest["content_sha256"],
            "holdout_accuracy": hold_acc,
            "params": fp.model_dump(),
        },
        out_dir / "featurenet.pt",
    )
    metrics = {
        "holdout_accuracy": round(hold_acc, 5),
        "train_accuracy": round(train_acc, 5),
        "min_accuracy": min_acc,
        "holdout_images": len(hold.images),
        "epochs": fp.epochs,
        "seconds": round(seconds, 2),
        "sha256": sha256_file(path),
        "device": str(device),
    }
    write_json(out_dir / "metrics.json", metrics)
    return metrics


def load_featurenet(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[FeatureNet, dict[str, Any]]:
    """The network (eval mode) and its record; the file's sha256 is checked first."""
    meta = load_verified(path, FORMAT)
    net = FeatureNet(**meta["kwargs"])
    net.load_state_dict(meta["state_dict"])
    net.to(device).eval()
    meta = {k: v for k, v in meta.items() if k != "state_dict"}
    meta["sha256"] = sha256_file(path)
    return net, meta
