"""Session fixtures of the component benchmarks (docs/benchmarks.md): the embedded target
(SmolLM2-135M) on the CPU in the dtype coral-bench picks by default, a fixed ~256-token prompt,
the shipped drafters built as ``coral-bench run`` builds them, and the machine facts every saved
result records.

Nothing here runs under ``make test``: the benchmarks are deselected there (marker ``benchmark``),
so these fixtures are never requested. The thread count is set by a fixture, not at import, so
collecting this file never changes the rest of the suite's settings (tests/conftest.py: 1 thread).
tests/benchmarks/ is a package (``__init__.py``) so that this file imports as ``benchmarks.conftest``:
without it, it would take the module name ``conftest`` and break ``from conftest import load_script``
in the other tests.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from coral_bench.core.target import Target, TargetOutput
from coral_bench.core.drafter import DraftContext, Drafter, DrafterSettings
from coral_bench.drafters.registry import build_drafter, tree_for
from coral_bench.drafters.shipped import shipped_checkpoint
from coral_bench.run import targets as loading
from coral_bench.run.chat import render
from coral_bench.run.devices import resolve_dtype
from coral_bench.run.specs import DrafterSpec
from coral_bench.run.suites import load_suite

PROMPT_TOKENS = 256  # the context every target/drafter benchmark runs at
THREADS_ENV = "BENCH_THREADS"  # torch intra-op threads; default: every CPU this process may use
DEVICE = "cpu"

# The three draft heads, as --drafter specs (the frequency subset is the one of the reference runs,
# reports/runs/reference-cpu: fs6144 = coral:<coral-router checkpoint>@vocab=6144).
HEADS = {
    "full": "coral",
    "subset6144": "fs6144=coral:{router}@vocab=6144",
    "routed": "coral-router",
}

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8")


def benchmark_threads() -> int:
    value = os.environ.get(THREADS_ENV)
    if value:
        return int(value)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_facts() -> dict[str, object]:
    """CPU model and the flags that decide the dtype and the speed of the matmuls."""
    model, ident, flags = None, None, set()
    try:
        text = Path("/proc/cpuinfo").read_text()
        if m := re.search(r"^model name\s*:\s*(.+)$", text, re.M):
            model = m.group(1).strip()
        fields = {k: re.search(rf"^{k}\s*:\s*(\S+)", text, re.M) for k in ("vendor_id", "cpu family", "model", "stepping")}
        if all(fields.values()):  # a virtualised CPU often names only its brand ("AMD EPYC")
            ident = " ".join(f"{k} {m.group(1)}" for k, m in fields.items())
        if m := re.search(r"^flags\s*:\s*(.+)$", text, re.M):
            flags = set(m.group(1).split())
    except OSError:
        pass
    if model is None:
        try:
            out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
            if m := re.search(r"^Model name:\s*(.+)$", out, re.M):
                model = m.group(1).strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return {"cpu_model": model or platform.processor() or "unknown", "cpu_id": ident,
            "cpu_flags": {f: f in flags for f in CPU_FLAGS},
            "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()}


def pytest_benchmark_update_machine_info(config, machine_info):
    """The same facts at the top of each saved JSON (machine_info), next to pytest-benchmark's own."""
    dtype, reason = resolve_dtype(None, torch.device(DEVICE))
    machine_info["coral_bench"] = {**cpu_facts(), "default_dtype": str(dtype).removeprefix("torch."),
                                   "dtype_reason": reason, "torch": torch.__version__,
                                   "threads": benchmark_threads()}


@dataclass(frozen=True)
class Embedded:
    """The loaded target, its prompt and the facts each benchmark records in extra_info."""

    target: Target
    prompt: tuple[int, ...]  # [PROMPT_TOKENS]
    facts: dict[str, object]

    def fresh(self) -> TargetOutput:
        """A new cache holding exactly the prompt (untimed; before a benchmark)."""
        return self.target.prefill(torch.tensor(self.prompt, dtype=torch.long))

    def restore(self) -> None:
        """Back to the prompt alone: drop a pending tree (Target.discard), re-prefill after a commit."""
        self.target.discard()
        if self.target.cache_len != len(self.prompt):
            self.fresh()


@pytest.fixture(scope="session")
def bench_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(benchmark_threads())
    yield torch.get_num_threads()
    torch.set_num_threads(before)


def _prompt(tokenizer) -> tuple[int, ...]:
    """MT-bench first turns in one chat message, rendered with the target's template, cut to 256 tokens."""
    suite = load_suite("mtbench")
    turns = [q.turns[0] for q in suite.questions]
    for n in range(1, len(turns) + 1):
        ids = render(tokenizer, ["\n\n".join(turns[:n])], [], suite.system_prompt)
        if len(ids) >= PROMPT_TOKENS:
            return tuple(ids[:PROMPT_TOKENS])
    raise RuntimeError("the mtbench suite is too short for a 256-token prompt")


@pytest.fixture(scope="session")
def embedded(bench_threads) -> Embedded:
    """SmolLM2-135M on the CPU, default dtype (bf16 with avx512_bf16/AMX, else fp32). Loads from the
    coral-bench cache ($CORAL_BENCH_CACHE), converting the GGUF once (~30 s) as coral-bench run does."""
    try:
        loaded = loading.load_target(loading.EMBEDDED, dtype=None, device=DEVICE)
    except loading.LoadError as err:
        pytest.skip(f"embedded target {loading.EMBEDDED} not installed: {err}")
    facts = {**cpu_facts(), "target": loaded.name, "dtype": loaded.dtype, "dtype_reason": loaded.dtype_reason,
             "device": loaded.device, "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
             "prompt_tokens": PROMPT_TOKENS}
    return Embedded(loaded.target, _prompt(loaded.tokenizer), facts)


def drafter_settings(spec_text: str) -> DrafterSettings:
    """The settings ``coral-bench run --drafter SPEC`` builds (run/runner.py ``_drafted``, no --tree)."""
    spec = DrafterSpec.parse(spec_text)
    return DrafterSettings(name=spec.name, tree=tree_for(spec.name, spec.tree), checkpoint=spec.checkpoint, seed=0)


@pytest.fixture(scope="session")
def drafters(embedded) -> dict[str, Drafter]:
    """head → the shipped drafter using it: coral (full head), coral on the router checkpoint's
    frequencies @vocab=6144 (subset head), coral-router (routed head); each with its default tree."""
    router = shipped_checkpoint(loading.EMBEDDED, "coral-router")
    if router is None or shipped_checkpoint(loading.EMBEDDED, "coral") is None:
        pytest.skip(f"the shipped coral / coral-router drafters for {loading.EMBEDDED} are missing")
    return {head: build_drafter(embedded.target, drafter_settings(spec.format(router=router)))
            for head, spec in HEADS.items()}


@pytest.fixture(scope="session")
def context(embedded) -> DraftContext:
    """What a drafter's begin() receives after the target's prefill of the prompt."""
    prefill = embedded.fresh()
    return DraftContext(embedded.prompt, int(prefill.logits[0].argmax()), prefill)
