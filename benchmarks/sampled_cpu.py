"""A CPU's sampled replies against its greedy ones: what sampling adds to a decoded token, in one process.

    python benchmarks/sampled_cpu.py [--shape internlm2-1.8b] [--new-tokens 48] [--threads 2]

The engine as the app runs it on a CPU (int8 weights, the batched decoder), random weights in an
InternLM2 shape, stop tokens off; one chat at a time, then two at once (rows of one step). Greedy
replies, then the app's default sampling (temperature 0.8, top-p 0.8, seeded), each the median of
--repeats. `sampled_of_greedy` is the figure: 1.0 = sampling costs nothing. The same script run
from another commit's tree (its `ChatEngine` API is all it uses) measures the code before.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from benchmarks.decode_cpu import SHAPES, load  # noqa: E402
from myassistant.chat import ChatEngine, GenerationSettings  # noqa: E402
from myassistant.model import build_tiny_checkpoint, load_tokenizer  # noqa: E402


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=SHAPES, default="internlm2-1.8b")
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = LlamaConfig(**SHAPES[args.shape], rms_norm_eps=1e-5, rope_theta=1e6, max_position_embeddings=4096,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config).eval()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = load_tokenizer(build_tiny_checkpoint(f"{tmp}/tok"))
    engine = ChatEngine(model, tokenizer, name=args.shape)  # a CPU's defaults: int8 weights, batched decoding
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
        print(json.dumps({"case": "sampled_cpu", "shape": args.shape, "chats": chats, "threads": args.threads,
                          "greedy_tokens_per_s": figures["greedy"], "sampled_tokens_per_s": figures["sampled"],
                          "sampled_of_greedy": round(figures["sampled"] / figures["greedy"], 3), "load": load()}),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
