"""GPU decode speed of the chat engine (batched decoder, CUDA graphs) on the InternLM2-1.8B shape, bf16.

One device call runs this (the peer, ``model.generate``, is timed in the same process) and, for the
peer's other cases, ../shared/peers/gpu_decode_peer.py (see benchmarks/gpu_all.sh):

    python3 -m benchmarks.decode_gpu

Cases (random weights, greedy, stop tokens off so every reply has --new-tokens tokens):
- ``warm_up``: compiling and capturing the steps a first chat and two concurrent ones need.
- ``hf_generate``: the peer, ``model.generate`` (dynamic cache), batch 1.
- ``engine``: the app's path, one chat: tokens/s = new tokens / wall time of the reply (prefill and
  templating included, as the peer counts), decode-only tokens/s, ratio to the peer and the roofline.
- ``same_tokens_bf16``: the engine's reply against ``generate``'s; where they part, the gap between
  ``generate``'s top two logits at that step (random weights give near-ties that bf16 rounding
  flips: kernels that sum in a different order pick the other one).
- ``same_tokens_fp32``: the same comparison with fp32 weights (no near-ties at this precision).
- ``ttft_512``: time to first token for a ~512-token chat prompt, templating and history trimming included.
- ``step_ms``: one graphed decode step replayed back to back (GPU time, no host work) for 1 and 8 rows.
- ``concurrent_N``: N chats streaming at once from threads, sharing the steps; per-chat and total tokens/s.
- ``copy_bandwidth``: this GPU's memory bandwidth, measured in the same run: a 4 GiB ``dst.copy_(src)``
  timed with CUDA events, bytes read + written / time (median of 10).
- ``roofline``: weight bytes / the measured copy bandwidth: the tokens/s a batch-1 step that only read
  the weights once would reach; ``decode_of_bandwidth``: the engine's decode-only tokens/s x weight
  bytes / the measured bandwidth (the fraction of the memory system a decode step uses).
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
from myassistant.chat import ChatEngine, GenerationSettings, GenerationStats, gemv  # noqa: E402
from myassistant.model import build_tiny_checkpoint, load_tokenizer  # noqa: E402

def emit(case: str, **fields) -> None:
    print(json.dumps({"case": case, **fields}), flush=True)


def reply(engine: ChatEngine, messages: list[dict], settings: GenerationSettings) -> GenerationStats:
    stats = GenerationStats()
    for _ in engine.stream(messages, settings, stats=stats):
        pass
    return stats


def copy_bandwidth(gib: int = 4, reps: int = 10) -> float:
    """Bytes/s of a device-to-device copy of `gib` GiB (read + write counted), median of `reps`."""
    src = torch.empty(gib << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        dst.copy_(src)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * (gib << 30) / sorted(times)[reps // 2]


def build(shape: str, dtype: torch.dtype, device: str) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(**SHAPES[shape], rope_theta=1e6, rms_norm_eps=1e-5, tie_word_embeddings=False,
                         max_position_embeddings=32768)
    with torch.device(device):
        return LlamaForCausalLM(config).to(dtype).eval()


def compare(engine: ChatEngine, prompt_ids: list[int], new_tokens: int) -> dict:
    """The engine's greedy tokens against ``generate``'s, and the reference's logit gap where they part."""
    settings = GenerationSettings(temperature=0, max_new_tokens=new_tokens)
    ours = list(engine.tokens(prompt_ids, settings))
    with torch.inference_mode():
        out = engine.model.generate(torch.tensor([prompt_ids], device=engine.model.device), do_sample=False,
                                    max_new_tokens=new_tokens, min_new_tokens=new_tokens, output_scores=True,
                                    return_dict_in_generate=True)
    want = out.sequences[0, len(prompt_ids):].tolist()
    same = next((i for i, (a, b) in enumerate(zip(ours, want)) if a != b), min(len(ours), len(want)))
    result = {"same_tokens_as_generate": ours == want, "tokens": len(want), "identical_prefix": same}
    if same < len(want):
        top2 = out.scores[same][0].float().topk(2).values
        result["generate_top2_gap_at_split"] = round(float(top2[0] - top2[1]), 4)
    return result


def step_ms(engine: ChatEngine, rows: int, length: int = 256, reps: int = 50) -> float:
    graph, _ = engine.batch.graphs[(rows, length)]
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        graph.replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / reps * 1e3


