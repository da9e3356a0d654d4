#!/usr/bin/env bash
# One time-boxed device call for the decode figures of issue 21 (H200, bf16, random weights):
#   1. the gpu-marked decode tests (fused matrix-product kernels, graphed decode == generate, split-KV attention);
#   2. the decode step's products against cuBLAS (benchmarks.gemv_gpu; SWEEP=1 adds the config sweep);
#   3. per-kernel profiles of a decode step and a 512-token prefill, fused and baseline (benchmarks.decode_profile);
#   4. text decode, 1.8B, with the copy bandwidth measured in the same run (benchmarks.decode_gpu --no-fp32);
#   5. (PARTS="tune") product configurations timed in graphs, and the step with the best (benchmarks.decode_tune_gpu);
#   6. the 7B shape in bf16, weight-only int8 and int4 in one process (benchmarks.decode_gpu --shape internlm2-7b
#      --weight-bits 16 8 4; BITS and CHATS pick).
#
#   7. (`7bq`, not in the default PARTS) the 7B shape in weight-only int8 and int4 (BITS, default "8 4"), each form in
#      its own process under its own time box (T_Q), top-1 against the bf16 modules' logits that the first process
#      saves (--reference): no bf16 decode cases, no peer. The first form builds the reference and compiles with cold
#      caches: 160 s did not cover int4's quality case (2026-12-02), nor int8's cases up to the 8 chats.
#
#   8. (`barrier`, not in the default PARTS) a step's products as one persistent kernel whose phases meet at grid
#      barriers, against a kernel a phase in one graph, 1.8B and 7B shapes (benchmarks.grid_barrier_gpu); then as one
#      launch whose items wait only for the rows they read (benchmarks.dataflow_gpu).
#
#   9. (`mlp`, not in the default PARTS) 7B int4 gate/up + down in one launch a layer (partial sums reduced into the
#      output) against two, the same CUDA-core code (benchmarks.mlp_fused_gpu; README "Issue 21, session 32").
#
#   device run, carry [".cache/i22a_whl"]: bash benchmarks/gpu_decode_all.sh
#   (PARTS="tests gemv profile decode 7b" picks parts; .cache/i22a_whl holds transformers 5.24, see README.md)
OUT=${OUT:-/tmp/gpu_decode}
source benchmarks/gpu_env.sh
PARTS=${PARTS:-tests gemv profile decode 7b}
has() { [[ " $PARTS " == *" $1 "* ]]; }

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
if has tune; then echo "=== product configurations in graphs, then the step with the best"  # PARTS="tune"
timeout "${T_TUNE:-240}" python3 -m benchmarks.decode_tune_gpu 2>&1 | tee "$OUT/tune.log" | json; fi
if has decode; then echo "=== 1.8B decode"
timeout "${T_DECODE:-110}" python3 -m benchmarks.decode_gpu --no-fp32 2>&1 | tee -a "$OUT/decode.log" | json; fi
if has 7b; then echo "=== 7B decode"  # one process: the random 7B model built once, bf16 then int8 then int4
timeout "${T_7B:-420}" python3 -m benchmarks.decode_gpu --shape internlm2-7b --no-fp32 --new-tokens 128 \
    --weight-bits ${BITS:-16 8 4} --chats ${CHATS:-8} 2>&1 | tee "$OUT/decode7b.log" | json; fi
if has 7bq; then echo "=== 7B int8 / int4, a process each"
for bits in ${BITS:-8 4}; do
timeout "${T_Q:-280}" python3 -m benchmarks.decode_gpu --shape internlm2-7b --no-fp32 --no-peer --new-tokens 128 \
    --weight-bits "$bits" --chats ${CHATS:-8} --reference /tmp/reference7b.pt $DECODE_FLAGS 2>&1 \
    | tee -a "$OUT/decode7bq.log" | json
done; fi
if has barrier; then echo "=== a step's products as one persistent kernel with grid barriers, vs a kernel a phase"
for shape in 1.8b 7b; do  # PARTS="barrier": no carried wheels needed (torch and Triton of the image)
timeout "${T_BARRIER:-150}" python3 -m benchmarks.grid_barrier_gpu --shape "$shape" 2>&1 \
    | tee -a "$OUT/barrier.log" | json
timeout "${T_BARRIER:-150}" python3 -m benchmarks.dataflow_gpu --shape "$shape" 2>&1 \
    | tee -a "$OUT/dataflow.log" | json
done; fi
if has mlp; then echo "=== 7B int4 gate/up + down: one launch a layer against two"
timeout "${T_MLP:-200}" python3 -m benchmarks.mlp_fused_gpu --shape 7b 2>&1 | tee -a "$OUT/mlp.log" | json; fi
