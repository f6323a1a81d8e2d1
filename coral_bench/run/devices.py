"""Device and dtype resolution: the one place that knows which dtypes a CPU runs natively."""

from __future__ import annotations

from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


def resolve_device(name: str | None) -> torch.device:
    """``None`` = the accelerator when present, else CPU."""
    if name is None:
        acc = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
        return acc if acc is not None else torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"invalid device {name!r}") from None
    if dev.type != "cpu" and not (torch.accelerator.is_available() and torch.accelerator.current_accelerator().type == dev.type):
        raise ValueError(f"device {name!r} is not available on this machine")
    return dev


def cpu_has_native_bf16() -> bool:
    """avx512_bf16 or AMX: without them bf16 matmuls are emulated and slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(name: str | None, device: torch.device) -> tuple[torch.dtype, str]:
    """The working dtype and why it was chosen (recorded in results)."""
    if name is not None:
        if name not in DTYPES:
            raise ValueError(f"invalid dtype {name!r}: choose from {', '.join(DTYPES)}")
        return DTYPES[name], "requested"
    if device.type == "cpu":
        if cpu_has_native_bf16():
            return torch.bfloat16, "default: CPU has native bf16 (avx512_bf16/amx)"
        return torch.float32, "default: CPU lacks native bf16, float32 is faster"
    return torch.bfloat16, f"default on {device.type}"
