"""One process of the 2-process DDP test (tests/test_train.py): trains each run of a JSON spec on the
tiny fp64 target. Started with RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT set, which is what
Accelerate reads for multi-CPU (gloo) training.

    python tests/ddp_worker.py STORE OUT_ROOT RUNS_JSON
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import torch

from coral_bench.core.target import Target
from coral_bench.run.tiny import tiny_model
from coral_bench.train.loop import train
from coral_bench.train.settings import TrainSettings


def main() -> None:
    store, out_root, spec = sys.argv[1:4]
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    target = Target(tiny_model(seed=0, dtype=torch.float64), (2,), name="tiny64")
    for name, body in json.loads(Path(spec).read_text()).items():
        train(store, Path(out_root) / name, TrainSettings.from_dict(body), target)


if __name__ == "__main__":
    main()
