"""``python -m coral_bench`` = the ``coral-bench`` command (for trees used without installing)."""
from .cli import main

main()
