"""Feature extractors: images (N, C, H, W) in [-1, 1] -> features (N, F) and logits (N, K).

- ``DomainFeatures``: the domain feature network (``ganforge featurenet``); the default.
- ``InceptionFeatures``: the standard FID network (torch-fidelity's InceptionV3, 2015 TF
  weights) through torchmetrics, from a user-supplied weights file when offline.
- ``FidProbe``: FID of a generator's samples against a fixed real set, cheap enough to run
  at every sample grid during training.

Each extractor's ``record`` is what ``eval.json``'s protocol says about the feature space.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ganforge.core.device import to_unit_range
from ganforge.core.fastpath import FastPath
from ganforge.core.files import sha256_file
from ganforge.errors import ConfigError
from ganforge.metrics.featurenet import load_featurenet
from ganforge.metrics.scores import fid

log = logging.getLogger(__name__)

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
# torch hub names a weights file by the first hex digits of its sha256
INCEPTION_SHA256_PREFIX = INCEPTION_FILE.removesuffix(".pth").rsplit("-", 1)[1]


class FeatureExtractor:
    """Features (N, F) and logits (N, K) for images (N, C, H, W) in [-1, 1], batched."""

    name: str
    record: dict[str, Any]
    classes: bool = False  # whether the logits are the data's own classes
    logits_meaningful: bool = True  # whether IS can be computed on the logits

    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class DomainFeatures(FeatureExtractor):
    """``fast``: bf16 autocast and channels-last for the network (fp32 and contiguous when
    None). bf16 moves a feature by at most ~0.5% of the largest; the FID it gives is checked
    against fp32 in tests/test_fastpath.py and benchmarks/eval_speed.py."""

    def __init__(
        self, path: str | Path, device: torch.device, batch: int, fast: FastPath | None = None
    ) -> None:
        self.net, meta = load_featurenet(path, device)
        self.fast = fast or FastPath.plain()
        self.net.to(memory_format=self.fast.memory_format)
        self.device, self.batch = device, batch
        self.name = "featurenet"
        objective = meta.get("objective", "classifier")  # files before objectives: classifiers
        # the logits are the data's classes only for a classifier
        self.classes = self.logits_meaningful = objective in ("classifier", "hybrid")
        self.class_accuracy: dict[str, float | None] = meta.get("holdout_class_accuracy", {})
        self.record = {
            "features": "featurenet",
            "featurenet": str(path),
            "featurenet_sha256": meta["sha256"],
            "featurenet_objective": objective,
            "featurenet_holdout_accuracy": meta["holdout_accuracy"],
            "featurenet_holdout_class_accuracy": self.class_accuracy,
            "feature_dim": self.net.num_features,
            # the judging space: the embedding alone, or with the first block's statistics
            "feature_texture": self.net.texture,
            "feature_bf16": self.fast.bf16,
        }
        self.meta = meta

    @torch.inference_mode()
    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]:
        feats, logits = [], []
        with self.fast.autocast(self.device):
            for chunk in images.split(self.batch):
                x = chunk.to(self.device).contiguous(memory_format=self.fast.memory_format)
                f, lg = self.net.features_and_logits(x)
                feats.append(f.float())
                logits.append(lg.float())
        return torch.cat(feats), torch.cat(logits)


def _safe_inception_state(path: Path) -> dict[str, Tensor]:
    """Load user-supplied Inception weights without running pickled code (weights_only)."""
    import pickle

    if not path.is_file():
        raise ConfigError(f"evaluate.inception_weights: {path} not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise ConfigError(
            f"evaluate.inception_weights: {path} is not a weights file ({str(exc).splitlines()[0]})"
        ) from None
    if not isinstance(state, dict) or "Mixed_7c.branch_pool.conv.weight" not in state:
        raise ConfigError(
            f"evaluate.inception_weights: {path} is not an FID InceptionV3 state dict "
            f"({INCEPTION_FILE})"
        )
    return state


class InceptionFeatures(FeatureExtractor):
    """The standard FID network: torch-fidelity's InceptionV3 (2015 TF weights) via torchmetrics.

    2048-d pool features and the 1008-way unbiased logits; grey images are repeated to RGB.
    """

    def __init__(
        self,
        weights: str,
        device: torch.device,
        batch: int,
        expected_sha256: str = INCEPTION_SHA256_PREFIX,
    ) -> None:
        import tempfile

        try:
            from torchmetrics.image.fid import NoTrainInceptionV3
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ConfigError(f"evaluate.features=inception needs torch-fidelity ({exc})") from None
        hub = Path(torch.hub.get_dir()) / "checkpoints"
        cached = (
            next(iter(sorted(hub.glob("*inception-2015-12-05*.pth"))), None)
            if hub.is_dir()
            else None
        )
        source = Path(weights) if weights else cached
        if source is None and os.environ.get("GANFORGE_OFFLINE", "") not in ("", "0"):
            raise ConfigError(
                "evaluate.inception_weights: no Inception weights and offline; supply "
                f"{INCEPTION_FILE} "
                "(torch-fidelity's FID InceptionV3) as evaluate.inception_weights or put it in "
                f"{hub}"
            )
        digest = sha256_file(source) if source is not None else None
        if digest is not None and not digest.startswith(expected_sha256):
            raise ConfigError(
                f"evaluate.inception_weights: {source} has sha256 {digest[:16]}..., not the "
                "expected "
                f"{expected_sha256} (evaluate.inception_sha256): not the FID Inception weights; "
                "scores in another network's space are not FID"
            )
        with tempfile.TemporaryDirectory() as tmp:
            weights_path = None
            if source is not None:
                weights_path = Path(tmp) / "inception.pth"
                torch.save(_safe_inception_state(source), weights_path)
            try:
                net = NoTrainInceptionV3(
                    name="inception-v3-compat",
                    features_list=["2048"],
                    feature_extractor_weights_path=str(weights_path) if weights_path else None,
                )
            except OSError as exc:  # the library's download failed
                raise ConfigError(
                    "evaluate.inception_weights: cannot download the Inception weights "
                    f"({exc}); supply "
                    f"{INCEPTION_FILE} as evaluate.inception_weights or put it in {hub}"
                ) from None
        self.net = net.to(device)
        self.device, self.batch = device, batch
        self.name = "inception"
        self.record = {
            "features": "inception",
            "inception_weights": str(source) if source else "downloaded by torch-fidelity",
            "inception_sha256": digest,
            "feature_dim": 2048,
        }

    @torch.no_grad()
    def __call__(self, images: Tensor) -> tuple[Tensor, Tensor]:
        feats, logits = [], []
        for chunk in images.split(self.batch):
            x = (
                ((chunk.to(self.device).float() + 1) * 127.5)
                .round_()
                .clamp_(0, 255)
                .to(torch.uint8)
            )
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            f = self.net(x)  # (N, 2048) pool features
            feats.append(f.float())
            logits.append(f.float() @ self.net.fc.weight.T.float())  # (N, 1008) 'logits_unbiased'
        return torch.cat(feats), torch.cat(logits)


class FidProbe:
    """FID of generated samples against real training images in the feature network's space.

    Fixed noise (and, for conditional models, the real label mix), ``n`` per side: cheap
    enough to run at every sample grid, comparable across steps of one run.
    """

    def __init__(self, extract: DomainFeatures, real_f: Tensor, z: Tensor, y: Tensor | None):
        self.extract, self.real_f, self.z, self.y = extract, real_f, z, y

    @classmethod
    def create(
        cls,
        path: Path,
        images: np.ndarray,
        labels: np.ndarray,
        data_sha256: str,
        *,
        n: int,
        latent_dim: int,
        conditional: bool,
        seed: int,
        device: torch.device,
        fast: FastPath | None = None,
    ) -> FidProbe | None:
        """None (with a warning) when the feature network was trained on other data."""
        extract = DomainFeatures(path, device, batch=500, fast=fast)
        if extract.meta["data_sha256"] != data_sha256:
            log.warning("%s was trained on other data: no FID during training", path)
            return None
        n = min(n, len(images))
        idx = np.random.default_rng(seed).choice(len(images), n, replace=False)
        real_f, _ = extract(to_unit_range(images[idx], device))
        z = torch.randn(n, latent_dim, generator=torch.Generator().manual_seed(seed + 13))
        y = torch.from_numpy(labels[idx]) if conditional else None
        return cls(extract, real_f.cpu(), z, y)

    def __call__(self, sample: Callable[[Tensor, Tensor | None], Tensor]) -> float:
        """``sample(z, labels) -> images``: the generator to score (e.g. ``Trainer.sample``)."""
        fake_f, _ = self.extract(sample(self.z, self.y))
        return fid(self.real_f, fake_f.cpu())
