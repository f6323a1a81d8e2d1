"""coral-bench: speculative decoding benchmarks and speedup analysis (docs/design.md)."""

from pathlib import Path

# Where the package's own files live: shipped drafters (assets/) and suites (suites/). The
# checkout root is its parent in a git checkout (provenance records paths relative to it).
PACKAGE_DIR = Path(__file__).resolve().parent
CHECKOUT_ROOT = PACKAGE_DIR.parent
