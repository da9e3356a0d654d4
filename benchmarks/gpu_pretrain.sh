#!/usr/bin/env bash
# Pre-training throughput on the InternLM2-1.8B shape (benchmarks/pretrain_gpu.py: LoRA on the fast path,
# then the full-parameter preset), in one device call:
#
#   run(command="bash benchmarks/gpu_pretrain.sh", carry=[".whl"])
#
# .whl/ (git-ignored): transformers 5.23.0 and peft 0.21.2 (pip download), datasets 4.8.5, dill and
# multiprocess (../shared/peers/wheels). One JSON line per case on stdout; the whole log in $OUT/log.
set -o pipefail
OUT=${OUT:-/tmp/bench_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site_ours .whl/*.whl \
    >/dev/null 2>&1 || { echo "wheels: install failed"; exit 1; }
mkdir -p /tmp/pkg && ln -sfn "$PWD" /tmp/pkg/myassistant  # the checkout is the package `myassistant`
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
PYTHONPATH=/tmp/site_ours:/tmp/pkg:$PWD STEPS=${STEPS:-40} timeout "${T:-330}" python3 -m benchmarks.pretrain_gpu ${CASES:-lora full} \
    2>&1 | tee "$OUT/log" | grep -a -E '^\{|Error|error:|^[0-9]+\.[0-9]+.*H'
