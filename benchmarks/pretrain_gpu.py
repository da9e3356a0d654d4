"""Incremental pre-training throughput on the InternLM2-1.8B shape: ``trainer.train.train`` on raw text.

    python -m benchmarks.pretrain_gpu lora full        (SHAPE=1_8b | tiny, STEPS=40, BATCH=4)

What a user runs: the preset ``internlm2_1_8b_full_pretrain`` on a generated corpus (zh+en paragraphs,
blank-line separated, written to $TMPDIR, never to the repo), read through ``trainer.data.blocks`` (every
token kept, 2,048-token blocks, positions restarting per document), random weights of the 1.8B shape
(``benchmarks.train_gpu.build_checkpoint``; speed does not depend on their values).

- ``lora``: ``quant.method=lora`` (bf16 base, LoRA r64 alpha 16 on all seven linear layers, dropout 0):
  the GPU fast path (compiled layers, varlen attention over the documents of a block, chunked loss, each
  micro-step a CUDA graph);
- ``full``: the preset as shipped, ``quant.method=full`` (fp32 master weights, bf16 autocast, AdamW; the
  fast path is LoRA-only, so this is transformers' own step with activation checkpointing).
One JSON line per case: tokens/s over the logs after the first third of the steps (compiling and graph
capture excluded), peak GPU memory (``max_memory_allocated``), first/last loss, blocks, documents.
"""
from __future__ import annotations

import json
import os
import random
import statistics
import sys
import time

import torch

from benchmarks.train_gpu import BENCH_DIR, CUDA, SHAPE, build_checkpoint, emit

STEPS = int(os.environ.get("STEPS", 40))
BATCH = int(os.environ.get("BATCH", 4))


def write_corpus(path, paragraphs: int, seed: int = 0):
    r = random.Random(seed)
    words = ["harbour", "river", "trade", "salt", "copper", "winter", "road", "market", "ship", "grain", "town"]
    han = "上海是一个港口城市河流贸易盐铜冬天道路市场船粮食"
    with open(path, "w", encoding="utf-8") as f:
        for i in range(paragraphs):
            en = " ".join(r.choices(words, k=r.randint(40, 400)))
            zh = "".join(r.choices(han, k=r.randint(10, 200)))
            f.write(f"Document {i}. {en}. {zh}。\n\n")
    return path


def case(method: str) -> dict:
    from myassistant.trainer.config import PRESETS_DIR, load_config
    from myassistant.trainer.train import train

    base = build_checkpoint(reuse_peers=False)
    corpus = BENCH_DIR / "pretrain_corpus.txt"
    if not corpus.exists():
        write_corpus(corpus, 1500 if SHAPE != "tiny" else 300)
    run_dir = BENCH_DIR / f"pretrain_{method}_{int(time.time())}"
    cfg = load_config(PRESETS_DIR / "internlm2_1_8b_full_pretrain.yaml", [
        f"model.base={base}", f"data.train_file={corpus}", f"quant.method={method}", "lora.lora_dropout=0",
        f"train.output_dir={run_dir}", f"train.max_steps={STEPS}", f"train.per_device_train_batch_size={BATCH}",
        "train.gradient_accumulation_steps=1", "train.logging_steps=5", "train.save_steps=100000",
        "train.eval_steps=0", "train.eval_max_new_tokens=8", "train.report_to=none", "data.eval_prompts=[]",
        *(["data.max_length=128"] if SHAPE == "tiny" else [])])
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    run = train(cfg)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss" in r]
    steady = [r["tokens_per_s"] for r in rows if r["step"] > STEPS // 3 and "tokens_per_s" in r]
    meta = json.loads(next((BENCH_DIR / "cache").glob("corpus/*/meta.json")).read_text()) \
        if (BENCH_DIR / "cache").exists() else {}
    return dict(case=f"pretrain_{method}", shape=SHAPE, batch_blocks=BATCH, seq=cfg.data.max_length, steps=STEPS,
                tokens_per_s=round(statistics.median(steady)) if steady else None,
                peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if CUDA else None,
                first_loss=rows[0]["loss"] if rows else None, last_loss=rows[-1]["loss"] if rows else None,
                corpus_documents=meta.get("documents"), corpus_tokens=meta.get("tokens"),
                wall_s=round(time.perf_counter() - started, 1))


def main(argv: list[str]) -> int:
    os.environ.setdefault("ASSISTANT_CACHE", str(BENCH_DIR / "cache"))
    if CUDA:
        print(torch.__version__, torch.cuda.get_device_name(0), flush=True)
    for method in argv or ["lora", "full"]:
        try:
            emit(case(method))
        except Exception as err:  # one broken case must not hide the other
            import traceback

            traceback.print_exc()
            emit(dict(case=f"pretrain_{method}", shape=SHAPE, error=repr(err)[:300]))
        if CUDA:
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
