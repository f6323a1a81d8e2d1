"""The machine fingerprint that a cached tree choice is valid for (docs/methods.md §7).

Everything that moves a latency term: the CPU (model, the vector extensions torch dispatches to,
logical cores, the threads a run uses) or the accelerator, the working dtype, torch's version, and the
target's architecture. Two machines with the same fingerprint price a tree alike; any difference
re-measures. ``COST_MODEL_VERSION`` changes when the search itself changes (grid, budget, model).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path

import torch

from coral_bench.core.target import Target

COST_MODEL_VERSION = 1
# the CPU flags that decide which kernels run (and so the dtype default and every latency term)
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
             "amx_int8", "asimd", "sve", "bf16")


def cpu_model_and_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, tuple[str, ...]]:
    """The CPU's model name and which of :data:`CPU_FLAGS` it has (Linux' cpuinfo; elsewhere platform's)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return platform.processor() or platform.machine(), ()
    model, flags = platform.machine(), set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and model == platform.machine():
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model, tuple(f for f in CPU_FLAGS if f in flags)


def machine_fingerprint(target: Target, dtype: str, threads: int) -> dict:
    """The facts a tree choice depends on (recorded with it; :func:`fingerprint_key` names them)."""
    device = target.device
    cpu, flags = cpu_model_and_flags()
    facts = {"cost_model_version": COST_MODEL_VERSION, "device": device.type, "cpu": cpu, "cpu_flags": list(flags),
             "cpu_capability": torch.backends.cpu.get_cpu_capability(), "logical_cpus": os.cpu_count(),
             "threads": threads, "dtype": dtype, "torch": torch.__version__.split("+")[0],
             "target": target.name, "target_config_sha256": _config_hash(target)}
    if device.type == "cuda":
        facts["accelerator"] = torch.cuda.get_device_name(device)
    return facts


def fingerprint_key(facts: dict) -> str:
    """A short, stable name for a set of facts (a fingerprint: the cache folder's name)."""
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


def _config_hash(target: Target) -> str:
    config = getattr(target.model, "config", None)
    text = config.to_json_string(use_diff=False) if hasattr(config, "to_json_string") else repr(config)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
