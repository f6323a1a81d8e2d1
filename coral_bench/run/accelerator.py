"""Facts about the accelerator a run times on: its identity for provenance, its peak memory per method.

Both are empty on the CPU (a CPU run's machine is described by ``cpu_capability`` and ``device_name``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

PEAK_MEMORY = "device_memory.json"  # per method, kept in the run directory so a resume keeps the maximum


def accelerator_facts(device: torch.device | str) -> dict | None:
    """Name, memory, compute capability, driver and CUDA versions of a CUDA device (None elsewhere)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    return {"index": index, "name": props.name, "total_memory_bytes": int(props.total_memory),
            "compute_capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda,
            "driver": _driver_version(index), "device_count": torch.cuda.device_count()}


def _driver_version(index: int) -> str | None:
    """The NVIDIA driver's version from nvidia-smi (torch does not expose it); None without one."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader", f"--id={index}"],
                             capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None


class PeakMemory:
    """The peak memory allocated on a CUDA device while each method decodes, in bytes.

    Methods are interleaved per question, so each turn resets the device's peak counter and the
    method keeps the largest peak of its turns. Persisted in the run directory: a resumed run reports
    the maximum over all its sessions. Does nothing on other devices.
    """

    def __init__(self, device: torch.device | str, run_dir: Path):
        self.device = torch.device(device)
        self.enabled = self.device.type == "cuda"
        self.path = run_dir / PEAK_MEMORY
        self.peaks: dict[str, int] = json.loads(self.path.read_text()) if self.enabled and self.path.exists() else {}

    @contextmanager
    def measure(self, label: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        torch.cuda.reset_peak_memory_stats(self.device)
        yield
        peak = int(torch.cuda.max_memory_allocated(self.device))
        self.peaks[label] = max(peak, self.peaks.get(label, 0))

    def save(self) -> None:
        if self.enabled:
            self.path.write_text(json.dumps(self.peaks, indent=1, sort_keys=True) + "\n")

    def of(self, label: str) -> int | None:
        return self.peaks.get(label) if self.enabled else None
