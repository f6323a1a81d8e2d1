"""Copy a trained drafter into the package: ``coral_bench/assets/<target>/<name>/``.

    python scripts/ship_drafter.py CHECKPOINT NAME [--target smollm2-135m]

The checkpoint must load against the target (embedding hash, shapes) and be complete
(``budget.complete`` true; a routed drafter's stage 1 as well). Shipped: ``config.json`` (training
command, settings, data hash, budget, git hash), ``model.safetensors`` (bf16, no embedding), the
training logs, and ``SHIPPED.json`` (this command, the git hash it ran at, sha256 of each file).
An existing shipped drafter of that name is replaced only with ``--replace``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

FILES = ("config.json", "model.safetensors")
LOGS = ("train-log.jsonl", "router-log.jsonl")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("name", help="drafter name the package answers to (eagle2, hass, coral, coral-router)")
    parser.add_argument("--target", default="smollm2-135m")
    parser.add_argument("--replace", action="store_true")
    args = parser.parse_args(argv)

    from coral_bench.run import provenance
    from coral_bench.drafters.checkpoint import CheckpointError, file_sha256, load_checkpoint
    from coral_bench.drafters.shipped import assets_root
    from coral_bench.run.targets import load_target

    src: Path = args.checkpoint
    dest = assets_root() / args.target / args.name
    if dest.exists() and not args.replace:
        print(f"error: {dest} exists (pass --replace)", file=sys.stderr)
        return 2
    target = load_target(args.target, dtype="float32", device="cpu").target
    try:
        ckpt = load_checkpoint(src, target.embedding_weight())
    except (CheckpointError, OSError) as err:
        print(f"error: {src}: {err}", file=sys.stderr)
        return 2
    budget = ckpt.metadata.get("budget", {})
    if not budget.get("complete", False):
        print(f"error: {src} is not fully trained (budget: {budget}); finish it with --resume", file=sys.stderr)
        return 2
    shipped = [f for f in (*FILES, *LOGS) if (src / f).is_file()]
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rewrites = {str(Path(__file__).resolve().parent.parent) + "/": "", str(Path.home()): "~"}

    def portable(text: str) -> str:  # recorded paths (store, command) lose this machine's prefixes
        for old, new in rewrites.items():
            text = text.replace(old, new)
        return text

    for name in shipped:
        if name.endswith((".json", ".jsonl")):
            (tmp / name).write_text(portable((src / name).read_text()))
        else:
            shutil.copyfile(src / name, tmp / name)
    record = {
        "command": portable(shlex.join(["python", "scripts/ship_drafter.py", *argv])),
        "git_hash": provenance.git_hash(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": src.name,  # the folder's name only: no machine paths in the package
        "method": ckpt.metadata.get("method"),
        "trained_at_git_hash": ckpt.metadata.get("git_hash"),
        "router": bool(ckpt.router),
        "path_rewrites": "the repository prefix dropped, the home folder written ~ (in the JSON files)",
        "sha256": {name: file_sha256(tmp / name) for name in shipped},
    }
    (tmp / "SHIPPED.json").write_text(json.dumps(record, indent=2) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    size = sum(p.stat().st_size for p in dest.iterdir())
    print(f"shipped {args.name} for {args.target}: {dest} ({size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
