"""GPU decode speed of the chat engine (batched decoder, CUDA graphs) on the InternLM2-1.8B shape (--shape), bf16
and weight-only int8 / int4 layer weights (--weight-bits).

One device call runs this (the peer, ``model.generate``, is timed in the same process) and, for the
peer's other cases, ../shared/peers/gpu_decode_peer.py (see benchmarks/gpu_all.sh):

    python3 -m benchmarks.decode_gpu
    python3 -m benchmarks.decode_gpu --shape internlm2-7b --no-fp32 --new-tokens 128 --weight-bits 16 8 4 --chats 8
    python3 -m benchmarks.decode_gpu --shape internlm2-7b --no-fp32 --no-peer --new-tokens 128 --chats 8 \
        --weight-bits 8 --reference /tmp/ref7b.pt     # then --weight-bits 4 in another process: the same reference

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
- ``quality_bf16`` / ``quality`` (``--weight-bits 16 8 4``: the cases run for each form in turn, each a model loaded
  onto the GPU from the same bf16 model in host memory as the engine loads one, int8 / int4 a layer at a time
  through `chat.weight_only.to_device`): teacher-forced top-1 agreement and relative
  logits error against the bf16 decode steps over 8 fixed chat prompts and 32 greedy bf16 tokens after each;
  ``quality_bf16`` gives the yardstick: the model's own modules (one forward per sequence) against the same steps.
- ``reference`` (``--reference PATH``, int8 / int4 forms only, one process each: the bf16 cases are not run): the
  quality cases' yardstick is then the bf16 model's own modules (one forward per sequence, 32 greedy tokens of
  ``generate`` after each prompt), computed and saved by the first process, loaded by the next (same seed, same
  random model: ``same_model`` checks it).
- ``memory``: GPU memory per form: right after loading (allocated, and the peak while loading), then after the
  warm-up and every case (allocated, peak), and the model's own tensors (``weights_gib``).
- ``concurrent_N``: N chats streaming at once from threads, sharing the steps; per-chat and total tokens/s.
- ``copy_bandwidth``: this GPU's memory bandwidth, measured in the same run: a 4 GiB ``dst.copy_(src)``
  timed with CUDA events, bytes read + written / time (median of 10); once before the cases and again after each
  form's, the ``roofline`` of a form taking the faster of the two.
- ``roofline``: weight bytes / the measured copy bandwidth: the tokens/s a batch-1 step that only read
  the weights once would reach; ``decode_of_bandwidth``: the engine's decode-only tokens/s x weight
  bytes / the measured bandwidth (the fraction of the memory system a decode step uses). Weight bytes: every
  parameter (quantised layers at their quantised size); ``*_read``: without the embedding table, of which a
  step reads one row.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import sys
import threading
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from benchmarks.decode_cpu import SHAPES, tiny_tokenizer  # noqa: E402
from benchmarks.decode_quality_gpu import (agreement, bf16_reference, checksum, modules_reference,  # noqa: E402
                                           steps_vs_prefill, teacher_forced)
from myassistant.chat import (ChatEngine, GenerationSettings, GenerationStats, gemv, gemv_mma,  # noqa: E402
                              int_weights, scratch, weight_only)
from myassistant.chat.batch import bucket  # noqa: E402

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


def step_ms(engine: ChatEngine, rows: int, length: int = 256, reps: int = 50, mode: str = "greedy",
            position: int = 0) -> float:
    """Milliseconds a step of the decoder's graph (`mode`: chat.batch's), replayed back to back, each row at cache
    `position` (no row is live, so replays do not advance it; attention reads the keys up to it)."""
    with torch.inference_mode():
        graph = engine.batch.graph(rows, length, mode)  # captured here if no reply needed it
        engine.batch.positions[:rows] = position
        graph.replay()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        graph.replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / reps * 1e3


def load_form(host: LlamaForCausalLM, bits: int, keep_host: bool = True) -> LlamaForCausalLM:
    """A copy of the host (CPU) model on the GPU as the engine loads one (`keep_host` False: the host model itself):
    bf16 as it is, int8 / int4 through `weight_only.to_device` (a layer at a time, no bf16 copy of the layers kept)."""
    model = copy.deepcopy(host) if keep_host else host
    if bits == 16:
        return model.to("cuda")
    return weight_only.to_device(model, torch.device("cuda"), bits, model.model.layers)


def memory(peak: int | None = None, **fields) -> dict:
    """GiB of `fields` (bytes), of what is allocated now and of the peak (`peak` bytes, else torch's)."""
    gib = lambda b: round(b / 2 ** 30, 2)  # noqa: E731
    return {**{k: gib(v) for k, v in fields.items()}, "allocated_gib": gib(torch.cuda.memory_allocated()),
            "max_allocated_gib": gib(torch.cuda.max_memory_allocated() if peak is None else peak)}


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
            "slowest_first_token_ms": round(max(s.first_token_s for s in stats) * 1e3, 1),
            "min_chat_decode_tokens_per_s": round(min(s.tokens_per_s for s in stats), 1),
            "total_tokens_per_s": round(sum(s.new_tokens for s in stats) / wall, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=SHAPES, default="internlm2-1.8b")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--no-fp32", action="store_true", help="skip the fp32 token comparison")
    parser.add_argument("--weight-bits", type=int, nargs="+", choices=(16, 8, 4), default=[16],
                        help="the layers' weights: bf16 (16) and / or weight-only int8 / int4, one after the other, "
                             "each loaded from the same bf16 model in host memory (chat.weight_only.to_device)")
    parser.add_argument("--chats", type=int, nargs="*", default=[2, 4, 8], help="concurrent chats to time")
    parser.add_argument("--chat-runs", type=int, default=3, help="runs of each concurrent case (the median reported)")
    parser.add_argument("--reference", metavar="PATH",
                        help="int8 / int4 forms without bf16's cases: top-1 against the bf16 modules' logits, computed "
                             "and saved at PATH by the first process (from the same random model), loaded by the next")
    parser.add_argument("--no-peer", action="store_true", help="skip the peer (`generate`)")
    parser.add_argument("--no-rows", action="store_true",
                        help="one-row products on the tensor-core kernel only (chat.gemv.ROWS_ONE_ROW off)")
    args = parser.parse_args(argv)
    # every weight form compiles the layer step anew (3 variants each): more than dynamo's default 8
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    tokenizer = tiny_tokenizer()
    # bf16 first (the quality reference), then the others in the order given
    forms = sorted(set(args.weight_bits), key=lambda b: (b != 16, args.weight_bits.index(b)))
    quantised = forms != [16]
    if args.reference:
        assert 16 not in forms, "--reference: int8 / int4 forms only (bf16 is the reference)"
    # several forms: one random bf16 model kept in host memory, each form loaded from it as the engine loads
    host = build(args.shape, torch.bfloat16, "cuda") if quantised else None
    sequences = want = None
    gemv.ROWS_ONE_ROW = not args.no_rows
    peer = float("nan") if args.no_peer else None  # nan: vs_hf_generate not measured
    if args.reference:
        loaded = Path(args.reference).exists()
        if loaded:
            saved = torch.load(args.reference)
            sequences, want = saved["sequences"], saved["want"].cuda()
            same = saved["checksum"] == checksum(host)
        else:
            sequences, want = modules_reference(host, tokenizer, args.reference)
            same = True
        emit("reference", of="bf16 modules (one forward a sequence)", positions=len(want), same_model=same,
             path=args.reference, loaded=loaded)
    host = host.cpu() if quantised else None
    bandwidth = copy_bandwidth()  # before any form's peak memory is counted: the copy holds 8 GiB
    emit("copy_bandwidth", tb_per_s=round(bandwidth / 1e12, 3))
    for bits in forms:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        model = load_form(host, bits, keep_host=len(forms) > 1) if quantised else build(args.shape, torch.bfloat16,
                                                                                          "cuda")
        loaded = memory(load_peak_gib=torch.cuda.max_memory_allocated())
        engine = ChatEngine(model, tokenizer, name=args.shape)
        engine.stop_ids = []  # random weights: every reply runs the full length
        emit("device", name=torch.cuda.get_device_name(0), torch=torch.__version__, rows=engine.batch.rows,
             cache_tokens_per_row=engine.batch.max_len, shape=args.shape, bits=bits)
        short = [{"role": "user", "content": "Tell me about the weather today, please."}]
        settings = GenerationSettings(temperature=0, max_new_tokens=args.new_tokens)
        prompt_ids, _, _ = engine.prompt(short, settings)
        if bits == 16 and quantised:
            sequences, want, yardstick = bf16_reference(engine)
            emit("quality_bf16", **yardstick)
        start = time.perf_counter()
        engine.warm_up()
        emit("warm_up", bits=bits, seconds=round(time.perf_counter() - start, 1), graphs=sorted(engine.batch.graphs),
             products_picked={f"{k[0]}x{k[1]}{'_gated' if k[2] else ''}{HANDED[max(k[3], k[4])]}_{str(k[-2])[6:]}"
                              f"_{tile_label(k[-1])}": v for k, v in gemv._picked.items()})
        emit("products_timed", bits=bits, **products_timed(bandwidth))
        if peer is None:
            peer = hf_generate(model, prompt_ids, args.new_tokens)
            emit("hf_generate", tokens_per_s=round(peer, 1))
        serving_peak = run_cases(engine, bits, short, settings, peer, bandwidth, args)
        emit("memory", bits=bits, **loaded, serving=memory(peak=serving_peak,
            weights_gib=sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))))
        if bits < 16 and sequences is None:  # no bf16 run and no --reference: nothing to agree with
            emit("quality", bits=bits, skipped="no reference: add 16 to --weight-bits or pass --reference")
        elif bits < 16:  # after the speed and memory cases: a time box that ends here still reports them
            steps = teacher_forced(engine, sequences)
            emit("quality", bits=bits, positions=len(want), against="bf16 modules" if args.reference else "bf16 steps",
                 **agreement(torch.cat(steps), want, f"int{bits}"), **steps_vs_prefill(engine, sequences, steps))
        del engine, model
        gc.collect()
        scratch.release(weight_only.SCRATCH)
    if not args.no_fp32:
        torch.cuda.empty_cache()
        model32 = build(args.shape, torch.float32, "cuda")
        engine32 = ChatEngine(model32, tokenizer, name=args.shape)
        engine32.stop_ids = []
        emit("same_tokens_fp32", **compare(engine32, prompt_ids, 64))
    return 0


