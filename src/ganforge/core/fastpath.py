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

Intra-op threads are set to the cores this process may use (its CPU affinity, capped by a
cgroup CPU quota), unless ``OMP_NUM_THREADS`` says otherwise: torch's own default counts
the machine's cores, which oversubscribes a container or a pinned process.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch

from ganforge.core.cores import usable_cores

Auto = bool | str  # true | false | "auto", validated by ganforge.config


def cpu_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX-BF16)."""
    capabilities = getattr(torch.cpu, "get_capabilities", None)
    if capabilities is not None:
        caps = capabilities()
        return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)  # older torch
    return bool(probe is not None and probe())


def set_threads() -> tuple[int, str]:
    """Set torch's intra-op threads; returns (threads, why)."""
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads(), "OMP_NUM_THREADS"
    n = usable_cores()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n, "usable cores"


@dataclass(frozen=True)
class FastPath:
    """What one stage runs with on its device, and why."""

    bf16: bool
    channels_last: bool
    compile: bool
    threads: int
    why: str  # e.g. "bf16: cpu has native bf16; threads: usable cores"

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
