"""Progress of a long loop: a tqdm bar on a terminal, plain log lines everywhere else."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("ganforge.stages.train")


class Progress:
    """A tqdm bar on a terminal; elsewhere (DVC, CI, a log file) a plain line at every tenth
    of the run or every ``every_s`` seconds, whichever comes first:

    ganforge train: INFO: step 1200/3000 (40%)  3,105 img/s  d_loss 1.234  g_loss 0.987  eta 58 s
    """

    def __init__(
        self, model: str, device: str, start: int, total: int, bar: bool, every_s: float = 20.0
    ):
        self.start, self.total, self.every_s = start, total, every_s
        self.t0 = self.last_t = time.perf_counter()
        self.next_tenth = start + max(1, total // 10)
        self.bar = None
        if bar:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, initial=start, mininterval=1.0, unit="step", dynamic_ncols=True
            )
            self.bar.set_description(f"{model} {device}")

    def update(self, step: int, last: dict[str, float] | None, rate: float) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            if last:
                self.bar.set_postfix(
                    d=f"{last['d_loss']:.3f}", g=f"{last['g_loss']:.3f}", img_s=f"{rate:,.0f}"
                )
            return
        now = time.perf_counter()
        if not last or (
            step < self.next_tenth and now - self.last_t < self.every_s and step != self.total
        ):
            return
        while self.next_tenth <= step:
            self.next_tenth += max(1, self.total // 10)
        self.last_t = now
        done = step - self.start
        eta = (self.total - step) * (now - self.t0) / done if done else float("nan")
        log.info(
            "step %d/%d (%d%%)  %s img/s  d_loss %.3f  g_loss %.3f  eta %.0f s",
            step,
            self.total,
            100 * step // self.total,
            f"{rate:,.0f}",
            last["d_loss"],
            last["g_loss"],
            eta,
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Timer:
    """``with timer("step_s"):`` times a step (CUDA work included: it synchronises at the
    end); ``seconds()`` gives every step and the total, rounded, for ``timing_s``."""

    def __init__(self, device) -> None:  # a torch.device
        self.device, self.start, self.steps = device, time.perf_counter(), {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        if self.device.type == "cuda":
            import torch

            torch.cuda.synchronize()
        self.steps[name] = time.perf_counter() - t0

    def seconds(self) -> dict[str, float]:
        total = {"total_s": time.perf_counter() - self.start}
        return {k: round(v, 3) for k, v in {**self.steps, **total}.items()}
