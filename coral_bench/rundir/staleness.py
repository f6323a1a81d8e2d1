"""Are recorded runs still current? The git hash in each run's results.json against the checkout.

A run measures the decoder and drafter code it was made with. When any file in :data:`WATCHED`
differs between the recorded commit and the checkout (the working tree, uncommitted edits
included) in what it does, the run is ``stale``: its timings and acceptance may not hold any more, so it needs
redoing. Otherwise it is ``current``. A run is ``unknown`` when that cannot be decided: no git, no
git checkout, no hash recorded, a commit this repository lacks, or a ``-dirty`` hash (the run came
from uncommitted changes on top of that commit, and what they were is not recorded).

What a Python file does is its syntax tree without imports and docstrings (:func:`same_code`), followed
across renames (``git diff -M``): moving a module and rewriting the imports that name it, or editing
comments and docstrings, changes no measurement; any other edit does. Other files (shipped weights)
are compared byte for byte.

Reads results.json and runs ``git``; never imports torch. Resumed runs are checked for the hash of
every session (``provenance.sessions``), and the worst verdict wins.
"""

from __future__ import annotations

import ast
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from coral_bench.rundir import layout as rd

# Decoder and drafter code, relative to the checkout root (a folder ends with "/"); assets/ holds
# shipped drafter weights once there are any. A pathspec that matches nothing is fine for git.
WATCHED = ("coral_bench/core/", "coral_bench/drafters/", "coral_bench/assets/")
# Resolution, not measurement: the registry maps names to factories, kinds and default trees, and
# options.py parses drafter options; every run records what they resolved to (each method's drafter
# name, checkpoint argument and tree), so an edit there does not change what a recorded run measured.
VANILLA_CODE = ("coral_bench/drafters/vanilla.py",)  # the one drafter a vanilla-only run runs
UNWATCHED = ("coral_bench/drafters/registry.py", "coral_bench/drafters/options.py")
DIRTY = "-dirty"
LOOSE_RENAME = "30%"  # git similarity above which an added file may be a vanished one rewritten
CURRENT, STALE, UNKNOWN = "current", "stale", "unknown"
_WORST = (CURRENT, UNKNOWN, STALE)  # a run's verdict is the worst over its sessions' hashes
SHOWN = 3  # files and commits named in one line


class StaleCheckError(ValueError):
    """A run directory the check cannot read: one line that says what is wrong and where."""


@dataclass(frozen=True)
class Verdict:
    run: Path
    state: str  # CURRENT, STALE or UNKNOWN
    reason: str  # one line, without the run's name

    @property
    def ok(self) -> bool:
        return self.state == CURRENT

    @property
    def line(self) -> str:
        return f"{self.state}: {self.run.name}: {self.reason}"


def _results(run: Path) -> dict:
    file = Path(run) / rd.RESULTS
    if not Path(run).exists():
        raise StaleCheckError(f"{run} does not exist")
    if not Path(run).is_dir():
        raise StaleCheckError(f"{run} is not a directory (give a coral-bench run directory)")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StaleCheckError(f"{run} is not a finished coral-bench run (no {rd.RESULTS})") from None
    except (OSError, ValueError) as exc:
        raise StaleCheckError(f"{file} cannot be read as JSON ({exc})") from None
    provenance = data.get("provenance") if isinstance(data, dict) else None
    if not isinstance(provenance, dict):
        raise StaleCheckError(f"{file} has no provenance section: not a coral-bench results file")
    return data


def recorded_hashes(run: Path, results: dict | None = None) -> tuple[str | None, ...]:
    """The git hashes a run was made with: the provenance's, then each session's, once each."""
    provenance = (results or _results(run))["provenance"]
    sessions = provenance.get("sessions")
    found = [provenance.get("git_hash")]
    found += [s.get("git_hash") for s in sessions if isinstance(s, dict)] if isinstance(sessions, list) else []
    hashes = tuple(dict.fromkeys(h.strip() for h in found if isinstance(h, str) and h.strip()))
    return hashes or (None,)


