#!/usr/bin/env bash
# Issue 21's training figures in one device call: ours (folded QLoRA, compiled layers, each micro-step a CUDA graph)
# and Unsloth on the same GPU; one JSON line per case, then the ratios (ours / peer, same call).
#
#   device run, carry [".cache/i22a_whl", "<peer dir>"]:  PEER_DIR=<peer dir> bash benchmarks/gpu_train_i21.sh
#
# <peer dir> (default .cache/i21_peer): gpu_unsloth_peer.py from ../shared/peers (its CASES dict given
# "unsloth_qlora2": dict(bs=2)) and wheels/ (Unsloth's set from ../shared/peers/wheels minus datasets, dill and
# multiprocess, which come from WHEELS with bitsandbytes); peers' code is never committed. The peer runs on the image's
# transformers (Unsloth pins <= 5.17), ours on WHEELS' (5.24).
# PARTS (default all, in this order): tests (gpu tests of the fold, the fp8 layers and the fast path; TESTS: other
# pytest arguments, one invocation), 7b (Unsloth and ours at batch 1
# and 2), 1_8b (Unsloth bs4; ours bs3, and bs4 with 8-bit AdamW), fold (the fold kernel vs bitsandbytes'
# dequantisation, 7B shapes), fp8 (train.qlora_fp8's layers against the bf16 fold's, 7B shapes; not in the default),
# profile (Unsloth's and our 7B bs2 step under torch.profiler: kernel time by kind);
# each part has its own time limit (T_<part>). Ours runs each case without and with `_keep` (train.qlora_keep_folded,
# `train`'s default since 2026-12-02 session 11); CASES_7B / CASES_1_8B / PEER_7B / PEER_1_8B / CASES_PROFILE /
# PEER_PROFILE change the cases (an empty PEER_* runs no peer). All parts with
# these defaults need more than one call's 10 minutes: split them, e.g. PARTS="tests 7b", then PARTS="1_8b fold".
set -o pipefail
OUT=${OUT:-/tmp/bench_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
W=${WHEELS:-.cache/i22a_whl}; P=${PEER_DIR:-.cache/i21_peer}; PARTS=${PARTS:-tests 7b 1_8b fold}
PIP="python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade"
$PIP --target /tmp/site $W/*.whl >/dev/null 2>&1 || { echo "wheels: install failed"; exit 1; }
$PIP --target /tmp/site_peer $W/bitsandbytes-*.whl $W/datasets-*.whl $W/dill-*.whl $W/multiprocess-*.whl \
    "$P"/wheels/*.whl >/dev/null 2>&1 || echo "peer wheels: install failed"
mkdir -p /tmp/pkg && ln -sfn "$PWD" /tmp/pkg/myassistant  # the checkout is the package `myassistant`
RES="$OUT/results.jsonl"; : > "$RES"
json() { grep -ao '{"[a-z_0-9]*": .*}$' | tee -a "$RES"; }
ours() { PYTHONPATH=/tmp/site:/tmp/pkg:$PWD timeout "$1" python3 -m "${@:2}" 2>&1 | tee -a "$OUT/log_ours" | json; }
peer() { PYTHONPATH=/tmp/site_peer timeout "$1" python3 "$P/gpu_unsloth_peer.py" "${@:2}" 2>&1 | tee -a "$OUT/log_peer" \
           | grep -ao '{"[a-z_0-9]*": .*}$' | sed "s/^{/{\"shape\": \"${SHAPE:-1_8b}\", /" | tee -a "$RES"; }
with_keep() { for c in "$@"; do echo "$c ${c}_keep"; done; }  # each case without, then with keep_folded (train's default)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# the peer writes the random checkpoint of each shape the parts need (ours reads it too) while the tests run, then
# names make_only an unknown case; the timed parts wait for it
MAKE_SHAPES=$(for part in $PARTS; do case $part in 7b|profile) echo 7b ;; 1_8b) echo 1_8b ;; esac; done | sort -u)
(for shape in $MAKE_SHAPES; do SHAPE=$shape PYTHONPATH=/tmp/site_peer python3 "$P/gpu_unsloth_peer.py" make_only; done) \
    > "$OUT/log_make" 2>&1 &
MAKE=$!
for part in $PARTS; do
    echo "--- $part ($(date -u +%T))"
    case $part in 7b|1_8b|profile) wait $MAKE ;; esac
    case $part in
    # the fold against bitsandbytes first and alone (seconds; its failure's reason printed before any box ends),
    # then the fast path against plain peft, then the rest
    tests) set -- "tests/test_qlora_fold.py::test_folded_weight_is_dequantised_weight_plus_adapter" \
                  "tests/test_fast_path.py tests/test_qlora_fold.py tests/test_qlora_fp8.py --deselect \
                   tests/test_qlora_fold.py::test_folded_weight_is_dequantised_weight_plus_adapter"
           [ -n "$TESTS" ] && set -- "$TESTS"
           for t in "$@"; do
               PYTHONPATH=/tmp/site:/tmp/pkg:$PWD timeout "${T_tests:-240}" python3 -m pytest -v -p no:cacheprovider \
                   -m gpu $t 2>&1 | tee -a "$OUT/tests.log" | grep -a "PASSED\|FAILED\|ERROR\|passed\|failed\|^E "
           done ;;
    fold) SHAPE=7b ours "${T_fold:-60}" benchmarks.fold_kernel ;;
    fp8) SHAPE=7b ours "${T_fp8:-150}" benchmarks.fp8_layer_gpu ;;  # train.qlora_fp8's weights and products, layer by layer
    # where a 7B step's kernel time goes, the peer's and ours (benchmarks/profile_step.py)
    profile) [ -n "${PEER_PROFILE-x}" ] && SHAPE=7b PYTHONPATH=/tmp/site_peer:$PWD PEER_DIR=$P timeout "${T_profile_peer:-200}" \
                 python3 -m benchmarks.profile_step ${PEER_PROFILE-unsloth_qlora2} 2>&1 | tee -a "$OUT/log_peer" | json
             SHAPE=7b ours "${T_profile:-200}" benchmarks.profile_step ${CASES_PROFILE:-ours_qlora2_d0_graph_adam8_keep} ;;
    7b) [ -n "${PEER_7B-x}" ] && SHAPE=7b peer "${T_7b_peer:-170}" ${PEER_7B-unsloth_qlora1 unsloth_qlora2}
        SHAPE=7b ours "${T_7b:-300}" benchmarks.train_gpu ${CASES_7B:-$(with_keep ours_qlora1_d0_graph_adam8 \
                                                                               ours_qlora2_d0_graph_adam8)} ;;
    1_8b) peer "${T_1_8b_peer:-70}" ${PEER_1_8B:-unsloth_qlora4}
          ours "${T_1_8b:-200}" benchmarks.train_gpu ${CASES_1_8B:-$(with_keep ours_qlora3_d0_graph \
                                                                         ours_qlora4_d0_graph_adam8)} ;;
    esac
done
echo "--- ratios ($(date -u +%T))"
PYTHONPATH=/tmp/site:/tmp/pkg:$PWD python3 -m benchmarks.train_gpu --report "$RES" | tee "$OUT/ratios.jsonl"
