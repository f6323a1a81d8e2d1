"""scripts/mutation_check.py stays runnable: every mutant's text still occurs exactly once in its file,
and a mutant applied to a copy of its file really changes it (the script itself runs the lossless tests
against each mutant: about a minute each, so it is run by hand, not here)."""

from pathlib import Path

import pytest

from conftest import load_script

ROOT = Path(__file__).resolve().parent.parent
script = load_script("mutation_check")


@pytest.mark.parametrize("mutant", script.MUTANTS, ids=lambda m: m.name)
def test_each_mutant_applies_once(mutant):
    text = (ROOT / mutant.file).read_text()
    assert text.count(mutant.old) == 1, f"{mutant.name}: its text no longer occurs once in {mutant.file}"
    assert text.replace(mutant.old, mutant.new) != text


def test_the_script_checks_the_lossless_tests():
    assert {"tests/test_decode.py", "tests/test_verify.py", "tests/test_target.py"} <= set(script.TESTS)
    assert all((ROOT / t).is_file() for t in script.TESTS)
