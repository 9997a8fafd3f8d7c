"""The self-describing generator file ``<run>/generator.pt`` (``GENERATOR_FORMAT``).

It holds the family, whether it is conditional, the constructor kwargs, the EMA and raw
weights, the params and a description of the data. Nothing else is needed to rebuild it:

    from ganforge.models import load_generator
    G, meta = load_generator("models/main/generator.pt")   # eval mode, EMA weights
    images = G(torch.randn(16, G.latent_dim))               # (16, C, H, W) in [-1, 1]

Written and read through ``ganforge.core.checkpoint``'s verified save/load (atomic,
sha256 sidecar, ``weights_only``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ganforge.core.checkpoint import load_verified, save_verified
from ganforge.errors import CheckpointError
from ganforge.models.registry import variant_class

GENERATOR_FORMAT = "ganforge.generator/1"


def save_generator(
    path: str | Path,
    *,
    family: str,
    conditional: bool,
    generator_kwargs: dict[str, int],
    ema_state: dict[str, torch.Tensor],
    raw_state: dict[str, torch.Tensor],
    params: dict[str, Any],
    data: dict[str, Any],
    step: int,
) -> str:
    """Write the file and its sidecar; returns its sha256."""
    return save_verified(
        {
            "format": GENERATOR_FORMAT,
            "family": family,
            "conditional": conditional,
            "generator_kwargs": generator_kwargs,
            "ema_state_dict": {k: v.detach().cpu() for k, v in ema_state.items()},
            "raw_state_dict": {k: v.detach().cpu() for k, v in raw_state.items()},
            "params": params,
            "data": data,  # image_size, channels, num_classes, class_names, content_sha256
            "step": step,
        },
        path,
    )


def load_generator(
    path: str | Path, device: str | torch.device = "cpu", ema: bool = True
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the generator (eval mode) from its file alone; returns (G, metadata).

    ``metadata`` has everything but the weights, plus ``sha256`` (the verified digest)
    and ``conditional``.
    """
    meta = load_verified(path, GENERATOR_FORMAT)
    try:
        cls = variant_class(meta["family"])
        G = cls.generator_cls(**meta["generator_kwargs"])
        G.load_state_dict(meta["ema_state_dict" if ema else "raw_state_dict"])
    except (KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(
            f"{path}: does not rebuild a generator ({str(exc).splitlines()[0]})"
        ) from None
    G.to(device).eval()
    meta = {k: v for k, v in meta.items() if not k.endswith("state_dict")}
    meta.setdefault("conditional", cls.conditional)  # files written before the key existed
    return G, meta
