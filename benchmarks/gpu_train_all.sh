#!/usr/bin/env bash
# Peers and the project on the same GPU in one call; one JSON line per case, then one per ratio.
#
#   bash benchmarks/gpu_train_all.sh [final|explore]      (device call: carry .whl and .peers; see README.md)
#
# final:   the issue-9 table: peers (HF+peft+bnb, Unsloth; 1.8B and 7B) and ours, then ratios.
# explore: ours only, with variants (plain path, dropout, compile, checkpointing, 8-bit Adam),
#          the gpu-marked correctness test, and the issue-4 proof run (trainer.train, 300 steps).
# compile: ours with compiled layers (no graphs), Unsloth bs1/bs4, the padded peer, a short proof run.
# graph:   ours as train runs it on a GPU (compiled layers, CUDA-graphed micro-steps), the gpu-marked tests,
#          Unsloth bs1/bs4, the padded peer.  graph7b: the 7B shape, ours and Unsloth at batch 1.
# proof:   the issue-4 proof run alone (trainer.train on the 1.8B preset, as a user runs it).
set -o pipefail
MODE=${1:-final}
OUT=${OUT:-/tmp/bench_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
RES="$OUT/results.jsonl"; : > "$RES"
PIP="python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade"
W=.whl
# The peers run on the image's transformers (Unsloth pins <= 5.17); ours on the version the project is tested with.
$PIP --target /tmp/site_peer $W/bitsandbytes-*.whl $W/datasets-*.whl $W/dill-*.whl $W/multiprocess-*.whl \
    .peers/wheels/*.whl >/dev/null 2>&1 || echo "peer wheels: install failed"
$PIP --target /tmp/site_ours $W/*.whl >/dev/null 2>&1 || { echo "our wheels: install failed"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

peer()  { PYTHONPATH=/tmp/site_peer timeout "$1" python3 "${@:2}" 2>&1 | tee -a "$OUT/log_peers" | grep -ao '{"[a-z_]*": .*}$' | tee -a "$RES"; }
ours()  { PYTHONPATH=/tmp/site_ours:$PWD timeout "$1" python3 -m benchmarks.train_gpu "${@:2}" 2>&1 \
            | tee -a "$OUT/log_ours" | grep -ao '{"[a-z_]*": .*}$' | tee -a "$RES"; }
tag7b() { sed 's/^{/{"shape": "7b", /'; }

if [ "$MODE" = graph ]; then
    [ -n "$NO_TEST" ] || PYTHONPATH=/tmp/site_ours:$PWD timeout "${T_TEST:-200}" python3 -m pytest -q -p no:cacheprovider -m gpu \
        tests/test_graphs.py tests/test_fast_path.py 2>&1 | tail -3
    ours "${T_OURS:-330}" ours_qlora1_d0_graph ours_qlora2_d0_graph ours_qlora3_d0_graph ours_qlora4_d0_graph \
        ours_short4_d0_graph
    peer "${T_PEER:-150}" .peers/gpu_unsloth_peer.py unsloth_qlora1 unsloth_qlora4
    peer "${T_BASE:-70}" .peers/gpu_baseline.py qlora_short16
elif [ "$MODE" = graph7b ]; then
    SHAPE=7b ours "${T_OURS:-200}" ours_qlora1_d0_graph_adam8
    SHAPE=7b PYTHONPATH=/tmp/site_peer timeout "${T_PEER:-200}" python3 .peers/gpu_unsloth_peer.py unsloth_qlora1 2>&1 \
        | tee -a "$OUT/log_peers" | grep -ao '{"[a-z_]*": .*}$' | tag7b | tee -a "$RES"
elif [ "$MODE" = proof ]; then
    PROOF_STEPS=${PROOF_STEPS:-100} ours "${T_PROOF:-200}" proof
elif [ "$MODE" = compile ]; then  # where to compile, with the Unsloth peer in the same call
    ours "${T_OURS:-270}" ours_qlora1_d0_compile ours_qlora4_d0_compile ours_short4_compile
    peer "${T_PEER:-150}" .peers/gpu_unsloth_peer.py unsloth_qlora1 unsloth_qlora4
    peer "${T_BASE:-70}" .peers/gpu_baseline.py qlora_short16
    PROOF_STEPS=${PROOF_STEPS:-100} ours "${T_PROOF:-90}" proof
elif [ "$MODE" = explore ]; then
    PYTHONPATH=/tmp/site_ours:$PWD timeout 60 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_fast_path.py 2>&1 | tail -5
    ours 170 ours_qlora1_d0 ours_qlora1 ours_qlora1_d0_plain ours_qlora4_d0 ours_qlora4_d0_plain ours_short4 ours_qlora1_d0_nockpt
    PROOF_STEPS=300 ours 100 proof
    SHAPE=7b ours 110 ours_qlora1_d0_adam8 ours_qlora1_d0
    ours 60 ours_qlora1_d0_compile ours_qlora4_d0_compile
else
    peer 70 .peers/gpu_baseline.py qlora_short16
    peer 150 .peers/gpu_unsloth_peer.py unsloth_qlora1 unsloth_qlora4
    ours 170 ours_qlora4_d0 ours_short4 ours_qlora1_d0_compile ours_qlora4_d0_compile ours_short4_compile
    PROOF_STEPS=${PROOF_STEPS:-200} ours 180 proof
fi
echo "--- ratios (ours / peer, same call)"
PYTHONPATH=/tmp/site_ours python3 -m benchmarks.train_gpu --report "$RES" | tee "$OUT/ratios.jsonl"
