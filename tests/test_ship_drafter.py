"""scripts/ship_drafter.py: what goes into the package, and what is refused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from coral_bench.drafters.checkpoint import load_checkpoint, save_checkpoint
from coral_bench.drafters.eagle_model import EagleModel
from coral_bench.drafters.shipped import ASSETS_ENV, shipped_checkpoint
from coral_bench.run.targets import load_target
from coral_bench.train.loop import drafter_config
from conftest import load_script



@pytest.fixture(scope="module")
def ship():
    return load_script("ship_drafter").main


@pytest.fixture(scope="module")
def tiny():
    return load_target("tiny-random", dtype="float32", device="cpu").target


def trained(tiny, folder: Path, complete: bool) -> Path:
    store = str(Path.home() / "cache" / "store")
    meta = {"method": "hass", "budget": {"epochs": 1, "complete": complete}, "data": {"store": store},
            "command": f"coral-bench train --method hass --data {store}"}
    save_checkpoint(folder, EagleModel(drafter_config(tiny)), tiny.embedding_weight(), tiny.max_context, metadata=meta)
    (folder / "train-log.jsonl").write_text(json.dumps({"kind": "step", "step": 1}) + "\n")
    return folder


def test_a_complete_drafter_is_shipped_with_its_record(ship, tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(ASSETS_ENV, str(tmp_path / "assets"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # a checkpoint under the home folder, as in real use
    src = trained(tiny, Path.home() / "drafters" / "hass-run", complete=True)
    assert ship([str(src), "hass", "--target", "tiny-random"]) == 0
    dest = shipped_checkpoint("tiny-random", "hass")
    assert dest is not None and sorted(p.name for p in dest.iterdir()) == [
        "SHIPPED.json", "config.json", "model.safetensors", "train-log.jsonl"]
    record = json.loads((dest / "SHIPPED.json").read_text())
    assert record["method"] == "hass" and record["command"].startswith("python scripts/ship_drafter.py")
    assert str(Path.home()) not in (dest / "SHIPPED.json").read_text()
    for name, digest in record["sha256"].items():
        assert hashlib.sha256((dest / name).read_bytes()).hexdigest() == digest
    config = (dest / "config.json").read_text()
    assert str(Path.home()) not in config and "~/cache/store" in config
    ckpt = load_checkpoint(dest, tiny.embedding_weight())  # still loads against the target
    assert ckpt.metadata["data"]["store"] == "~/cache/store"
    assert ship([str(src), "hass", "--target", "tiny-random"]) == 2  # no silent replacement
    assert "--replace" in capsys.readouterr().err
    assert ship([str(src), "hass", "--target", "tiny-random", "--replace"]) == 0


def test_unfinished_or_mismatched_drafters_are_refused(ship, tiny, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(ASSETS_ENV, str(tmp_path / "assets"))
    src = trained(tiny, tmp_path / "cut", complete=False)
    assert ship([str(src), "hass", "--target", "tiny-random"]) == 2
    assert "not fully trained" in capsys.readouterr().err
    assert ship([str(tmp_path / "missing"), "hass", "--target", "tiny-random"]) == 2
    assert "error:" in capsys.readouterr().err
    assert shipped_checkpoint("tiny-random", "hass") is None  # nothing half-written
