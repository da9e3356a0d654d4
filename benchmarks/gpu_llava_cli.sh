#!/usr/bin/env bash
# The multimodal recipe end to end through the real CLI on a GPU: tiny InternLM2 + tiny CLIP, the synthetic
# picture set, stage 1 (projector only), stage 2 with QLoRA (bitsandbytes 4-bit LLM) from stage 1, merge, then
# `assistant chat --image` on the merged folder (the GPU engine: CUDA graphs, compiled layer). Prints each
# step's wall time and exit code, and one JSON line at the end. Random tiny weights: the answer is noise; what
# is checked is that every step runs and the merged folder serves a picture chat.
#
#   device run: PYTHONPATH with bitsandbytes (e.g. /tmp/site from .cache/i22a_whl), then
#   bash benchmarks/gpu_llava_cli.sh                 (QUANT=lora STEPS=3: the same on a CPU, no bitsandbytes)
set -o pipefail
W=${WORK:-/tmp/llava_cli}; rm -rf "$W"; mkdir -p "$W"
QUANT=${QUANT:-qlora}; STEPS=${STEPS:-20}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
cli() { python3 -m myassistant.scripts.cli "$@"; }
step() {  # step NAME COMMAND...: run it, log to $W/NAME.log, print NAME rc seconds
    local name=$1 start=$SECONDS; shift
    "$@" >"$W/$name.log" 2>&1; local rc=$?
    echo "step $name rc=$rc seconds=$((SECONDS - start))"; [ $rc -eq 0 ] || { tail -n 30 "$W/$name.log"; exit $rc; }
}
COMMON=("model.base=$W/llm" "vision.encoder=$W/clip" "quant.method=$QUANT" "train.max_steps=$STEPS"
        "train.save_steps=1000" "train.logging_steps=5")
step tiny_llm cli tiny "$W/llm"
step tiny_clip cli tiny "$W/clip" --vision
step shapes cli data shapes --out "$W/shapes" --per-class 2 --eval-per-class 1
step stage1 cli train --config configs/tiny_llava_pretrain_cpu.yaml "${COMMON[@]}" \
    "data.train_file=$W/shapes/pretrain.jsonl" "train.output_dir=$W/s1"
step stage2 cli train --config configs/tiny_llava_finetune_cpu.yaml "${COMMON[@]}" \
    "data.train_file=$W/shapes/finetune.jsonl" "train.output_dir=$W/s2" "vision.projector=$W/s1"
step merge cli merge "$W/s2" --out "$W/merged"
picture=$(ls "$W/shapes/images" | head -n 1)
step chat cli chat "$W/merged" --image "$W/shapes/images/$picture" --prompt "What is in the picture?" \
    --temperature 0 --max-new-tokens 16
python3 - "$W" "$QUANT" <<'EOF'
import json, sys
from pathlib import Path
w, quant = Path(sys.argv[1]), sys.argv[2]
run = json.loads((w / "s2" / "run.json").read_text())
adapter = json.loads((w / "s2" / "adapter_config.json").read_text())
answer = (w / "chat.log").read_text().strip().splitlines()[-2:]
print(json.dumps({"case": "llava_cli_e2e", "quant": quant, "stage2_adapter": run.get("adapter"),
                  "projector_from": run.get("projector_from"), "lora_targets": adapter.get("target_modules"),
                  "merged_model_type": json.loads((w / "merged" / "config.json").read_text())["model_type"],
                  "chat_last_lines": answer}))
EOF
