"""The domain feature network: a small CNN classifier whose embedding FID/KID are computed in.

InceptionV3 cannot be downloaded offline and on 16-28 px digits its features say little,
so ``ganforge featurenet`` trains this network on the prepared training split
(``ganforge.engine.featurenet``) and checks it on the held-out split. Its penultimate
layer (``features``, 128-d by default) is the embedding for FID/KID and precision/recall;
its logits give IS and the class histogram used for mode-collapse detection.

The file ``featurenet.pt`` (``FORMAT``) holds the constructor kwargs, the weights, the
data checksum and the held-out accuracy; it is written and read verified (sha256 sidecar).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ganforge.core.checkpoint import load_verified, save_verified
from ganforge.errors import CheckpointError

FORMAT = "ganforge.featurenet/1"


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
            *block(channels, w),
            *block(w, w),
            nn.MaxPool2d(2),
            *block(w, 2 * w),
            *block(2 * w, 2 * w),
            nn.MaxPool2d(2),
            *block(2 * w, 4 * w),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
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


def save_featurenet(net: FeatureNet, kwargs: dict[str, int], record: dict[str, Any], path) -> str:
    """Write the network with its record (data checksum, accuracy, params); returns its sha256."""
    state = {k: v.cpu() for k, v in net.state_dict().items()}
    return save_verified({"format": FORMAT, "kwargs": kwargs, "state_dict": state, **record}, path)


def load_featurenet(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[FeatureNet, dict[str, Any]]:
    """The network (eval mode) and its record (with the verified ``sha256``)."""
    meta = load_verified(path, FORMAT)
    try:
        net = FeatureNet(**meta["kwargs"])
        net.load_state_dict(meta["state_dict"])
        for key in ("data_sha256", "holdout_accuracy", "class_names"):
            meta[key]  # noqa: B018 - the record every score relies on must be complete
    except (KeyError, TypeError, RuntimeError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: does not rebuild a feature network ({str(exc).splitlines()[0][:200]})"
        ) from None
    net.to(device).eval()
    return net, {k: v for k, v in meta.items() if k != "state_dict"}
