"""CPU decode speed: the peer (``model.generate`` fp32 and bf16) and the chat engine, in one process.

    python benchmarks/decode_cpu.py --shape internlm2-1.8b      # the issue-10 figures (~7.5 GiB RAM)
    python benchmarks/decode_cpu.py                             # small shape, a quick look

Random weights in the shape of /work/shared/peers/cpu_decode_peer.py, whose method the peer cases
repeat (batch 1, greedy, --new-tokens with stop tokens off; tokens/s = new tokens / wall time of the
whole call, prefill included). The prompt is a chat turn templated with the tiny checkpoint's
tokenizer, the same ids for every case. One JSON line per case on stdout:

- ``hf_generate_fp32`` / ``hf_generate_bf16``: the peer.
- ``engine_bf16``: the engine's static-cache decoder, unquantised (``quantize="none"``).
- ``engine_int8``: the engine as the app and the chat CLI run it on a CPU (int8 linear weights),
  with ``vs_best_peer`` and its quality against bf16: greedy agreement of the timed replies, and
  teacher-forced top-1 agreement and relative logits error over a fixed prompt set. The same is
  given for fp32 against bf16 as a yardstick of what "close" means with these random weights.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from myassistant.chat import ChatEngine, GenerationSettings, GenerationStats, ServeConfig  # noqa: E402
from myassistant.chat.quant import quantize_int8  # noqa: E402
from myassistant.model import build_tiny_checkpoint, load_tokenizer  # noqa: E402

SHAPES = {
    "internlm2-1.8b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=16,
                           num_key_value_heads=8, vocab_size=92544),
    "internlm2-7b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=92544),
    "small": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
                  num_key_value_heads=4, vocab_size=92544),
}
QUALITY_PROMPTS = [  # the fixed prompt set for teacher-forced agreement
    "Who are you, and who made you?", "Write a short poem about the sea.", "请用中文介绍一下你自己。",
    "What is 17 times 23? Explain step by step.", "List three uses of Python in science.",
    "Translate 'good morning' into French and German.", "Why is the sky blue?", "Give me a recipe for pancakes.",
]


def tiny_tokenizer():
    """The project's real tokenizer files (as a tiny checkpoint carries them) for prompts over a random-weight model."""
    with tempfile.TemporaryDirectory() as tmp:
        return load_tokenizer(build_tiny_checkpoint(f"{tmp}/tok"))


def peak_rss_gib(pid: int | str = "self") -> float:
    """A process's peak resident memory so far, GiB (VmHWM; ru_maxrss would carry a forking parent's peak over exec)."""
    with open(f"/proc/{pid}/status") as fh:
        return round(next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 2**20, 2)


def load() -> float:
    return round(os.getloadavg()[0], 2)


def time_generate(model, prompt_ids: list[int], new_tokens: int) -> tuple[float, list[int]]:
    x = torch.tensor([prompt_ids])
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(x, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    return time.perf_counter() - start, out[0, len(prompt_ids):].tolist()


def time_engine(engine: ChatEngine, prompt_ids: list[int], new_tokens: int) -> tuple[float, GenerationStats, list]:
    stats, settings = GenerationStats(), GenerationSettings(temperature=0, max_new_tokens=new_tokens)
    start = time.perf_counter()
    ids = []
    for token in engine.tokens(prompt_ids, settings):
        ids.append(token)
        stats.first_token_s = stats.first_token_s or time.perf_counter() - start
    stats.elapsed_s, stats.new_tokens = time.perf_counter() - start, len(ids)
    return stats.elapsed_s, stats, ids


def prompt_logits(model, prompts: list[list[int]]) -> list[torch.Tensor]:
    with torch.inference_mode():
        return [model(torch.tensor([ids])).logits[0].float() for ids in prompts]


def agreement(ours: list[torch.Tensor], reference: list[torch.Tensor]) -> dict:
    ours_t, ref_t = torch.cat(ours), torch.cat(reference)
    return {"top1_agreement": round((ours_t.argmax(-1) == ref_t.argmax(-1)).float().mean().item(), 4),
            "logits_rel_error": round(((ours_t - ref_t).norm() / ref_t.norm()).item(), 4),
            "positions": ref_t.shape[0]}


def same_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=SHAPES, default="small")
    parser.add_argument("--prompt-tokens", type=int, default=64, help="about this many prompt tokens")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, help="torch threads for every case (default: torch's, = cores)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    config = LlamaConfig(**SHAPES[args.shape], rope_theta=1e6, rms_norm_eps=1e-5, tie_word_embeddings=False,
                         max_position_embeddings=4096)
    model = LlamaForCausalLM(config).eval()
    tokenizer = tiny_tokenizer()
    # templating only, until bf16
    engine = ChatEngine(model, tokenizer, name=args.shape, config=ServeConfig(fast_decode=False))
    question = " ".join(["tell me about the weather today"] * (args.prompt_tokens // 6))
    prompt_ids, _, _ = engine.prompt([{"role": "user", "content": question}], GenerationSettings())
    quality_ids = [engine.prompt([{"role": "user", "content": q}], GenerationSettings())[0] for q in QUALITY_PROMPTS]
    common = {"shape": args.shape, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "prompt_tokens": len(prompt_ids), "new_tokens": args.new_tokens}

    def emit(case: str, seconds: float, **extra) -> dict:
        row = {"case": case, **common, "tokens_per_s": round(args.new_tokens / seconds, 3), **extra, "load": load()}
        print(json.dumps(row), flush=True)
        return row

    peers, replies = {}, {}
    for dtype in (torch.float32, torch.bfloat16):  # the peer's order: fp32, then the same weights in bf16
        model.to(dtype)
        name = str(dtype).removeprefix("torch.").replace("float", "fp").replace("bfp", "bf")
        time_generate(model, prompt_ids, 4)  # burn-in, as the peer does
        seconds, replies[name] = time_generate(model, prompt_ids, args.new_tokens)
        peers[name] = emit(f"hf_generate_{name}", seconds)["tokens_per_s"]
        replies[f"{name}_logits"] = prompt_logits(model, quality_ids)
    best_peer = max(peers.values())
    engine = ChatEngine(model, tokenizer, name=args.shape)  # the decoder's cache and tables in bf16
    engine.stop_ids = []  # random weights: decode the full length everywhere

    seconds, stats, ids = time_engine(engine, prompt_ids, args.new_tokens)
    emit("engine_bf16", seconds, decode_tokens_per_s=round(stats.tokens_per_s, 3),
         first_token_s=round(stats.first_token_s, 3), same_tokens_as_generate_bf16=ids == replies["bf16"],
         vs_best_peer=round(args.new_tokens / seconds / best_peer, 3))

    quantize_int8(model)
    time_engine(engine, prompt_ids, 4)  # burn-in
    seconds, stats, ids = time_engine(engine, prompt_ids, args.new_tokens)
    emit("engine_int8", seconds, decode_tokens_per_s=round(stats.tokens_per_s, 3),
         first_token_s=round(stats.first_token_s, 3), vs_best_peer=round(args.new_tokens / seconds / best_peer, 3),
         greedy_same_prefix_vs_bf16=f"{same_prefix(ids, replies['bf16'])}/{args.new_tokens}",
         quality_vs_bf16=agreement(prompt_logits(model, quality_ids), replies["bf16_logits"]),
         fp32_quality_vs_bf16=agreement(replies["fp32_logits"], replies["bf16_logits"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