def concurrent(engine: ChatEngine, messages: list[dict], chats: int, new_tokens: int) -> dict:
    stats = [GenerationStats() for _ in range(chats)]
    settings = GenerationSettings(temperature=0, max_new_tokens=new_tokens)
    threads = [threading.Thread(target=lambda s=s: [None for _ in engine.stream(messages, settings, stats=s)])
               for s in stats]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    per_chat = [s.new_tokens / s.elapsed_s for s in stats]
    return {"min_chat_tokens_per_s": round(min(per_chat), 1), "max_chat_tokens_per_s": round(max(per_chat), 1),
            "min_chat_decode_tokens_per_s": round(min(s.tokens_per_s for s in stats), 1),
            "total_tokens_per_s": round(sum(s.new_tokens for s in stats) / wall, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=SHAPES, default="internlm2-1.8b")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--no-fp32", action="store_true", help="skip the fp32 token comparison")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = load_tokenizer(build_tiny_checkpoint(f"{tmp}/tok"))
    model = build(args.shape, torch.bfloat16, "cuda")
    engine = ChatEngine(model, tokenizer, name=args.shape)
    engine.stop_ids = []  # random weights: every reply runs the full length
    emit("device", name=torch.cuda.get_device_name(0), torch=torch.__version__, rows=engine.batch.rows,
         cache_tokens_per_row=engine.batch.max_len)
    start = time.perf_counter()
    engine.warm_up()
    emit("warm_up", seconds=round(time.perf_counter() - start, 1), graphs=sorted(engine.batch.graphs),
         products_picked={f"{k[0]}x{k[1]}{'_gated' if k[2] else ''}{'_rows' if k[-1] else '_row'}": v
                          for k, v in gemv._picked.items()})

    short = [{"role": "user", "content": "Tell me about the weather today, please."}]
    settings = GenerationSettings(temperature=0, max_new_tokens=args.new_tokens)
    prompt_ids, _, _ = engine.prompt(short, settings)
    ids = torch.tensor([prompt_ids], device="cuda")
    with torch.inference_mode():
        for _ in range(2):  # the second is timed
            torch.cuda.synchronize()
            start = time.perf_counter()
            model.generate(ids, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)
            torch.cuda.synchronize()
            peer = args.new_tokens / (time.perf_counter() - start)
    emit("hf_generate", tokens_per_s=round(peer, 1))
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    bandwidth = copy_bandwidth()
    emit("copy_bandwidth", tb_per_s=round(bandwidth / 1e12, 3))
    roofline = bandwidth / weight_bytes
    reply(engine, short, settings)
    stats = reply(engine, short, settings)
    emit("engine", prompt_tokens=stats.prompt_tokens, new_tokens=stats.new_tokens,
         tokens_per_s=round(stats.new_tokens / stats.elapsed_s, 1), decode_tokens_per_s=round(stats.tokens_per_s, 1),
         first_token_ms=round(stats.first_token_s * 1e3, 1), vs_hf_generate=round(stats.new_tokens / stats.elapsed_s / peer, 2),
         of_roofline=round(stats.tokens_per_s / roofline, 2), graph_problem=engine.batch.broken)
    emit("same_tokens_bf16", **compare(engine, prompt_ids, args.new_tokens))

    long = [{"role": "user", "content": " ".join(["tell me about the weather today"] * 71)}]
    one = GenerationSettings(temperature=0, max_new_tokens=1)
    reply(engine, long, one)
    times = sorted(reply(engine, long, one).first_token_s for _ in range(5))
    emit("ttft_512", prompt_tokens=len(engine.prompt(long, one)[0]), first_token_ms=round(times[2] * 1e3, 1))

    for chats in (2, 4, 8):
        concurrent(engine, short, chats, 16)  # captures this row bucket
        result = concurrent(engine, short, chats, args.new_tokens)
        emit(f"concurrent_{chats}", new_tokens=args.new_tokens, **result,
             slowest_of_one_chat=round(result["min_chat_tokens_per_s"] / (stats.new_tokens / stats.elapsed_s), 3))
    rows_1_ms = step_ms(engine, 1)
    emit("step_ms", rows_1=round(rows_1_ms, 3), rows_8=round(step_ms(engine, 8), 3))
    emit("roofline", weights_gb=round(weight_bytes / 1e9, 2), tokens_per_s=round(roofline, 1),
         bandwidth_tb_per_s=round(bandwidth / 1e12, 3),
         decode_of_bandwidth=round(stats.tokens_per_s * weight_bytes / bandwidth, 3),
         step_1_row_of_bandwidth=round(weight_bytes / bandwidth / (rows_1_ms / 1e3), 3))

    if not args.no_fp32:
        del engine, model
        torch.cuda.empty_cache()
        model32 = build(args.shape, torch.float32, "cuda")
        engine32 = ChatEngine(model32, tokenizer, name=args.shape)
        engine32.stop_ids = []
        emit("same_tokens_fp32", **compare(engine32, prompt_ids, 64))
    return 0


if __name__ == "__main__":
    sys.exit(main())
