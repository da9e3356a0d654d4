#!/usr/bin/env bash
# The identity sweep (benchmarks/identity_sweep.py) in one device call: every CASE@SEED a process of its own,
# P at a time on one GPU (tiny model: training takes seconds there, the report runs on the host's cores).
# Same demo base for every case; one JSON file per case in $OUT. Locally, the table:
#   python benchmarks/identity_sweep.py --table <files_at>/*.json
#
#   device run, carry [".cache/i22a_whl", ".cache/sweep_base"]:  P=16 OMP=1 SET=train.fast_path=false CASES="default@0 noise0.6@0 ..." bash benchmarks/identity_sweep_gpu.sh
#   (.cache/sweep_base: a trained demo base, `assistant demo --no-app`'s demo_out/base; .cache/i22a_whl: the
#    wheels benchmarks/gpu_llava_train.sh carries: transformers, peft, datasets)
set -o pipefail
OUT=${OUT:-/tmp/sweep_out}; mkdir -p "$OUT"
# P processes at once, OMP threads each (the measured calls: P=16 OMP=1 on the 16-core host); NOSYS=1: no
# system-prompt figures (a report of half the prompts)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=${OMP:-2}
W=${WHEELS:-.cache/i22a_whl}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $W/*.whl \
    >/dev/null 2>&1 || { echo "wheels: install failed"; exit 1; }
mkdir -p /tmp/pkg && ln -sfn "$PWD" /tmp/pkg/myassistant  # the checkout is the package `myassistant`
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
export BASE=${BASE:-$PWD/.cache/sweep_base} T=${T:-420} SET=${SET:-}
one() {
    PYTHONPATH=/tmp/site:/tmp/pkg:$PWD timeout "$T" python3 benchmarks/identity_sweep.py --base "$BASE" ${NOSYS:+--no-system} \
        --work /tmp/sweep ${SET:+--set $SET} "$1" > "$OUT/${1/@/_s}.json" 2> "$OUT/${1/@/_s}.err"
    echo "$1 rc=$? $(grep -a " s[0-9]* identity=" "$OUT/${1/@/_s}.err")"
}
export -f one
printf '%s\n' ${CASES:-default@0} | xargs -P "${P:-8}" -I{} bash -c 'one {}'
