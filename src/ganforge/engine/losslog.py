"""The loss log of a training run: per-step losses kept on the device and moved to the host in
one sync per flush, checked for divergence there (``train.log_every``)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from torch import Tensor

from ganforge.core.checkpoint import list_checkpoints
from ganforge.core.files import write_csv
from ganforge.engine.trainer import Trainer
from ganforge.errors import DivergenceError


class LossLog:
    """Per-step losses kept on the device and moved to the host in one sync per flush."""

    def __init__(self, trainer: Trainer, history: list[dict[str, float]], run_dir: Path) -> None:
        self.trainer, self.history, self.run_dir = trainer, history, run_dir
        self.pending: list[dict[str, Tensor]] = []
        # real images the discriminator sees per step
        self.images_per_step = trainer.params.train.batch_size * trainer.variant.d_steps
        self.window_start, self.window_step0 = time.perf_counter(), trainer.step_count
        self.rate = 0.0

    def flush(self) -> list[dict[str, float]]:
        """Move pending losses to the host, check they are finite, extend and return history."""
        if not self.pending:
            return []
        keys = list(self.pending[0])
        values = torch.stack([torch.stack([p[k].float() for k in keys]) for p in self.pending])
        values = values.cpu().numpy()  # (pending steps, losses): the one host sync
        step_now, now = self.trainer.step_count, time.perf_counter()
        seconds = max(now - self.window_start, 1e-9)
        self.rate = (step_now - self.window_step0) * self.images_per_step / seconds
        self.window_start, self.window_step0 = now, step_now
        first, sparse = step_now - len(self.pending) + 1, self.trainer.variant.sparse_stats
        self.pending.clear()
        rows = []
        for i, row in enumerate(values):
            bad = [
                k
                for k, v in zip(keys, row, strict=True)
                if not math.isfinite(v) and k not in sparse
            ]
            if bad:
                self._diverged(first + i, bad[0], row[keys.index(bad[0])])
            rows.append({"step": first + i, **dict(zip(keys, map(float, row), strict=True))})
            rows[-1]["img_per_s"] = self.rate
        self.history.extend(rows)
        return rows

    def _diverged(self, step: int, key: str, value: float) -> None:
        write_csv(self.run_dir / "history.csv", self.history)
        kept = list_checkpoints(self.run_dir / "checkpoints")
        where = f"last good checkpoint: {kept[0]}" if kept else "no checkpoint was written yet"
        raise DivergenceError(
            f"step {step}: {key} is {value} (non-finite); training stopped, {where}; "
            "lower train.lr (or the penalty weights) or check the data"
        )
