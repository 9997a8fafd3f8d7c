"""How many cores this process may use (no torch import: the ONNX runtime side uses it too)."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path


def usable_cores() -> int:
    """Cores this process may run on: its affinity, capped by a cgroup v2 CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return n


def _cpu_list() -> list[int] | None:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux: no /proc/stat either
        return None


class CoreMeter:
    """How many of this process's cores *other* processes keep busy, between two readings.

    Busy time comes from /proc/stat's lines for the CPUs in this process's affinity (user,
    nice, system, irq, softirq, steal), this process's own CPU time (all its threads) is
    taken out, and what is left is divided by the wall time: 1.0 = one core's worth of
    somebody else's work. Spinning OpenMP threads count as busy, which is what a neighbour
    that oversubscribes the cores looks like from here. None where /proc/stat is absent."""

    def __init__(self) -> None:
        self._cpus = _cpu_list()
        self._tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._last = self._read()

    def _read(self) -> tuple[float, float, float] | None:
        if self._cpus is None:
            return None
        try:
            lines = Path("/proc/stat").read_text().splitlines()
        except OSError:
            return None
        wanted, busy = {f"cpu{i}" for i in self._cpus}, 0
        for line in lines:
            name, *fields = line.split()
            if name in wanted:  # user nice system idle iowait irq softirq steal ...
                values = [int(v) for v in fields[:8]]
                busy += sum(values) - values[3] - values[4]
        return time.monotonic(), busy / self._tick, time.process_time()

    def others_busy(self) -> float | None:
        """Cores' worth of other processes' work since the last call (or construction)."""
        now, last = self._read(), self._last
        self._last = now
        if now is None or last is None or now[0] - last[0] < 0.05:
            return None
        others = (now[1] - last[1]) - (now[2] - last[2])
        return max(0.0, others / (now[0] - last[0]))


def free_cores(others_busy: float | None, usable: int) -> int:
    """Threads to run with: the usable cores less what other processes keep busy, a core
    counting as free when at least 70% of it is (a neighbour using half a core already
    makes a second thread wait on it at every parallel region). At least 1."""
    if others_busy is None:
        return usable
    return max(1, min(usable, math.floor(usable - others_busy + 0.3)))
