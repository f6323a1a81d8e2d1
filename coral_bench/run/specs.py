"""Parsing ``--drafter [LABEL=]NAME[:CHECKPOINT][@tree=SHAPE][@KEY=VALUE]...`` and ``--peer NAME[:ARG]`` into values.

Drafter settings other than the tree (``DRAFTER_OPTIONS``: the draft head of EAGLE-style drafters,
METHODS.md §6) travel with the checkpoint argument, folded as ``CHECKPOINT@key=value…`` in a fixed
order: every consumer (run, replay, profile, the run's config.json) already carries that argument to
the drafter factory, which unfolds it with :func:`split_argument`.
"""

from __future__ import annotations

from dataclasses import dataclass

from coral_bench.core.tree import TreeShape


class MethodError(ValueError):
    """A malformed or duplicate --drafter / --peer."""


# @vocab=V: FR-Spec frequency subset of V tokens; @freq=STORE: count frequencies in a feature store;
# @router_k=K: groups per node of a routed drafter; @score=renorm|calibrated: routed draft scores.
DRAFTER_OPTIONS = ("vocab", "freq", "router_k", "score")
_SYNTAX = "[LABEL=]NAME[:CHECKPOINT][@tree=SHAPE][@vocab=V][@freq=STORE][@router_k=K][@score=renorm|calibrated]"


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
            raise MethodError(f"bad drafter setting {'@' + part!r} in {argument!r}: use {_SYNTAX}")
        options[key] = value
    return checkpoint or None, options


@dataclass(frozen=True)
class DrafterSpec:
    label: str  # result key: LABEL if given, else NAME
    name: str  # registry name
    checkpoint: str | None
    tree: TreeShape | None  # None: --tree or the drafter's default

    @classmethod
    def parse(cls, text: str) -> "DrafterSpec":
        body, *settings = text.split("@")
        tree = None
        options: dict[str, str] = {}
        for part in settings:
            key, eq, value = part.partition("=")
            if not eq or not value:
                raise MethodError(f"bad drafter {text!r}: {'@' + part!r} is not KEY=VALUE; use {_SYNTAX}")
            if key == "tree" and tree is None:
                tree = TreeShape.parse(value)
            elif key in DRAFTER_OPTIONS and key not in options:
                options[key] = value
            else:
                raise MethodError(f"bad drafter {text!r}: @{key}= is unknown or repeated; use {_SYNTAX}")
        label, eq, rest = body.partition("=")
        if not eq:
            label, rest = "", body
        name, _, checkpoint = rest.partition(":")
        if not name:
            raise MethodError(f"bad drafter {text!r}: use {_SYNTAX}")
        return cls(label or name, name, join_argument(checkpoint or None, options), tree)


@dataclass(frozen=True)
class PeerSpec:
    label: str
    name: str
    arg: str | None

    @classmethod
    def parse(cls, text: str) -> "PeerSpec":
        name, _, arg = text.partition(":")
        return cls(name, name, arg or None)


def check_unique(labels: list[str]) -> None:
    seen = set()
    for label in labels:
        if label in seen:
            raise MethodError(f"two methods share the result key {label!r}: give a drafter a label, LABEL=NAME:PATH")
        seen.add(label)
