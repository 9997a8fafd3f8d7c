"""Keep the best, not the last: the best-FID EMA generator of a run, and the plateau rule.

The in-training FID probe scores the EMA generator at every sample grid; ``KeepBest`` holds a
host copy of the EMA and raw generator weights of the lowest FID so far, so a run that trains
past its best still ships its best. ``patience`` (in probes, 0 = off) says when the run has
stopped improving. Its state goes into checkpoints: a resumed run keeps the same best.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor, nn


def _host_copy(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


class KeepBest:
    def __init__(self, patience: int = 0) -> None:
        self.patience = patience
        self.step: int | None = None  # the step of the best FID so far
        self.fid = math.inf
        self.ema: dict[str, Tensor] | None = None
        self.raw: dict[str, Tensor] | None = None
        self.since = 0  # probes since the best

    def record(self, step: int, fid: float) -> bool:
        """The plateau rule alone: count a probe; True when it is a new best (strictly lower)."""
        if fid < self.fid:
            self.step, self.fid, self.since = step, fid, 0
            return True
        self.since += 1
        return False

    def update(self, step: int, fid: float, ema: nn.Module, raw: nn.Module) -> bool:
        """Record a probe and keep the weights of a new best; True when it is one."""
        if self.record(step, fid):
            self.ema, self.raw = _host_copy(ema), _host_copy(raw)
            return True
        return False

    @property
    def plateaued(self) -> bool:
        return self.patience > 0 and self.since >= self.patience

    def ship(self, ema: nn.Module, raw: nn.Module, keep: str, last_step: int) -> dict[str, Any]:
        """Put the generator to ship into ``ema`` and ``raw``: for ``train.keep=best`` the
        best-FID one when the probe ran (training is over; its last state is in the
        checkpoints), else they stay the last. -> which step is shipped, and the best probe."""
        if keep == "best" and self.step is not None and self.step != last_step:
            ema.load_state_dict(self.ema)
            raw.load_state_dict(self.raw)
        shipped = self.step if keep == "best" and self.step is not None else last_step
        fid = self.fid if self.step is not None else None
        return {"shipped_step": shipped, "best_probe_fid": fid, "best_probe_step": self.step}

    def state_dict(self) -> dict[str, Any]:
        keys = ("step", "fid", "since", "ema", "raw")
        return {k: getattr(self, k) for k in keys}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.fid, self.since = state["step"], state["fid"], state["since"]
        self.ema, self.raw = state["ema"], state["raw"]


def plateau_stop(curve: list[list[float]], patience: int) -> list[float] | None:
    """Where ``train.patience`` = ``patience`` would stop a run with this probe curve
    ([[step, fid], ...]): [step, best FID by then], or None if it runs to the end."""
    keep = KeepBest(patience)
    for step, fid in curve:
        keep.record(int(step), fid)
        if keep.plateaued:
            return [step, keep.fid]
    return None
