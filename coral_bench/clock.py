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


def load_average() -> float:
    """One-minute load average (0.0 where the OS has none)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def is_busy(load: float, threads: int) -> bool:
    """More runnable work than the cores left to the benchmark (the benchmark itself uses ``threads``)."""
    cores = os.cpu_count() or 1
    return load > max(0.5, cores - threads + 0.5)
