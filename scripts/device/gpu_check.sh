#!/usr/bin/env bash
# The GPU user's path, checked ON THE GPU MACHINE in one call (after `prepare.sh` here; carry
# .devcarry/gguf.a and the wheels in the call before, .devcarry/gguf.b in this one, as README.md says):
#   1. the CUDA tests (pytest -m cuda: sampling end to end, the event clock, peak memory);
#   2. a short greedy run on the embedded target in bf16 with eagle2 (random) and an EAGLE-3 drafter
#      of the published draft-vocabulary shape (random weights, @vocab=32000), prompt lookup beside;
#   3. the same at T = 0.7 (sampling on the device);
#   4. two shards of the greedy run merged.
# Everything goes to $OUT (results.json of each run, the pytest log, nvidia-smi).
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/device/setup.sh || exit 1
O=${OUT:-/tmp/gpu-check}; mkdir -p "$O"; W=/tmp/gpu-check-runs; rm -rf $W; mkdir -p $W
nvidia-smi > "$O/nvidia-smi.txt" 2>&1 || true
python3 -m pytest -q -m cuda tests/test_devices.py -p no:cacheprovider 2>&1 | tee "$O/pytest-cuda.txt" | tail -3
ARGS="--suite mtbench --limit ${LIMIT:-4} --max-new-tokens 64 --device ${DEV:-cuda} --dtype bfloat16 --peer none
  --drafter prompt-lookup --drafter eagle2:random --drafter eagle3:random@vocab=32000"
set -e
$CB run $ARGS --out $W/greedy
$CB run $ARGS --temperature 0.7 --sample-top-k 50 --out $W/sampled
$CB run $ARGS --shard 0/2 --out $W/s0
$CB run $ARGS --shard 1/2 --out $W/s1
$CB merge $W/s0 $W/s1 --out $W/merged
for r in greedy sampled merged; do cp $W/$r/results.json "$O/$r-results.json"; done
echo GPU-CHECK-OK
