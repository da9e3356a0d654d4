#!/usr/bin/env bash
# One device call for what a session still has to measure on a GPU, each part time-boxed so that the
# whole fits one call: decode (issue 10: tests, engine, peer), DeepSpeed ZeRO-2/3 through the documented
# torchrun command on one GPU (issue 7), training vs the peers at batch 1 (issue 9).
# Carry: .whl (bitsandbytes, transformers, peft, datasets, cut_cross_entropy), .whl_ds (deepspeed and its
# needs) and .peers (the peer scripts and Unsloth's wheels, copied from ../shared/peers; never committed).
set -o pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1  # never NVLink multicast
OUT=${OUT:-/tmp/gpu_all}; mkdir -p "$OUT"
PIP="python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade"
$PIP --target /tmp/site_ours .whl/*.whl .whl_ds/*.whl >/dev/null 2>&1 || echo "our wheels: install failed"
$PIP --target /tmp/site_peer .whl/bitsandbytes-*.whl .whl/datasets-*.whl .whl/dill-*.whl .whl/multiprocess-*.whl \
    .peers/wheels/*.whl >/dev/null 2>&1 || echo "peer wheels: install failed"
OURS="/tmp/site_ours:$PWD"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
json() { grep -ao '{"[a-z_]*": .*}$'; }

echo "=== decode (issue 10)"
PYTHONPATH=$OURS timeout "${T_DECODE_TESTS:-70}" python3 -m pytest -q -p no:cacheprovider -m gpu \
    tests/test_fast_decode.py tests/test_engine.py 2>&1 | tail -4
PYTHONPATH=$OURS timeout "${T_DECODE:-110}" python3 -m benchmarks.decode_gpu 2>&1 | tee "$OUT/decode.log" | json
timeout "${T_DECODE_PEER:-50}" python3 .peers/gpu_decode_peer.py 2>&1 | tee "$OUT/decode_peer.log" | json

echo "=== DeepSpeed on one GPU (issue 7)"
PYTHONPATH=$OURS timeout "${T_DS:-150}" python3 benchmarks/deepspeed_check.py --gpus 1 --presets zero2,zero3 \
    --workdir /tmp/ds > "$OUT/deepspeed.log" 2>&1; echo "exit $?"
json < "$OUT/deepspeed.log"

echo "=== training, batch 1 (issue 9)"
PYTHONPATH=/tmp/site_peer timeout "${T_PEER:-80}" python3 .peers/gpu_unsloth_peer.py unsloth_qlora1 2>&1 \
    | tee "$OUT/train_peer.log" | json
PYTHONPATH=$OURS timeout "${T_OURS:-80}" python3 -m benchmarks.train_gpu ours_qlora1_d0 ours_qlora1_d0_compile 2>&1 \
    | tee "$OUT/train_ours.log" | json
