"""Parsing ``--drafter [LABEL=]NAME[:CHECKPOINT][@tree=SHAPE][@KEY=VALUE]...`` and ``--peer NAME[:ARG]`` into values.

The drafter options themselves (their names and how they fold into the checkpoint argument) belong
to the drafters: ``coral_bench/drafters/options.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from coral_bench.core.tree import TreeShape
# MethodError, join_argument and split_argument are re-exported: callers parse specs and unfold them here
from coral_bench.drafters.options import DRAFTER_OPTIONS, DRAFTER_SYNTAX, MethodError, join_argument, split_argument  # noqa: F401


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
                raise MethodError(f"bad drafter {text!r}: {'@' + part!r} is not KEY=VALUE; use {DRAFTER_SYNTAX}")
            if key == "tree" and tree is None:
                tree = TreeShape.parse(value)
            elif key in DRAFTER_OPTIONS and key not in options:
                options[key] = value
            else:
                raise MethodError(f"bad drafter {text!r}: @{key}= is unknown or repeated; use {DRAFTER_SYNTAX}")
        label, eq, rest = body.partition("=")
        if not eq:
            label, rest = "", body
        name, _, checkpoint = rest.partition(":")
        if not name:
            raise MethodError(f"bad drafter {text!r}: use {DRAFTER_SYNTAX}")
        return cls(label or name, name, join_argument(checkpoint or None, options), tree)


@dataclass(frozen=True)
class ChosenTree:
    """A drafter's tree chosen before the run (``--tree auto``) and the record of how it was chosen."""

    tree: TreeShape
    record: Mapping[str, Any]  # config.json's tree_auto.drafters.<label>: {"tree": …, "grid": […], …}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> "ChosenTree":
        return cls(TreeShape.parse(record["tree"]), dict(record))


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
