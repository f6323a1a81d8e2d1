"""Parsing ``--drafter [LABEL=]NAME[:CHECKPOINT][@tree=SHAPE]`` and ``--peer NAME[:ARG]`` into values."""

from __future__ import annotations

from dataclasses import dataclass

from .tree import TreeShape


class MethodError(ValueError):
    """A malformed or duplicate --drafter / --peer."""


@dataclass(frozen=True)
class DrafterSpec:
    label: str  # result key: LABEL if given, else NAME
    name: str  # registry name
    checkpoint: str | None
    tree: TreeShape | None  # None: --tree or the drafter's default

    @classmethod
    def parse(cls, text: str) -> "DrafterSpec":
        body, _, tree_part = text.partition("@")
        tree = None
        if tree_part:
            if not tree_part.startswith("tree="):
                raise MethodError(f"bad drafter {text!r}: only @tree=SHAPE may follow the name")
            tree = TreeShape.parse(tree_part.removeprefix("tree="))
        label, eq, rest = body.partition("=")
        if not eq:
            label, rest = "", body
        name, _, checkpoint = rest.partition(":")
        if not name:
            raise MethodError(f"bad drafter {text!r}: use [LABEL=]NAME[:CHECKPOINT][@tree=SHAPE]")
        return cls(label or name, name, checkpoint or None, tree)


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
