"""Checkpoints that describe themselves and prove they are intact.

Every file is written atomically with a ``<file>.sha256`` sidecar written after it, and
read back only if the digest matches, with ``torch.load(weights_only=True)``: a
truncated, bit-flipped or foreign file raises ``CheckpointError`` naming it, never
loads garbage.

Two kinds:
- training state ``<run>/checkpoints/step_00001500.pt``: G, D, both optimisers, EMA,
  step, RNG and sampler state, loss history, params; the newest ``keep`` are kept and
  ``load_latest`` falls back to an older one (with a warning) if the newest is bad.
- the generator ``<run>/generator.pt`` (``GENERATOR_FORMAT``): family, constructor
  kwargs, EMA and raw weights, params, data description. Nothing else is needed to
  rebuild it (``load_generator``).
"""

from __future__ import annotations

import io
import logging
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ganforge.errors import CheckpointError
from ganforge.io import atomic_path, sha256_file

log = logging.getLogger(__name__)

STATE_FORMAT = "ganforge.checkpoint/1"
GENERATOR_FORMAT = "ganforge.generator/1"


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def save_verified(obj: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    # Serialise to memory first: torch.save names the zip's inner folder after the file it
    # writes, and our temp names are random, so identical weights would hash differently.
    buf = io.BytesIO()
    torch.save(obj, buf)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())
    digest = sha256_file(path)
    with atomic_path(_sidecar(path)) as tmp:
        tmp.write_text(f"{digest}  {path.name}\n")
    return path


def load_verified(
    path: str | Path, expect_format: str, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: not found")
    side = _sidecar(path)
    if not side.is_file():
        raise CheckpointError(f"{path}: no {side.name} checksum file (incomplete write?)")
    expected = side.read_text().split()[0] if side.read_text().strip() else ""
    if sha256_file(path) != expected:
        raise CheckpointError(f"{path}: sha256 does not match {side.name} (truncated or corrupt)")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot load ({str(exc).splitlines()[0]})") from None
    if not isinstance(obj, dict) or obj.get("format") != expect_format:
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path}: format {found!r}, expected {expect_format!r}")
    return obj


# --------------------------------------------------------------------------- training state


def checkpoint_path(ckpt_dir: Path, step: int) -> Path:
    return ckpt_dir / f"step_{step:08d}.pt"


def list_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """Newest first."""
    ckpt_dir = Path(ckpt_dir)
    return sorted(ckpt_dir.glob("step_*.pt"), reverse=True) if ckpt_dir.is_dir() else []


def save_state(state: dict[str, Any], ckpt_dir: str | Path, keep: int = 2) -> Path:
    ckpt_dir = Path(ckpt_dir)
    path = save_verified(
        {"format": STATE_FORMAT, **state}, checkpoint_path(ckpt_dir, state["step"])
    )
    for old in list_checkpoints(ckpt_dir)[keep:]:
        old.unlink(missing_ok=True)
        _sidecar(old).unlink(missing_ok=True)
    return path


def load_latest(
    ckpt_dir: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, Any], Path]:
    """The newest intact checkpoint; older ones are tried, with a warning, when newer are bad."""
    candidates = list_checkpoints(ckpt_dir)
    if not candidates:
        raise CheckpointError(f"{ckpt_dir}: no checkpoints to resume from")
    problems = []
    for path in candidates:
        try:
            state = load_verified(path, STATE_FORMAT, map_location)
        except CheckpointError as exc:
            log.warning("%s; trying an older checkpoint", exc)
            problems.append(str(exc))
            continue
        return state, path
    raise CheckpointError(f"{ckpt_dir}: no intact checkpoint ({'; '.join(problems)})")


# --------------------------------------------------------------------------- generator file


def save_generator(
    path: str | Path,
    *,
    family: str,
    generator_kwargs: dict[str, int],
    ema_state: dict[str, torch.Tensor],
    raw_state: dict[str, torch.Tensor],
    params: dict[str, Any],
    data: dict[str, Any],
    step: int,
) -> Path:
    return save_verified(
        {
            "format": GENERATOR_FORMAT,
            "family": family,
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
    """Rebuild the generator (eval mode) from its file alone; returns (G, metadata)."""
    from ganforge.models import build_generator

    meta = load_verified(path, GENERATOR_FORMAT)
    try:
        G = build_generator(meta["family"], meta["generator_kwargs"])
        G.load_state_dict(meta["ema_state_dict" if ema else "raw_state_dict"])
    except (KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(
            f"{path}: does not rebuild a generator ({str(exc).splitlines()[0]})"
        ) from None
    G.to(device).eval()
    meta = {k: v for k, v in meta.items() if not k.endswith("state_dict")}
    return G, meta