# chat.gemv's key of a product that hands its rows' sums of squares on, or takes them (2): "_sq" in its label
HANDED = {0: "", 1: "", 2: "_sq"}


def tile_label(rows: int) -> str:
    """A pick's label for chat.gemv.tile_rows' tile: a decode step's one row or several, or a prefill's tile."""
    return ("row" if rows == 1 else f"rows{gemv_mma.ROWS}" if rows <= gemv_mma.ROWS else "rows" if rows <= gemv.MAX_ROWS
            else f"prefill{rows}")


def products_timed(bandwidth: float) -> dict:
    """Per product shape and row bucket: the best candidate `chat.gemv._pick` timed at the warm-up (µs, L2 flushed, in
    CUDA graphs) and its fraction of the copy bandwidth over the weight's bytes (int4: half a byte a weight plus a
    float32 scale per 128; int8: a byte plus one a row; bf16 / fp16: two), and the best tensor-core tile's µs."""
    found = {}
    for key, times in gemv.timed.items():
        n, k, gated, residual, norm, _, wdtype, rows = key
        if not times:
            continue
        n_w = 2 * n if gated else n
        size = (n_w * k // 2 + n_w * k // int_weights.GROUP * 4 if wdtype == torch.uint8 else
                n_w * k + n_w * 4 if wdtype == torch.int8 else n_w * k * wdtype.itemsize)
        config = min(times, key=times.get)
        tiles = [ms for c, ms in times.items() if isinstance(c[-1], int)]  # the tensor-core kernel's (stages)
        found[f"{n_w}x{k}{'_gated' if gated else ''}{HANDED[max(residual, norm)]}_{tile_label(rows)}"] = {
            "us": round(times[config] * 1e3, 1), "of_bandwidth": round(size / bandwidth / (times[config] / 1e3), 3),
            "config": list(config), "tensor_cores_us": round(min(tiles) * 1e3, 1) if tiles else None}
    return found


