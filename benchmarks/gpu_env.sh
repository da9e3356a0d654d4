# Sourced by the one-call device scripts (gpu_decode_all.sh, gpu_multimodal_all.sh) after they set OUT: offline
# settings, the carried wheels ($WHEELS, default .cache/i22a_whl) installed into /tmp/site, the checkout importable
# as the package `myassistant`, and `json` (keeps a command's JSON lines, also in $OUT/results.jsonl).
set -o pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
W=${WHEELS:-.cache/i22a_whl}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $W/*.whl \
    >/dev/null 2>&1 || echo "wheels: install failed"
mkdir -p /tmp/pkg && ln -sfn "$PWD" /tmp/pkg/myassistant  # the checkout is the package `myassistant`
export PYTHONPATH=/tmp/site:/tmp/pkg:$PWD
RES="$OUT/results.jsonl"; : > "$RES"
json() { grep -ao '{"[a-z_0-9]*": .*}$' | tee -a "$RES"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
