"""Shared fixtures: tiny float64 targets built from a config in milliseconds (never a download),
and the repository's scripts loaded as modules."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from coral_bench.core.clock import Clock
from coral_bench.core.target import Target
from coral_bench.run.tiny import tiny_model, tiny_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="session")
def model64():
    return tiny_model(seed=0, dtype=torch.float64)


@pytest.fixture
def target64(model64):
    return Target(model64, (2,), name="tiny64")


@pytest.fixture
def clock():
    return Clock(torch.device("cpu"))


SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def load_script(name: str):
    """scripts/NAME.py as a module (the scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def assert_speedup_model_adds_up(model: dict) -> None:
    """The identities of a ``speedup_model`` record (docs/methods.md §7): the drafting terms sum to the
    drafting time, the cycle's terms to its total, and SR∞ = τ · T_vanilla cycle / T_cycle."""
    cycle, vanilla = model["per_cycle_s"], model["vanilla_per_cycle_s"]
    for costs in (cycle, vanilla):
        assert costs["draft"] == pytest.approx(sum(costs[k] for k in ("body", "head", "softmax_topk", "tree")))
        assert costs["total"] == pytest.approx(sum(costs[k] for k in ("draft", "score", "verify", "commit", "loop")))
        assert costs["score"] > 0
    assert model["sr_infinity"] == pytest.approx(model["tau"] * vanilla["total"] / cycle["total"])
    assert model["speedup_predicted"] > 0


# Tiny models gain nothing from threads, and a busy machine makes multi-threaded tiny ops very slow.
torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def fixed_trees_and_a_private_tree_cache(tmp_path_factory):
    """``coral-bench run`` in a test decodes with the registry's fixed trees unless the test passes
    ``--tree auto`` (which measures this machine), and the tree cache is the session's own, never the user's."""
    patch = pytest.MonkeyPatch()
    patch.setenv("CORAL_BENCH_TREE", "fixed")
    patch.setenv("CORAL_BENCH_TREE_CACHE", str(tmp_path_factory.mktemp("tree-cache")))
    yield
    patch.undo()
