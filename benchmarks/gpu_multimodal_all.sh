#!/usr/bin/env bash
# One time-boxed device call for the multimodal (issue 22) and decode-bandwidth (issue 21) figures:
#   1. the split-KV decode attention against SDPA (gpu test), then an image chat's decode vs a text chat's in
#      one process (benchmarks.decode_llava_gpu, with the attention kernels timed alone);
#   2. text decode with the GPU's copy bandwidth measured in the same run (benchmarks.decode_gpu --no-fp32);
#   3. at once (neither is timed): the multimodal recipe through the CLI with QLoRA (benchmarks/gpu_llava_cli.sh)
#      and the gpu-marked image-chat test (graphed batched steps == Llava generate, fp32, a 1k+ cache too).
#
#   device run, carry [".cache/i22a_whl"]: bash benchmarks/gpu_multimodal_all.sh
#   (.cache/i22a_whl: bitsandbytes 0.50.2 slimmed as benchmarks/README.md says, transformers 5.24.0, peft 0.21.2,
#    datasets, dill, multiprocess)
OUT=${OUT:-/tmp/gpu_multimodal}
source benchmarks/gpu_env.sh

echo "=== split-KV attention vs SDPA"
timeout "${T_ATTN:-45}" python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_decode_attention.py 2>&1 | tail -3
echo "=== image chat vs text chat decode"
timeout "${T_LLAVA:-140}" python3 -m benchmarks.decode_llava_gpu 2>&1 | tee "$OUT/decode_llava.log" | json
echo "=== text decode and copy bandwidth"
timeout "${T_DECODE:-100}" python3 -m benchmarks.decode_gpu --no-fp32 2>&1 | tee "$OUT/decode.log" | json
echo "=== the multimodal recipe through the CLI, QLoRA, beside the gpu image-chat test (no timings in either)"
WORK=/tmp/llava_cli timeout "${T_CLI:-150}" bash benchmarks/gpu_llava_cli.sh > "$OUT/llava_cli.log" 2>&1 &
cli=$!
timeout "${T_TEST:-120}" python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_engine_vision.py \
    > "$OUT/test_engine_vision.log" 2>&1
tail -n 3 "$OUT/test_engine_vision.log"
wait $cli; echo "cli exit $?"
grep -v '^{' "$OUT/llava_cli.log" | tail -n 40; json < "$OUT/llava_cli.log" > /dev/null
