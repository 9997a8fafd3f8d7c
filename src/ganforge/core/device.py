"""Where tensors live and how pixels become model inputs, written once."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ganforge.errors import ConfigError


def resolve_device(name: str, key: str = "train.device") -> torch.device:
    """``auto`` -> CUDA when present, else CPU; an explicit CUDA device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"{key}: '{name}' requested but no CUDA device is available (use auto or cpu)"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"{key}: '{name}' but only {torch.cuda.device_count()} CUDA device(s)"
            )
    return device


def to_unit_range(images: np.ndarray | Tensor, device: torch.device | str | None = None) -> Tensor:
    """uint8 pixels (N, C, H, W) in 0..255 -> float32 (N, C, H, W) in [-1, 1] on ``device``.

    The one place the data's pixel scale meets the models' tanh range: generators emit
    [-1, 1], so real images must arrive in the same range.
    """
    x = torch.as_tensor(images)
    if device is not None:
        x = x.to(device, non_blocking=True)
    return x.float().div_(127.5).sub_(1.0)
