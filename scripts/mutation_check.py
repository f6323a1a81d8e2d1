"""Do the lossless tests catch a broken decoder? Break acceptance on purpose, one mutation at a time,
in a scratch copy of the package, and run the equality, verification and cache tests against it.

Each mutant must make at least one of those tests fail ("caught"); a mutant the tests pass is a hole
in them ("MISSED", exit status 1). The checkout itself is never modified. About a minute per mutant
on 2 cores:   .venv/bin/python scripts/mutation_check.py [--only NAME] [--tests FILE…]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ("tests/test_decode.py", "tests/test_verify.py", "tests/test_target.py", "tests/test_eagle.py",
         "tests/test_early_exit.py", "tests/test_acceptance.py")


@dataclass(frozen=True)
class Mutant:
    name: str
    what: str
    file: str  # relative to the checkout
    old: str  # must occur exactly once
    new: str


MUTANTS = (
    Mutant("greedy-accepts-first-child", "greedy accepts the first child at the root whatever the target says",
           "coral_bench/core/verify.py", "            if tokens[child] == want:\n",
           "            if tokens[child] == want or node == 0:\n"),
    Mutant("greedy-wrong-bonus", "greedy emits the draft's token instead of the target's after a full path",
           "coral_bench/core/verify.py",
           "            out.append(want)  # bonus: the target's own token after the last accepted node\n",
           "            out.append(tokens[node])  # mutant\n"),
    Mutant("greedy-one-too-many", "greedy emits one extra target token after the bonus",
           "coral_bench/core/verify.py",
           "            return Verdict(path=tuple(path), tokens=tuple(out))\n        path.append(child)",
           "            return Verdict(path=tuple(path), tokens=tuple(out + [want]))\n        path.append(child)"),
    Mutant("rejection-always-accepts", "rejection sampling accepts every child with positive probability",
           "coral_bench/core/verify.py", "                if u * mass < px:\n", "                if px > 0.0:\n"),
    Mutant("commit-wrong-rows", "the cache keeps the first len(path) tree rows instead of the accepted ones",
           "coral_bench/core/target.py", "        if any(node != i for i, node in enumerate(path)):\n",
           "        if False:\n"),
    Mutant("commit-keeps-one-row-too-few", "the cache drops the last accepted row",
           "coral_bench/core/target.py", "        drop = self._pending - keep\n",
           "        drop = self._pending - keep + (1 if keep > 1 else 0)\n"),
)


def run(mutant: Mutant, tests: tuple[str, ...] = TESTS) -> tuple[bool, str]:
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        shutil.copytree(ROOT / "coral_bench", scratch / "coral_bench", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(ROOT / "tests", scratch / "tests", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(ROOT / "pyproject.toml", scratch / "pyproject.toml")
        target = scratch / mutant.file
        text = target.read_text()
        if text.count(mutant.old) != 1:
            raise SystemExit(f"{mutant.name}: the text to mutate occurs {text.count(mutant.old)} times in {mutant.file}")
        target.write_text(text.replace(mutant.old, mutant.new))
        env = {**os.environ, "PYTHONPATH": str(scratch)}
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                              cwd=scratch, env=env, capture_output=True, text=True)
        failed = [line for line in done.stdout.splitlines() if line.startswith("FAILED")]
        return done.returncode != 0, (failed[0][len("FAILED "):] if failed else done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run one mutant by name")
    parser.add_argument("--tests", nargs="+", default=TESTS, help="the test files to run against each mutant")
    args = parser.parse_args()
    missed = 0
    for mutant in MUTANTS:
        if args.only and mutant.name != args.only:
            continue
        caught, detail = run(mutant, tuple(args.tests))
        missed += not caught
        print(f"{'caught' if caught else 'MISSED'}  {mutant.name}: {mutant.what} — {detail}", flush=True)
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