def check_runs(runs: Sequence[Path], repo: Path, watched: Sequence[str] = WATCHED) -> tuple[Verdict, ...]:
    """One verdict per run directory, against the git checkout that holds ``repo``: the worst over the
    hashes its timed samples were made with and those of the replays stored beside them."""
    checks = [(Path(run), _checks(Path(run), tuple(watched))) for run in runs]  # bad input fails before git
    problem = _checkout_problem(repo)
    if problem is not None:
        return tuple(Verdict(run, UNKNOWN, problem) for run, _ in checks)
    root = Path(_git_lines(repo, "rev-parse", "--show-toplevel")[0])
    return tuple(max((_check_hash(run, h, root, w) for h, w in run_checks),
                     key=lambda v: _WORST.index(v.state)) for run, run_checks in checks)


def _checks(run: Path, watched: tuple[str, ...]) -> list[tuple[str | None, tuple[str, ...]]]:
    """(hash, files that matter) pairs. A run that timed no drafter (``drafters`` recorded empty: vanilla
    only, for replays) measured no drafter code but vanilla's, so only the loop and ``drafters/vanilla.py``
    matter to it; each stored replay ran its drafter at its own recorded hash, with every watched file."""
    results = _results(run)
    timed = watched if results.get("drafters") != {} else tuple(
        w for w in watched if not w.startswith(("coral_bench/drafters/", "coral_bench/assets/"))) + VANILLA_CODE
    pairs = [(h, timed) for h in recorded_hashes(run, results)]
    pairs += [(h, watched) for h in replay_hashes(run)]
    return pairs


def replay_hashes(run: Path) -> tuple[str, ...]:
    """The git hashes recorded by the replays in the run's ``replays.json`` (none when it has no replays)."""
    file = Path(run) / rd.REPLAYS
    if not file.exists():
        return ()
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StaleCheckError(f"{file} cannot be read as JSON ({exc})") from None
    entries = data.values() if isinstance(data, dict) else ()
    found = [(e.get("provenance") or {}).get("git_hash") for e in entries if isinstance(e, dict)]
    return tuple(dict.fromkeys(h.strip() for h in found if isinstance(h, str) and h.strip()))


def _check_hash(run: Path, recorded: str | None, root: Path, watched: tuple[str, ...]) -> Verdict:
    if recorded is None:
        return Verdict(run, UNKNOWN, "no git hash recorded (made outside a git checkout): cannot tell what "
                                     "code it measured")
    dirty = recorded.endswith(DIRTY)
    base = recorded[: -len(DIRTY)] if dirty else recorded
    short = base[:7]
    if _git(root, "rev-parse", "--verify", "--quiet", f"{base}^{{commit}}").returncode != 0:
        shallow = _git(root, "rev-parse", "--is-shallow-repository").stdout.strip() == "true"
        why = ("this is a shallow clone: `git fetch --unshallow` gives the history to decide with" if shallow
               else "another clone, or history not fetched")
        return Verdict(run, UNKNOWN, f"its commit {base} is not in this repository ({why}): cannot tell")
    made = f"made at {short}" + (" with uncommitted changes" if dirty else "")
    changed = changed_files(root, base, watched)
    if changed:
        commits = _git_lines(root, "log", "--format=%h", f"{base}..HEAD", "--", *changed)
        uncommitted = _git_lines(root, "diff", "--name-only", "HEAD", "--", *changed)
        how = [f"{len(commits)} commit(s) ({_some(commits)})"] if commits else []
        how += ["uncommitted edits"] if uncommitted else []
        how = how or [f"commits of {short} that this branch lacks"]
        return Verdict(run, STALE, f"{made}; since then {len(changed)} decoder or drafter file(s) differ "
                                   f"({_some(changed)}) through {' and '.join(how)}: redo the run")
    if dirty:
        return Verdict(run, UNKNOWN, f"{made}: no decoder or drafter file differs from {short} now, but the "
                                     "uncommitted changes it ran with are not recorded; redo it from a clean "
                                     "checkout to be sure")
    return Verdict(run, CURRENT, f"{made}; no decoder or drafter code changed since")


