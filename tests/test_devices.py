"""Runs on every device the machine has: sampling (T > 0) end to end through ``run_suite``, the clock,
and the accelerator facts in results. The CPU cases always run; the CUDA cases carry the ``cuda``
marker and skip, saying why, where there is no CUDA device."""

from __future__ import annotations

import time

import pytest
import torch

from coral_bench.core.clock import Clock
from coral_bench.core.event_clock import CudaEventClock, clock_for, clock_description
from coral_bench.core.sampling import SamplingConfig
from coral_bench.run.accelerator import PEAK_MEMORY, accelerator_facts
from coral_bench.run.runner import RunConfig, run_suite
from coral_bench.run.specs import DrafterSpec

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=[pytest.mark.cuda, CUDA])]


@pytest.mark.parametrize("device", DEVICES)
def test_sampling_runs_end_to_end(tmp_path, device):
    """A CPU generator cannot sample CUDA tensors: each turn's generator must live on the target's device."""
    config = RunConfig(suite="mtbench", target="tiny-random", dtype="float32", device=device, threads=1, limit=1,
                       max_new_tokens=12, sampling=SamplingConfig(temperature=1.0, top_k=20),
                       drafters=tuple(DrafterSpec.parse(d) for d in ("oracle", "prompt-lookup", "eagle2:random")))
    results = run_suite(config, tmp_path / "run")
    assert results["provenance"]["device"].startswith(device)
    for label in ("oracle", "prompt-lookup", "eagle2"):
        entry = results["drafters"][label]
        assert entry["samples"] == 2 and entry["new_tokens"] > 0, label
    assert results["drafters"]["oracle"]["tau_pooled"] > 1.0  # the oracle's drafts are accepted at T > 0 too
    if device == "cuda":
        facts = results["provenance"]["accelerator"]
        assert facts["name"] and facts["total_memory_bytes"] > 0 and facts["cuda"]
        assert results["baseline"]["peak_device_memory_bytes"] > 0
        assert all(results["drafters"][label]["peak_device_memory_bytes"] > 0 for label in ("oracle", "eagle2"))
        assert (tmp_path / "run" / PEAK_MEMORY).is_file()
    else:
        assert results["provenance"]["accelerator"] is None
        assert "peak_device_memory_bytes" not in results["baseline"]
        assert not (tmp_path / "run" / PEAK_MEMORY).exists()


def test_the_cpu_clock_is_the_host_clock():
    clock = clock_for("cpu")
    assert type(clock) is Clock and clock_description("cpu") == "perf_counter"
    start = clock.now()
    time.sleep(0.01)
    assert 0.009 < clock.now() - start < 1.0
    assert accelerator_facts("cpu") is None


def test_an_event_clock_refuses_a_cpu():
    with pytest.raises(ValueError, match="CUDA devices"):
        CudaEventClock(torch.device("cpu"))


@pytest.mark.cuda
@CUDA
def test_the_cuda_clock_counts_work_queued_on_another_stream():
    """A span must include kernels still running on a side stream when it ends."""
    device = torch.device("cuda")
    clock = clock_for(device)
    assert isinstance(clock, CudaEventClock)
    a = torch.randn(4096, 4096, device=device)
    side = torch.cuda.Stream(device)
    for _ in range(3):  # warm-up
        a @ a
    torch.cuda.synchronize(device)
    start = clock.now()
    with torch.cuda.stream(side):
        for _ in range(20):
            a = a @ a / 64
    queued = clock.now() - start
    host = time.perf_counter()
    torch.cuda.synchronize(device)
    assert time.perf_counter() - host < 1e-3  # nothing was left: the clock waited for the side stream
    assert queued > 0
