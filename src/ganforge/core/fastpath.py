"""The fast path: bf16 autocast, channels-last, torch.compile and CPU threads, chosen per device.

``train.bf16``, ``train.channels_last`` and ``train.compile`` (and the ``bf16`` and
``channels_last`` keys of ``featurenet`` and ``evaluate``) take true, false or ``auto``.
``auto`` picks what ``benchmarks/`` measured fastest without changing the results
(benchmarks/RESULTS.md, "CPU fast path"):

- bf16 autocast: on CUDA devices that support bf16, and on CPUs with native bf16
  instructions (AVX512-BF16 or AMX-BF16; 1.3-2.4x on this project's convolutions). Where
  bf16 would be emulated it is slower than fp32: off. Weights, optimiser state, losses and
  the R1/gradient penalties stay fp32 (autocast computes the convolutions in bf16).
- channels-last: on for every device (oneDNN and cuDNN both run NHWC convolutions faster;
  1.15x in fp32 on the CPU, more with bf16).
- torch.compile: off (on the 2-core CPU the compiled step was 8% slower, after a compile
  of about 20 s; on CUDA it was never measured to pay here).

Intra-op threads follow the cores that are free, unless ``OMP_NUM_THREADS`` says
otherwise: the cores this process may use (its CPU affinity, capped by a cgroup CPU quota;
torch's own default counts the machine's, which oversubscribes a container or a pinned
process) less the cores other processes keep busy, measured at start and again every 2 s
of a training loop (``follow_free_cores``). Two 2-thread trainings on 2 cores each ran
20x slower than one alone (every parallel region waits on a thread the other process has
descheduled); one thread each lost nothing (benchmarks/RESULTS.md, "Sharing the cores").
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch

from ganforge.core.cores import CoreMeter, free_cores, usable_cores

log = logging.getLogger(__name__)

Auto = bool | str  # true | false | "auto", validated by ganforge.config


def cpu_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX-BF16)."""
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is not None:
        caps = capabilities()
        return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)  # older torch
    return bool(probe is not None and probe())


class ThreadGovernor:
    """torch's intra-op threads (process-wide) = the usable cores other processes leave free."""

    EVERY_S = 2.0  # between measurements: long enough to average a neighbour's bursts

    def __init__(self, usable: int) -> None:
        self.usable, self.meter = usable, CoreMeter()
        self.due = time.monotonic() + self.EVERY_S
        self.used: set[int] = set()  # every count set since start(): numerics differ between them

    def start(self) -> int:
        """Measure for 0.1 s (longer if the meter is older) and set the threads from it."""
        time.sleep(max(0.0, 0.1 - (time.monotonic() - (self.due - self.EVERY_S))))
        self.due = time.monotonic()
        self.used.clear()
        self.tick()
        self.used.add(torch.get_num_threads())
        return torch.get_num_threads()

    def tick(self) -> None:
        """Cheap between measurements (one clock read): call it every step of a loop."""
        now = time.monotonic()
        if now < self.due:
            return
        self.due = now + self.EVERY_S
        others = self.meter.others_busy()
        n = free_cores(others, self.usable)
        if n != torch.get_num_threads():
            log.debug("%.2f cores busy elsewhere: %d intra-op threads", others or 0.0, n)
            torch.set_num_threads(n)
            self.used.add(n)


_governor: ThreadGovernor | None = None


def set_threads() -> tuple[int, str]:
    """Set torch's intra-op threads from the free cores; returns (threads, why)."""
    global _governor
    if os.environ.get("OMP_NUM_THREADS"):
        _governor = None
        return torch.get_num_threads(), "OMP_NUM_THREADS"
    usable = usable_cores()
    if _governor is None or _governor.usable != usable:
        _governor = ThreadGovernor(usable)
    n = _governor.start()
    return n, f"{n} of {usable} usable cores free, re-measured every {ThreadGovernor.EVERY_S:g} s"


def threads_used() -> list[int]:
    """The intra-op thread counts this stage ran with since its fast path was resolved.
    CPU results depend on the count (reductions split differently), so a retrain that ran
    with other counts than the last one is not bit-identical to it; [] under OMP_NUM_THREADS
    (one fixed count, the one the fast path records)."""
    return sorted(_governor.used) if _governor is not None else []


def follow_free_cores() -> None:
    """In a training loop, every step: the threads follow the free cores (a no-op under
    OMP_NUM_THREADS, and before a stage has resolved its fast path)."""
    if _governor is not None:
        _governor.tick()


@dataclass(frozen=True)
class FastPath:
    """What one stage runs with on its device, and why."""

    bf16: bool
    channels_last: bool
    compile: bool
    threads: int  # at start: the threads follow the free cores during the run
    why: str  # e.g. "bf16: cpu has native bf16; threads: 2 of 2 usable cores free, ..."

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self, device: torch.device) -> AbstractContextManager:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def record(self) -> dict[str, Any]:
        """For summary.json, metrics and protocols."""
        return {
            "bf16": self.bf16,
            "channels_last": self.channels_last,
            "compile": self.compile,
            "threads": self.threads,
            "fast_path_why": self.why,
        }

    @classmethod
    def plain(cls) -> FastPath:
        """fp32, contiguous, not compiled, threads as they are: the reference numerics."""
        return cls(False, False, False, torch.get_num_threads(), "fp32")

    def describe(self) -> str:
        """For the stage's log line: ``bf16 on, channels-last on, compile off, 2 threads``."""
        on = {True: "on", False: "off"}
        return (
            f"bf16 {on[self.bf16]}, channels-last {on[self.channels_last]}, "
            f"compile {on[self.compile]}, {self.threads} threads ({self.why})"
        )


def _bf16_auto(device: torch.device) -> tuple[bool, str]:
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        return ok, "cuda supports bf16" if ok else "this cuda device has no bf16"
    if device.type == "cpu":
        ok = cpu_native_bf16()
        return ok, "cpu has native bf16" if ok else "cpu has no native bf16 (emulated is slower)"
    return False, f"{device.type}: not measured"


def resolve(
    device: torch.device, bf16: Auto, channels_last: Auto, compile: Auto = False
) -> FastPath:
    """Each ``auto`` -> this device's measured choice; explicit true/false are kept.

    Also sets the intra-op threads (process-wide), which every stage wants the same."""
    reasons = []
    if bf16 == "auto":
        bf16, why = _bf16_auto(device)
        reasons.append(f"bf16 auto: {why}")
    if channels_last == "auto":
        channels_last = device.type in ("cpu", "cuda")
    if compile == "auto":
        compile = False
    threads, why = set_threads()
    reasons.append(f"threads: {why}")
    return FastPath(bool(bf16), bool(channels_last), bool(compile), threads, "; ".join(reasons))
