"""What sampling costs a CPU: the draw alone, and a reply's tokens/s sampled against greedy, in one process.

    python benchmarks/sampled_cpu.py [--shape internlm2-1.8b] [--new-tokens 48] [--threads 2]

``draw_ms``: `chat.sampler.sample_rows` (the race's rounds, no sort) against `sorted_draw` (the same draw
by sorting the logits, as the code before session 20 did), ms a call for 1 and 8 rows of InternLM2's
92,544 logits, flat (a random model's) and peaked (std 8), temperature 0.8, top-p 0.8.
``replies``: the engine as the app runs it on a CPU (int8 weights, the batched decoder), random weights
in an InternLM2 shape, stop tokens off, one chat and then two at once; greedy replies, then the app's
default sampling (seeded), each the median of --repeats (this figure moves with the host's load).
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from benchmarks.decode_cpu import SHAPES, load, tiny_tokenizer  # noqa: E402
from myassistant.chat import ChatEngine, GenerationSettings  # noqa: E402
from myassistant.chat.quant import quantize_int8  # noqa: E402
from myassistant.chat.sampler import RowParams, sample_rows, sorted_draw  # noqa: E402


def decode_tokens_per_s(engine: ChatEngine, prompt_ids: list[int], settings: GenerationSettings, chats: int) -> float:
    """Tokens a second after each chat's first token, the slowest of `chats` chats started together."""
    rates = []

    def one() -> None:
        first, count = None, 0
        for _ in engine.tokens(prompt_ids, settings):
            count += 1
            first = first or time.perf_counter()
        rates.append((count - 1) / (time.perf_counter() - first))

    threads = [threading.Thread(target=one) for _ in range(chats)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return min(rates)


def draw_ms(draw, logits: torch.Tensor, params: RowParams, calls: int = 10) -> float:
    positions = torch.arange(logits.shape[0])
    draw(logits, params, positions)
    start = time.perf_counter()
    for i in range(calls):
        draw(logits, params, positions + i)
    return round((time.perf_counter() - start) / calls * 1e3, 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=SHAPES, default="internlm2-1.8b")
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for rows in (1, 8):
        params = RowParams.empty(rows, torch.device("cpu"))
        for row in range(rows):
            params.set_row(row, temperature=0.8, top_p=0.8, top_k=0, penalty=1.0, seed=row)
        for shape, std in (("flat", 1.0), ("peaked", 8.0)):
            logits = torch.randn(rows, 92544) * std
            race, ranked = draw_ms(sample_rows, logits, params), draw_ms(sorted_draw, logits, params)
            print(json.dumps({"case": "draw_ms", "rows": rows, "logits": shape, "threads": args.threads,
                              "sample_rows": race, "sorted_draw": ranked, "speedup": round(ranked / race, 2),
                              "load": load()}), flush=True)
    config = LlamaConfig(**SHAPES[args.shape], rms_norm_eps=1e-5, rope_theta=1e6, max_position_embeddings=4096,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config).eval()
    quantize_int8(model)  # what ChatEngine.from_pretrained does on a CPU (the blocks kernel where it builds)
    tokenizer = tiny_tokenizer()
    engine = ChatEngine(model, tokenizer, name=args.shape)  # batched decoding, as a CPU's app
    engine.stop_ids = []
    prompt_ids = engine.prompt([{"role": "user", "content": "Tell me about the weather today, please."}],
                               GenerationSettings())[0]
    greedy = GenerationSettings(temperature=0, max_new_tokens=args.new_tokens)
    sampled = GenerationSettings(max_new_tokens=args.new_tokens, seed=0)
    for chats in (1, 2):
        decode_tokens_per_s(engine, prompt_ids, greedy, chats)  # warm
        figures = {}
        for name, settings in (("greedy", greedy), ("sampled", sampled)):
            runs = sorted(decode_tokens_per_s(engine, prompt_ids, settings, chats) for _ in range(args.repeats))
            figures[name] = round(runs[len(runs) // 2], 2)
        print(json.dumps({"case": "replies", "shape": args.shape, "chats": chats, "threads": args.threads,
                          "greedy_tokens_per_s": figures["greedy"], "sampled_tokens_per_s": figures["sampled"],
                          "sampled_of_greedy": round(figures["sampled"] / figures["greedy"], 3), "load": load()}),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
