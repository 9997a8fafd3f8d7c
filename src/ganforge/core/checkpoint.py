"""Checkpoints that describe themselves and prove they are intact.

Every file is written atomically with a ``<file>.sha256`` sidecar written after it, and
read back only if the digest matches, with ``torch.load(weights_only=True)``: a
truncated, bit-flipped or foreign file raises ``CheckpointError`` naming it, never
loads garbage.

Here: the verified save/load every such file uses, and the training state
``<run>/checkpoints/step_00001500.pt`` (G, D, both optimisers, EMA, step, RNG and sampler
state, loss history, params); the newest ``keep`` are kept and ``load_latest`` falls back
to an older one (with a warning) if the newest is bad. The generator file is built on
the same functions in ``ganforge.models.generator_file``; the feature network's in
``ganforge.metrics.features``.

``load_verified`` returns the digest it checked under ``"sha256"``, so no caller hashes
the file a second time.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import torch

from ganforge.core.files import atomic_path, sha256_file
from ganforge.errors import CheckpointError

log = logging.getLogger(__name__)

STATE_FORMAT = "ganforge.checkpoint/1"


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def save_verified(obj: dict[str, Any], path: str | Path) -> str:
    """Write ``obj`` to ``path`` and its ``.sha256`` sidecar; returns the digest."""
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
    return digest


def load_verified(
    path: str | Path, expect_format: str, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: not found")
    side = _sidecar(path)
    if not side.is_file():
        raise CheckpointError(f"{path}: no {side.name} checksum file (incomplete write?)")
    # a garbled sidecar (any bytes) simply does not match: never a decode error
    words = side.read_bytes()[:200].decode("ascii", errors="replace").split()
    expected = words[0] if words else ""
    if sha256_file(path) != expected:
        raise CheckpointError(f"{path}: sha256 does not match {side.name} (truncated or corrupt)")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch.load's failures vary by file; each is named with its cause
        first = (str(exc).splitlines() or [exc.__class__.__name__])[0][:200]
        raise CheckpointError(f"{path}: cannot load ({first})") from None
    if not isinstance(obj, dict) or obj.get("format") != expect_format:
        found = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path}: format {found!r}, expected {expect_format!r}")
    obj["sha256"] = expected
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
    path = checkpoint_path(ckpt_dir, state["step"])
    save_verified({"format": STATE_FORMAT, **state}, path)
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
