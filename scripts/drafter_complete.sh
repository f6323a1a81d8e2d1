# Sourced by the CPU training scripts. complete DIR: DIR holds a finished drafter (config.json whose
# budget says complete), so a resumable script skips it.
complete() {
  python3 -c "import json,sys; m=json.load(open(sys.argv[1]))['coral_bench']; sys.exit(0 if m['budget'].get('complete', True) else 1)" \
    "$1/config.json" 2>/dev/null
}
