#!/usr/bin/env bash
# One time-boxed device call for the decode figures of issue 21 (H200, bf16, random weights):
#   1. the gpu-marked decode tests (fused matrix-product kernels, graphed decode == generate, split-KV attention);
#   2. the decode step's products against cuBLAS (benchmarks.gemv_gpu; SWEEP=1 adds the config sweep);
#   3. per-kernel profiles of a decode step and a 512-token prefill, fused and baseline (benchmarks.decode_profile);
#   4. text decode, 1.8B, with the copy bandwidth measured in the same run (benchmarks.decode_gpu --no-fp32);
#   5. the 7B shape: bf16 and weight-only int8 / int4 decode (benchmarks.decode_gpu --shape internlm2-7b).
#
#   device run, carry [".cache/i22a_whl"]: bash benchmarks/gpu_decode_all.sh
#   (PARTS="tests gemv profile decode 7b" picks parts; .cache/i22a_whl holds transformers 5.24, see README.md)
set -o pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/gpu_decode}; mkdir -p "$OUT"
W=${WHEELS:-.cache/i22a_whl}
PARTS=${PARTS:-tests gemv profile decode 7b}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $W/*.whl \
    >/dev/null 2>&1 || echo "wheels: install failed"
mkdir -p /tmp/pkg && ln -sfn "$PWD" /tmp/pkg/myassistant  # the checkout is the package `myassistant`
export PYTHONPATH=/tmp/site:/tmp/pkg:$PWD
RES="$OUT/results.jsonl"; : > "$RES"
json() { grep -ao '{"[a-z_0-9]*": .*}$' | tee -a "$RES"; }
has() { [[ " $PARTS " == *" $1 "* ]]; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

if has tests; then echo "=== gpu tests"
timeout "${T_TESTS:-240}" python3 -m pytest -v -p no:cacheprovider -m gpu ${TESTS:-tests/test_gemv.py \
    tests/test_decode_attention.py tests/test_fast_decode.py tests/test_engine.py} > "$OUT/tests.log" 2>&1
grep -a "PASSED\|FAILED\|ERROR\|passed\|failed" "$OUT/tests.log" | tail -8; fi
if has gemv; then echo "=== products vs cuBLAS"
timeout "${T_GEMV:-170}" python3 -m benchmarks.gemv_gpu ${SWEEP:+--sweep} 2>"$OUT/gemv.err" | json; tail -3 "$OUT/gemv.err"; fi
if has profile; then echo "=== profiles"
timeout "${T_PROF:-80}" python3 -m benchmarks.decode_profile 2>&1 | tee "$OUT/profile.log" | json
[ -n "$BASELINE" ] && timeout "${T_PROF:-80}" python3 -m benchmarks.decode_profile --baseline 2>&1 \
    | tee "$OUT/profile_base.log" | json; fi
if has decode; then echo "=== 1.8B decode"
timeout "${T_DECODE:-110}" python3 -m benchmarks.decode_gpu --no-fp32 2>&1 | tee "$OUT/decode.log" | json; fi
if has 7b; then echo "=== 7B decode"
timeout "${T_7B:-150}" python3 -m benchmarks.decode_gpu --shape internlm2-7b --no-fp32 --quant 2>&1 | tee "$OUT/decode7b.log" | json; fi
