"""The CUDA clock: timestamps from CUDA events, taken once every stream of the timed device is idle.

``Clock`` (clock.py) stamps host time after ``torch.<device>.synchronize()`` of the *current* device
and stream set; on a machine with several GPUs, or with work queued on a side stream, that counts the
wrong device or too little. Here every stamp first waits for all streams of the clock's own device
(``torch.cuda.synchronize(device)``), then records an event on that device and reads the GPU's own
timeline (``elapsed_time`` since an origin event, ~0.5 µs resolution), so a span is the device time
between two drained points. ``clock_for`` picks the right clock for a device.
"""

from __future__ import annotations

import torch

from .clock import Clock


class CudaEventClock(Clock):
    """``now()`` in seconds on the GPU timeline of one CUDA device (see the module docstring)."""

    def __init__(self, device: torch.device):
        super().__init__(device)
        if device.type != "cuda":
            raise ValueError(f"CudaEventClock times CUDA devices, not {device}")
        self.device = torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())
        self._origin = self._drained_event()

    def _drained_event(self) -> torch.cuda.Event:
        torch.cuda.synchronize(self.device)  # every stream of this device, not only the current one
        event = torch.cuda.Event(enable_timing=True)
        event.record(torch.cuda.current_stream(self.device))
        event.synchronize()
        return event

    def now(self) -> float:
        return self._origin.elapsed_time(self._drained_event()) / 1e3  # ms → s


def clock_for(device: torch.device | str) -> Clock:
    """The clock that times work on ``device``: CUDA events on a CUDA device, else host time after the
    device's own synchronise (CPU: plain ``perf_counter``)."""
    device = torch.device(device)
    return CudaEventClock(device) if device.type == "cuda" else Clock(device)


def clock_description(device: torch.device | str) -> str:
    """How ``clock_for(device)`` stamps time (recorded in provenance and latency profiles)."""
    device = torch.device(device)
    if device.type == "cuda":
        return "CUDA events, each after torch.cuda.synchronize(device)"
    return "perf_counter" if device.type == "cpu" else f"perf_counter after {device.type} synchronize"
