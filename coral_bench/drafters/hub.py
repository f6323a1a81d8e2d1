"""Drafter checkpoints named by their Hugging Face id (``--drafter eagle2:ORG/NAME``), found in the
local Hugging Face cache only: coral-bench never downloads, so a machine without a network runs what
``huggingface-cli download ORG/NAME`` (or any earlier download) put there."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from coral_bench.core.drafter import DrafterError, DrafterSettings
from .options import MethodError, join_argument, split_argument

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # ORG/NAME, as the Hub spells repository ids
_NOT_PATHS = ("random",)


def looks_like_hub_id(path: str) -> bool:
    """ORG/NAME that is not a file or folder here (a local path always wins)."""
    return bool(_HUB_ID.match(path)) and not Path(path).exists() and not path.startswith(".")


def resolve_hub_checkpoint(settings: DrafterSettings) -> DrafterSettings:
    """``settings`` with an ``ORG/NAME`` checkpoint replaced by its snapshot folder in the local cache
    (options kept); anything else unchanged. One clear line when the id is not in the cache."""
    try:
        path, options = split_argument(settings.checkpoint)
    except MethodError as err:
        raise DrafterError(str(err)) from None
    if path is None or path in _NOT_PATHS or not looks_like_hub_id(path):
        return settings
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(path, local_files_only=True)
    except Exception as err:  # LocalEntryNotFoundError, a malformed id, a broken cache…
        raise DrafterError(
            f"drafter checkpoint {path!r} is neither a folder here nor a model in the local Hugging Face cache "
            f"({type(err).__name__}); coral-bench does not download: run huggingface-cli download {path} first"
        ) from None
    return replace(settings, checkpoint=join_argument(folder, options))
