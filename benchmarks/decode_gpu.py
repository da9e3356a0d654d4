"""GPU decode speed of the chat engine (static KV cache + CUDA graphs) on the InternLM2-1.8B shape, bf16.

One device call runs the peer and this, one JSON line per case each (see README_decode.md):

    mkdir -p .peers && cp /work/shared/peers/gpu_decode_peer.py .peers/    # here, once (git-ignored)
    set -o pipefail; export PYTHONUNBUFFERED=1
    (timeout 100 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_fast_decode.py tests/test_engine.py;
     timeout 150 python3 -m benchmarks.decode_gpu; timeout 100 python3 .peers/gpu_decode_peer.py) 2>&1 | tee $OUT/log

Cases (random weights, batch 1, greedy, stop tokens off so every reply has --new-tokens tokens):
- ``engine_graphs``: the app's path; tokens/s = new tokens / wall time of the reply (prefill included,
  as the peer counts), decode-only tokens/s, and whether the tokens equal ``model.generate``'s.
- ``engine_eager``: the same static-cache decoder without graphs (what a second concurrent chat gets).
- ``ttft_512``: time to first token for a ~512-token chat prompt, templating and history trimming included.
- ``concurrent_N``: N chats streaming at once from threads; the first holds the graphed slot, the
  others decode eagerly, all interleaved step by step; per-chat and total tokens/s.
- ``roofline``: weight bytes / 3.0 TB/s (H100 copy bandwidth measured on the lent machine).
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
from benchmarks.decode_cpu import SHAPES  # noqa: E402
from chat import ChatEngine, GenerationSettings, GenerationStats  # noqa: E402
from model import build_tiny_checkpoint, load_tokenizer  # noqa: E402

BANDWIDTH_BYTES_PER_S = 3.0e12


def emit(case: str, **fields) -> None:
    print(json.dumps({"case": case, **fields}), flush=True)


def reply(engine: ChatEngine, messages: list[dict], settings: GenerationSettings) -> GenerationStats:
    stats = GenerationStats()
    for _ in engine.stream(messages, settings, stats=stats):
        pass
    if engine.model.device.type == "cuda":
        torch.cuda.synchronize()
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=SHAPES, default="internlm2-1.8b")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--device", default="cuda", help="cuda (default); cpu only checks that the script runs")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    config = LlamaConfig(**SHAPES[args.shape], rope_theta=1e6, rms_norm_eps=1e-5, tie_word_embeddings=False,
                         max_position_embeddings=32768)
    with torch.device(args.device):
        model = LlamaForCausalLM(config).to(torch.bfloat16).eval()
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = load_tokenizer(build_tiny_checkpoint(f"{tmp}/tok"))
    engine = ChatEngine(model, tokenizer, name=args.shape)
    engine.stop_ids = []  # random weights: every reply runs the full length
    eager = ChatEngine(model, tokenizer, name=args.shape, cuda_graphs=False)
    eager.stop_ids = []
    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else args.device
    emit("device", name=device_name, torch=torch.__version__, graphs=engine.slot is not None)

    short = [{"role": "user", "content": "Tell me about the weather today, please."}]
    settings = GenerationSettings(temperature=0, max_new_tokens=args.new_tokens)
    prompt_ids, _, _ = engine.prompt(short, settings)
    reply(engine, short, GenerationSettings(temperature=0, max_new_tokens=8))  # captures the first bucket
    with torch.inference_mode():
        want = model.generate(torch.tensor([prompt_ids], device=args.device), max_new_tokens=args.new_tokens,
                              min_new_tokens=args.new_tokens, do_sample=False)[0, len(prompt_ids):].tolist()
    for case, chat in (("engine_graphs", engine), ("engine_eager", eager)):
        ids = list(chat.tokens(prompt_ids, settings))
        stats = reply(chat, short, settings)
        emit(case, prompt_tokens=stats.prompt_tokens, new_tokens=stats.new_tokens,
             tokens_per_s=round(stats.new_tokens / stats.elapsed_s, 1), decode_tokens_per_s=round(stats.tokens_per_s, 1),
             first_token_ms=round(stats.first_token_s * 1e3, 1), same_tokens_as_generate=ids == want,
             graph_problem=chat.slot.broken if chat.slot else None)

    long = [{"role": "user", "content": " ".join(["tell me about the weather today"] * 71)}]
    one = GenerationSettings(temperature=0, max_new_tokens=1)
    reply(engine, long, one)
    times = sorted(reply(engine, long, one).first_token_s for _ in range(5))
    emit("ttft_512", prompt_tokens=engine.prompt(long, one)[0].__len__(), first_token_ms=round(times[2] * 1e3, 1))

    for chats in (2, 4, 8):
        per_chat: list[float] = []
        def run() -> None:
            stats = reply(engine, short, GenerationSettings(temperature=0, max_new_tokens=64))
            per_chat.append(stats.new_tokens / stats.elapsed_s)
        threads = [threading.Thread(target=run) for _ in range(chats)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        emit(f"concurrent_{chats}", min_chat_tokens_per_s=round(min(per_chat), 1),
             max_chat_tokens_per_s=round(max(per_chat), 1),
             total_tokens_per_s=round(64 * chats / (time.perf_counter() - start), 1))

    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    emit("roofline", weights_gb=round(weight_bytes / 1e9, 2),
         tokens_per_s=round(BANDWIDTH_BYTES_PER_S / weight_bytes, 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
