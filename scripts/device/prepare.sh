#!/usr/bin/env bash
# Run HERE (a machine with the project's venv) before using a network-less GPU machine: fills the
# git-ignored folder .devcarry/ with what that machine lacks, in pieces small enough for one call
# each (the device tool carries at most 64 MiB per call, the working tree included):
#   call 1 carries gguf.a + the two wheels; call 2 carries gguf.b + the prompt export.
set -euo pipefail
cd "$(dirname "$0")/../.."
D=.devcarry
SPLIT=${SPLIT:-45000000}  # bytes of the GGUF in the first piece
mkdir -p "$D"
grep -qx '/.devcarry/' .git/info/exclude || echo '/.devcarry/' >> .git/info/exclude
G=$(python -c "from coral_bench.run.targets import gguf_path; print(gguf_path())")
head -c "$SPLIT" "$G" > "$D/gguf.a"
tail -c +"$((SPLIT + 1))" "$G" > "$D/gguf.b"
python scripts/export_first_turns.py "$D/sharegpt-first-turns.json"
xz -9 -f -T2 "$D/sharegpt-first-turns.json"
TF=$(python -c "import transformers; print(transformers.__version__)")
GG=$(python -c "from importlib.metadata import version; print(version('gguf'))")
python -m pip download -q --no-deps -d "$D" "transformers==$TF" "gguf==$GG"
ls -l "$D"
