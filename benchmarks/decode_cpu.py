"""Decode speed of the chat engine vs plain ``model.generate`` on the same model (batch 1, greedy).

    python benchmarks/decode_cpu.py                                   # small shape, fp32, CPU
    python benchmarks/decode_cpu.py --shape internlm2-1.8b --dtype bf16 --new-tokens 32

Random weights in the given shape (speed does not depend on the values; the shapes are those of
/work/shared/peers/cpu_decode_peer.py); the prompt is templated with the tiny checkpoint's
tokenizer. Stop tokens are switched off so both sides decode exactly --new-tokens. Prints one JSON
line on stdout: tokens/s = new tokens / wall time of the whole reply (as the peer counts), and the
time to first token (the engine's includes templating and history trimming).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from chat import ChatEngine, GenerationSettings, GenerationStats  # noqa: E402
from chat.engine import resolve_device, resolve_dtype  # noqa: E402
from model import build_tiny_checkpoint, load_tokenizer  # noqa: E402

SHAPES = {
    "internlm2-1.8b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=16,
                           num_key_value_heads=8, vocab_size=92544),
    "small": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
                  num_key_value_heads=4, vocab_size=92544),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_generate(model, prompt_ids: list[int], new_tokens: int) -> tuple[float, list[int]]:
    x = torch.tensor([prompt_ids], device=model.device)
    sync(model.device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(x, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    sync(model.device)
    return time.perf_counter() - start, out[0, len(prompt_ids):].tolist()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=SHAPES, default="small")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, auto")
    parser.add_argument("--dtype", default="auto", help="auto (CPU fp32, GPU bf16), bf16, fp16, fp32")
    parser.add_argument("--prompt-tokens", type=int, default=64, help="about this many prompt tokens")
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    torch.manual_seed(0)
    config = LlamaConfig(**SHAPES[args.shape], rope_theta=1e6, rms_norm_eps=1e-5, tie_word_embeddings=False,
                         max_position_embeddings=4096)
    model = LlamaForCausalLM(config).to(device=device, dtype=dtype).eval()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = load_tokenizer(build_tiny_checkpoint(f"{tmp}/tok"))
    engine = ChatEngine(model, tokenizer, name=args.shape)
    engine.stop_ids = []  # random weights: decode the full length on both sides
    question = " ".join(["tell me about the weather today"] * (args.prompt_tokens // 6))
    messages = [{"role": "user", "content": question}]
    settings = GenerationSettings(temperature=0, max_new_tokens=args.new_tokens)
    prompt_ids, _, _ = engine.prompt(messages, settings)

    # burn-in, and the check that both sides pick the same greedy tokens
    _, generate_ids = time_generate(model, prompt_ids, 8)
    engine_ids = list(engine.tokens(prompt_ids, GenerationSettings(temperature=0, max_new_tokens=8)))
    print(f"burn-in done: {len(prompt_ids)} prompt tokens on {device} in {dtype}", file=sys.stderr)

    generate_first_s, _ = time_generate(model, prompt_ids, 1)
    generate_s, _ = time_generate(model, prompt_ids, args.new_tokens)
    stats = GenerationStats()
    for _ in engine.stream(messages, settings, stats=stats):
        pass
    sync(device)
    result = {
        "name": "decode_cpu" if device.type == "cpu" else "decode_gpu", "shape": args.shape, "device": str(device),
        "dtype": str(dtype).removeprefix("torch."), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "prompt_tokens": len(prompt_ids), "new_tokens": args.new_tokens,
        "same_greedy_tokens": engine_ids == generate_ids,
        "engine_tokens_per_s": round(stats.new_tokens / stats.elapsed_s, 2),
        "engine_first_token_s": round(stats.first_token_s, 4),
        "generate_tokens_per_s": round(args.new_tokens / generate_s, 2),
        "generate_first_token_s": round(generate_first_s, 4),
    }
    result["engine_vs_generate"] = round(result["engine_tokens_per_s"] / result["generate_tokens_per_s"], 3)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
