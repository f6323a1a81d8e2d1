"""Where the package's files are, and how paths are written into records (no machine-specific prefix)."""

from __future__ import annotations

from pathlib import Path

# The package's own files: shipped drafters (assets/) and suites (suites/). In a git checkout its
# parent is the checkout root, which provenance reads the git hash of and records paths relative to.
PACKAGE_DIR = Path(__file__).resolve().parent
CHECKOUT_ROOT = PACKAGE_DIR.parent


def portable_path(path: str | Path) -> str:
    """``path`` as recorded in results: relative to the checkout when inside it (shipped assets),
    else with the home folder written ``~``, so records name no machine-specific prefix."""
    resolved = Path(path).expanduser().resolve()
    root = CHECKOUT_ROOT
    for base, shown in ((root, None), (Path.home().resolve(), "~")):
        if resolved.is_relative_to(base):
            rel = resolved.relative_to(base).as_posix()
            return rel if shown is None else f"{shown}/{rel}"
    return str(resolved)