def changed_files(root: Path, base: str, watched: Sequence[str]) -> list[str]:
    """Watched files (their current paths) whose code differs between commit ``base`` and the working tree.
    Renames are followed, git's own (``-M``) and any added file whose code equals a deleted one's (a small
    module whose imports were rewritten can fall below git's similarity threshold); a file deleted
    since ``base`` and not moved counts as changed under its old path.

    A file *added* since ``base`` did not exist when the run was made, so the run cannot have executed
    it: any use of it goes through an existing file, whose code then differs (a new drafter module is
    reached through the registry, which resolves names only). An added file that git pairs with a
    vanished one at a loose similarity (:data:`LOOSE_RENAME`) may be its rewritten move, and counts."""
    entries = [line.split("\t") for line in _git_lines(root, "diff", "-M", "--name-status", base)]
    deleted = {paths[0]: _git_blob(root, base, paths[0]) for status, *paths in entries if status == "D"}
    moved_from: set[str] = set()
    changed, added = [], []
    for status, *paths in entries:
        old, new = paths[0], paths[-1]
        if status == "A" and same_code(b"", (root / new).read_bytes(), new):
            continue  # a new file with no code (an empty __init__.py, imports and docstrings only)
        if status == "A":
            twin = next((d for d, blob in deleted.items() if d not in moved_from
                         and same_code(blob, (root / new).read_bytes(), new)), None)
            if twin is not None:
                moved_from.add(twin)
            elif _watched(new, watched):
                added.append(new)
            continue
        if not any(_watched(p, watched) for p in paths) or status == "D":
            continue
        if status == "R100" or (status[0] in "MR" and same_code(_git_blob(root, base, old),
                                                                (root / new).read_bytes(), new)):
            continue
        changed.append(new)
    vanished = [d for d in deleted if d not in moved_from]
    changed += [d for d in vanished if _watched(d, watched)]
    if added and vanished:  # an addition that git pairs with a vanished file at low similarity is its rewrite
        loose = [line.split("\t") for line in _git_lines(root, "diff", f"-M{LOOSE_RENAME}", "--name-status",
                                                           "--diff-filter=R", base)]
        rewritten = {paths[-1] for _, *paths in loose if paths[0] in vanished}
        changed += [a for a in added if a in rewritten]
    return changed


def same_code(before: bytes, after: bytes, path: str) -> bool:
    """Whether two versions of a file do the same: for Python, equal syntax trees once imports and
    docstrings are dropped (comments are not in the tree); for anything else, equal bytes."""
    if before == after:
        return True
    if not path.endswith(".py"):
        return False
    try:
        return _behaviour(before) == _behaviour(after)
    except SyntaxError:
        return False


def _behaviour(source: bytes) -> str:
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if not isinstance(body, list):
            continue
        if isinstance(node, _DOCUMENTED) and body and _is_docstring(body[0]):
            body = body[1:]
        node.body = [n for n in body if not isinstance(n, (ast.Import, ast.ImportFrom))] or [ast.Pass()]
    return ast.dump(tree)


_DOCUMENTED = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _is_docstring(node: ast.AST) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def _watched(path: str, watched: Sequence[str]) -> bool:
    return path not in UNWATCHED and any(path.startswith(w) if w.endswith("/") else path == w for w in watched)


def _git_blob(root: Path, commit: str, path: str) -> bytes:
    done = subprocess.run(["git", "-C", str(root), "show", f"{commit}:{path}"], capture_output=True, timeout=60)
    return done.stdout if done.returncode == 0 else b""


def _checkout_problem(repo: Path) -> str | None:
    try:
        inside = _git(repo, "rev-parse", "--is-inside-work-tree")
    except FileNotFoundError:
        return "git is not installed: cannot compare the recorded hash with the checkout"
    except (OSError, subprocess.SubprocessError) as exc:
        return f"git does not run ({exc}): cannot compare the recorded hash with the checkout"
    if inside.returncode != 0 or inside.stdout.strip() != "true":
        return f"{repo} is not in a git checkout: cannot compare the recorded hash with it"
    return None


def _git(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, timeout=60)


def _git_lines(cwd: Path, *args: str) -> list[str]:
    """The output lines of a git command that must succeed (its inputs were checked before)."""
    done = _git(cwd, *args)
    if done.returncode != 0:
        message = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[0]
        raise StaleCheckError(f"git {' '.join(args[:3])} … failed in {cwd}: {message}")
    return [line for line in done.stdout.splitlines() if line.strip()]


def _some(items: list[str]) -> str:
    return ", ".join(items[:SHOWN]) + (f", … {len(items) - SHOWN} more" if len(items) > SHOWN else "")
