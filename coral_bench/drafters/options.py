"""Drafter options other than the tree, and how they travel with the checkpoint argument.

``DRAFTER_OPTIONS`` (the draft head of EAGLE-style drafters, docs/methods.md §6) are folded into the
checkpoint argument as ``CHECKPOINT@key=value…`` in a fixed order: every consumer (run, replay,
profile, the run's config.json) carries that one argument to the drafter factory, which unfolds it
with :func:`split_argument`. The vocabulary lives here, with the drafters that read it, so that no
drafter imports the command line's parser.
"""

from __future__ import annotations


class MethodError(ValueError):
    """A malformed drafter option, or a malformed or duplicate --drafter / --peer (run/specs.py)."""


# @vocab=V: FR-Spec frequency subset of V tokens; @freq=STORE: count frequencies in a feature store;
# @router_k=K: groups per node of a routed drafter; @score=renorm|calibrated: routed draft scores.
DRAFTER_OPTIONS = ("vocab", "freq", "router_k", "score")
DRAFTER_SYNTAX = "[LABEL=]NAME[:CHECKPOINT][@tree=SHAPE][@vocab=V][@freq=STORE][@router_k=K][@score=renorm|calibrated]"


def join_argument(checkpoint: str | None, options: dict[str, str]) -> str | None:
    """CHECKPOINT followed by ``@key=value`` for each option, in ``DRAFTER_OPTIONS`` order."""
    tail = "".join(f"@{k}={options[k]}" for k in DRAFTER_OPTIONS if k in options)
    return ((checkpoint or "") + tail) or None


def split_argument(argument: str | None) -> tuple[str | None, dict[str, str]]:
    """The inverse of :func:`join_argument`: (checkpoint or None, options)."""
    if not argument:
        return None, {}
    checkpoint, *parts = argument.split("@")
    options: dict[str, str] = {}
    for part in parts:
        key, eq, value = part.partition("=")
        if not eq or not value or key not in DRAFTER_OPTIONS or key in options:
            raise MethodError(f"bad drafter setting {'@' + part!r} in {argument!r}: use {DRAFTER_SYNTAX}")
        options[key] = value
    return checkpoint or None, options
