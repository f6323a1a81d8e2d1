#!/usr/bin/env bash
# Call 1 ON THE GPU MACHINE: every CUDA path the training call needs, on the tiny random target
# (seconds): gen-data, the three training methods, and decoding with the trained drafters.
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/device/setup.sh || exit 1
DEV=${DEV:-cuda}; S=/tmp/smoke; rm -rf $S; mkdir -p $S
nvidia-smi -L || true
python3 -c "import torch, transformers, accelerate; print('torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"
set -e
$CB gen-data --target tiny-random --sources gsm8k --max-prompts 96 --max-new-tokens 24 --batch-size 32 \
  --device $DEV --dtype bfloat16 --shard-tokens 2048 --out $S/store
for m in eagle2 hass coral; do
  $CB train --method $m --data $S/store --out $S/$m --epochs 1 --batch-tokens 2048 --dtype bf16 --device $DEV \
    --time-limit 30
done
$CB run --target tiny-random --suite mtbench --limit 2 --max-new-tokens 24 --device $DEV --dtype bfloat16 \
  --drafter prompt-lookup --drafter eagle2:$S/eagle2 --drafter coral:$S/coral@tree=chain:3 --out $S/run
echo SMOKE-OK
