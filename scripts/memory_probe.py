"""Resident memory of a process that runs bf16-autocast matmuls of a new row count every step, as
length-bucketed training batches give (a probe of the allocator, not of coral-bench's code).

    python scripts/memory_probe.py                                   # glibc defaults
    MALLOC_MMAP_THRESHOLD_=1048576 python scripts/memory_probe.py    # a fixed mmap threshold

glibc raises its mmap threshold each time a large block mapped by mmap is freed (up to 32 MiB), so
later blocks of that size come from the heap, where blocks of ever-changing sizes fragment it and
the resident size grows; setting the threshold fixes it (and turns the adjustment off).
"""

from __future__ import annotations

import argparse

import torch


def anonymous_rss_mib() -> int:
    with open("/proc/self/status") as fh:
        line = next(line for line in fh if line.startswith("RssAnon"))
    return int(line.split()[1]) // 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    weight = torch.randn(576, 1152, requires_grad=True)  # SmolLM2-135M's hidden size, EAGLE's fc input
    head = torch.randn(8192, 576)  # the --loss-vocab 8192 head
    print(f"step 0: {anonymous_rss_mib()} MiB anonymous resident")
    for step in range(1, args.steps + 1):
        rows = 1000 + 7 * step  # a new shape every step
        x = torch.randn(rows, 1152)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = torch.nn.functional.linear(torch.nn.functional.linear(x, weight), head)
        logits.float().logsumexp(-1).sum().backward()
        weight.grad = None
        if step % args.every == 0:
            print(f"step {step}: {anonymous_rss_mib()} MiB anonymous resident", flush=True)


if __name__ == "__main__":
    main()
