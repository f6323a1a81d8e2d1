"""Provenance recorded beside every result: versions, git hash, machine, load, date, command."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from importlib import metadata

import torch
import transformers

from coral_bench.paths import CHECKOUT_ROOT
from coral_bench.run.chat import template_hash
from coral_bench.core.clock import is_busy
from coral_bench.core.event_clock import clock_description
from coral_bench.run.accelerator import accelerator_facts
from coral_bench.run.targets import LoadedTarget


GIT_HASH_ENV = "CORAL_BENCH_GIT_HASH"


def git_hash() -> str | None:
    """The commit of the coral-bench checkout, with ``-dirty`` when it has uncommitted changes.
    ``$CORAL_BENCH_GIT_HASH``, when set, wins: a copy of the tree shipped to a remote machine may
    carry no ``.git``, or a stale one."""
    if os.environ.get(GIT_HASH_ENV):
        return os.environ[GIT_HASH_ENV]
    root = CHECKOUT_ROOT
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def coral_bench_version() -> str:
    try:
        return metadata.version("coral-bench")
    except metadata.PackageNotFoundError:
        return "unknown"


def device_name(device: str) -> str:
    if device.startswith("cpu"):
        return platform.processor() or platform.machine()
    module = getattr(torch, device.split(":")[0], None)
    return module.get_device_name() if module is not None and hasattr(module, "get_device_name") else device


def provenance(loaded: LoadedTarget, threads: int, sessions: list[dict], command: str) -> dict:
    """Provenance of a run; machine load is the worst over all its sessions (a session killed before
    its end has a start line only)."""
    load_before = max((s["load"] for s in sessions if s["event"] == "start"), default=0.0)
    load_after = max((s["load"] for s in sessions if s["event"] == "end"), default=0.0)
    return {
        "coral_bench_version": coral_bench_version(),
        "git_hash": git_hash(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "device": loaded.device,
        "device_name": device_name(loaded.device),
        "accelerator": accelerator_facts(loaded.device),
        "clock": clock_description(loaded.device),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_count": os.cpu_count(),
        "dtype": loaded.dtype,
        "threads": threads,
        "chat_template_sha256": template_hash(loaded.tokenizer),
        "load_average_before": round(load_before, 2),
        "load_average_after": round(load_after, 2),
        "load_measure": "cores busy with other work, 1 s from /proc/stat (else the 1-minute load average)",
        "busy_machine": is_busy(max(load_before, load_after)),
        "date": sessions[0]["date"],
        "command": command,
        "sessions": sessions,
    }


def session_event(event: str, load: float, command: str, samples_added: int | None = None) -> dict:
    """The start or end of one invocation of a run (the first or a resume)."""
    record = {"event": event, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "git_hash": git_hash(), "load": round(load, 2), "command": command}
    if samples_added is not None:
        record["samples_added"] = samples_added
    return record
