"""scripts/sweep_table.py --select: the pre-registered rule that picks the full runs' options."""

from __future__ import annotations

import pytest

from conftest import load_script


@pytest.fixture(scope="module")
def sweep_table():
    return load_script("sweep_table")


def trial(name: str, method: str, accuracy: list[float], complete: bool = True) -> dict:
    return {"trial": name, "method": method, "accuracy": accuracy, "complete": complete,
            "proxy": sum(accuracy)}  # only the ordering matters to select()


def test_chain_proxy_multiplies_depths(sweep_table):
    assert sweep_table.chain_proxy([0.5, 0.5, 0.5]) == pytest.approx(1 + 0.5 + 0.25 + 0.125)
    assert sweep_table.chain_proxy([]) == 1.0


def test_select_takes_the_best_complete_trial_per_method(sweep_table):
    rows = [trial("coral-tc0.05-l0.1", "coral", [0.6]), trial("coral-tc0.2-l0.5", "coral", [0.7]),
            trial("coral-anchor-step1", "coral", [0.9], complete=False),  # cut: not eligible
            trial("hass-k5-d1", "hass", [0.5]), trial("hass-exclude", "hass", [0.55])]
    lines = [line for line in sweep_table.select(rows) if not line.startswith("#")]
    assert lines == ["coral --csra-temperature 0.2 --csra-weight 0.5", "hass --history exclude"]


def test_every_trial_in_the_trials_file_has_options(sweep_table):
    options = sweep_table.trial_options()
    assert len(options) == 14 and all(v.startswith("--") for v in options.values())
