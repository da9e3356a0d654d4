#!/usr/bin/env bash
# LLaVA stage 2 (QLoRA on the LLM, projector trained, CLIP frozen) on the LLaVA-InternLM2-1.8B + CLIP-ViT-L/14-336
# shape, random weights: ours (trainer.multimodal + the GPU fast path) vs ../shared/peers/gpu_llava_peer.py
# (transformers Llava + peft + bitsandbytes), in one device call; one JSON line per case, then the ratios.
#
#   device run, carry [".cache/i22a_whl", ".cache/i22a_peer"]:  bash benchmarks/gpu_llava_train.sh
#   (.cache/i22a_whl: bitsandbytes 0.50.2 slimmed as benchmarks/README.md says, transformers 5.24.0, peft 0.21.2,
#    datasets, dill, multiprocess; .cache/i22a_peer: a copy of gpu_llava_peer.py: peers' code is never committed)
set -o pipefail
OUT=${OUT:-/tmp/bench_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
W=${WHEELS:-.cache/i22a_whl}; PEER=${PEER:-.cache/i22a_peer/gpu_llava_peer.py}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $W/*.whl \
    >/dev/null 2>&1 || { echo "wheels: install failed"; exit 1; }
mkdir -p /tmp/pkg && ln -sfn "$PWD" /tmp/pkg/myassistant  # the checkout is the package `myassistant`
RES="$OUT/results.jsonl"; : > "$RES"
json() { grep -ao '{"[a-z_]*": .*}$' | tee -a "$RES"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
PYTHONPATH=/tmp/site timeout "${T_PEER:-220}" python3 "$PEER" ${PEER_CASES:-llava_qlora1 llava_qlora4} 2>&1 \
    | tee "$OUT/log_peer" | json
PYTHONPATH=/tmp/site:/tmp/pkg:$PWD timeout "${T_OURS:-300}" python3 -m benchmarks.train_gpu \
    ${CASES:-ours_llava1_d0_graph ours_llava4_d0_graph ours_llava2_d0_graph} 2>&1 | tee "$OUT/log_ours" | json
PYTHONPATH=/tmp/site:/tmp/pkg:$PWD python3 -m benchmarks.train_gpu --report "$RES"
