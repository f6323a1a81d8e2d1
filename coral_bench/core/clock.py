"""A device-aware clock and the machine-load guard: timings mean nothing on a busy 2-core machine."""

from __future__ import annotations

import os
import time

import torch


class Clock:
    """``now()`` in seconds; synchronises the accelerator first so queued kernels are counted."""

    def __init__(self, device: torch.device):
        self._sync = device.type != "cpu" and hasattr(torch, device.type)
        self._module = getattr(torch, device.type, None)

    def now(self) -> float:
        if self._sync:
            self._module.synchronize()
        return time.perf_counter()


BUSY_CORES = 0.3  # other work using more than this many cores makes timings on a small machine unreliable


def load_average(window_s: float = 1.0) -> float:
    """Cores busy with other work, measured over ``window_s`` while coral-bench itself idles.

    Read from /proc/stat (jiffies not idle ÷ all jiffies × cores). The one-minute load average would
    still count a benchmark that just finished, so consecutive runs would all look busy; it is only
    the fallback where /proc/stat does not exist.
    """
    first = _cpu_jiffies()
    if first is None:
        try:
            return os.getloadavg()[0]
        except OSError:
            return 0.0
    time.sleep(window_s)
    second = _cpu_jiffies()
    busy, total = second[0] - first[0], second[1] - first[1]
    return (os.cpu_count() or 1) * busy / total if total > 0 else 0.0


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs since boot."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # user … steal; guest time is already inside user
    return total - idle, total


def is_busy(load: float) -> bool:
    """Whether other work used more than BUSY_CORES cores."""
    return load > BUSY_CORES