def hf_generate(model: LlamaForCausalLM, prompt_ids: list[int], new_tokens: int) -> float:
    """The peer's tokens/s: ``model.generate`` (dynamic cache, batch 1), the second of two runs."""
    ids = torch.tensor([prompt_ids], device="cuda")
    with torch.inference_mode():
        for _ in range(2):  # the second is timed
            torch.cuda.synchronize()
            start = time.perf_counter()
            model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
            torch.cuda.synchronize()
    return new_tokens / (time.perf_counter() - start)


def run_cases(engine: ChatEngine, bits: int, short: list[dict], settings: GenerationSettings, peer: float,
              bandwidth: float, args: argparse.Namespace) -> int:
    """One chat, the bf16 token comparison, first token, concurrent chats, graphed steps and the bandwidth
    fractions of the engine's decode over `bits`-bit layer weights; returns the peak of allocated GPU bytes before
    the second copy (which holds 8 GiB)."""
    model = engine.model
    reply(engine, short, settings)
    stats = reply(engine, short, settings)
    one_chat = stats.new_tokens / stats.elapsed_s
    emit("engine", bits=bits, prompt_tokens=stats.prompt_tokens, new_tokens=stats.new_tokens,
         tokens_per_s=round(one_chat, 1), decode_tokens_per_s=round(stats.tokens_per_s, 1),
         first_token_ms=round(stats.first_token_s * 1e3, 1), vs_hf_generate=round(one_chat / peer, 2),
         graph_problem=engine.batch.broken)
    if bits == 16:
        emit("same_tokens_bf16", **compare(engine, engine.prompt(short, settings)[0], args.new_tokens))
    # the app's default sampling (temperature 0.8, top-p 0.8), and with a repetition penalty
    sampled = dataclasses.replace(GenerationSettings(), max_new_tokens=args.new_tokens, seed=0)
    for case, how in (("engine_sampled", sampled), ("engine_penalty", dataclasses.replace(sampled, repetition_penalty=1.1))):
        reply(engine, short, how)
        got = reply(engine, short, how)
        emit(case, bits=bits, decode_tokens_per_s=round(got.tokens_per_s, 1), tokens_per_s=round(
            got.new_tokens / got.elapsed_s, 1), of_greedy=round(got.tokens_per_s / stats.tokens_per_s, 3),
            graph_problem=engine.batch.broken)

    one = GenerationSettings(temperature=0, max_new_tokens=1)
    for name, repeats in (("ttft_120", 15), ("ttft_512", 71)):  # prompts of ~120 and 513 tokens
        long = [{"role": "user", "content": " ".join(["tell me about the weather today"] * repeats)}]
        reply(engine, long, one)
        times = sorted(reply(engine, long, one).first_token_s for _ in range(5))
        emit(name, bits=bits, prompt_tokens=len(engine.prompt(long, one)[0]), first_token_ms=round(times[2] * 1e3, 1))

    for chats in args.chats:
        concurrent(engine, short, chats, args.new_tokens)  # captures this row bucket's graphs at every length
        # several runs, the median reported: chats at once are host-bound and one run of a process can be off
        # (1.8B, 8 chats: 0.66-0.90 of one chat between single runs of one session's calls)
        runs = sorted((concurrent(engine, short, chats, args.new_tokens) for _ in range(args.chat_runs)),
                      key=lambda r: r["min_chat_tokens_per_s"])
        result = runs[len(runs) // 2]
        emit(f"concurrent_{chats}", bits=bits, new_tokens=args.new_tokens, **result,
             slowest_of_one_chat=round(result["min_chat_tokens_per_s"] / one_chat, 3),
             slowest_of_one_chat_runs=[round(r["min_chat_tokens_per_s"] / one_chat, 3) for r in runs])
    if engine.batch.broken or not engine.batch.cuda_graphs:
        return torch.cuda.max_memory_allocated()  # no graphs (engine's graph_problem says why)
    rows_1_ms = step_ms(engine, 1)
    rows_8_ms = step_ms(engine, 8)
    middle = stats.prompt_tokens + args.new_tokens // 2  # a reply's average position: its attention's average reads
    rows_1_middle_ms = step_ms(engine, 1, length=bucket(middle, engine.batch.max_len), position=middle)
    emit("step_ms", bits=bits, rows_1=round(rows_1_ms, 3), rows_8=round(rows_8_ms, 3),
         rows_1_sampled=round(step_ms(engine, 1, mode="sample"), 3), rows_1_middle=round(rows_1_middle_ms, 3),
         middle_position=middle)
    # Bytes a step reads: every parameter (as the 1.8B figures count), and without the embedding table, of
    # which a step reads one row; the layers' products count their quantised bytes when quantised.
    weight_bytes = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    read = weight_bytes - model.model.embed_tokens.weight.numel() * model.model.embed_tokens.weight.element_size()
    # the limit: the faster of this copy and the run's first (a GPU's copy moves ~2 % between processes and minutes)
    peak = torch.cuda.max_memory_allocated()
    again = copy_bandwidth()
    emit("copy_bandwidth", bits=bits, tb_per_s=round(again / 1e12, 3), when="after the cases")
    bandwidth = max(bandwidth, again)
    emit("roofline", bits=bits, weights_gb=round(weight_bytes / 1e9, 2), tokens_per_s=round(bandwidth / weight_bytes, 1),
         bandwidth_tb_per_s=round(bandwidth / 1e12, 3),
         decode_of_bandwidth=round(stats.tokens_per_s * weight_bytes / bandwidth, 3),
         step_1_row_of_bandwidth=round(weight_bytes / bandwidth / (rows_1_ms / 1e3), 3),
         step_1_row_middle_of_bandwidth=round(weight_bytes / bandwidth / (rows_1_middle_ms / 1e3), 3),
         read_gb=round(read / 1e9, 2), decode_of_bandwidth_read=round(stats.tokens_per_s * read / bandwidth, 3))
    return peak


if __name__ == "__main__":
    sys.exit(main())
