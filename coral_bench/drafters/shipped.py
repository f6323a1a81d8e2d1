"""Drafters shipped inside the package: ``coral_bench/assets/<target>/<drafter>/`` (EAGLE format,
trained by ``coral-bench train`` with the command, settings and git hash in their ``config.json``).

``--drafter coral`` (no path) on a target that has a shipped ``coral`` uses it; without one the name
alone is an error, never a silent random drafter (``coral:random`` asks for random weights).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from .options import MethodError, join_argument, split_argument
from coral_bench.core.drafter import DrafterError, DrafterSettings

ASSETS_ENV = "CORAL_BENCH_ASSETS"  # another assets folder (tests)


def assets_root() -> Path:
    return Path(os.environ.get(ASSETS_ENV) or Path(__file__).resolve().parent.parent / "assets")


def shipped_checkpoint(target: str, drafter: str) -> Path | None:
    """The shipped checkpoint of ``drafter`` for ``target``, if the package has one."""
    folder = assets_root() / target / drafter
    return folder if (folder / "config.json").is_file() else None


def shipped_names(target: str) -> tuple[str, ...]:
    root = assets_root() / target
    return tuple(sorted(p.name for p in root.iterdir() if (p / "config.json").is_file())) if root.is_dir() else ()


def with_shipped_checkpoint(target: str, settings: DrafterSettings) -> DrafterSettings:
    """``settings`` with the shipped checkpoint filled in where none was given (options kept)."""
    try:
        path, options = split_argument(settings.checkpoint)
    except MethodError as err:
        raise DrafterError(str(err)) from None
    if path is not None:
        return settings
    found = shipped_checkpoint(target, settings.name)
    if found is None:
        have = shipped_names(target)
        raise DrafterError(
            f"{settings.name} needs a checkpoint ({settings.name}:PATH, or {settings.name}:random for random weights): "
            f"no {settings.name} drafter is shipped for target {target}"
            + (f" (shipped: {', '.join(have)})" if have else ""))
    return replace(settings, checkpoint=join_argument(str(found), options))
