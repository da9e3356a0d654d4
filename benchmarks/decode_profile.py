"""Where a decode step's time goes: per-kernel GPU times of one step (1 and 8 rows) and of a 512-token prefill.

    python3 -m benchmarks.decode_profile [--shape internlm2-1.8b] [--baseline] [--gaps-only]

The engine's decode step is run eagerly (compiled layers, no graph: the same kernels a graph replays)
under torch.profiler; kernels are grouped by name, GPU microseconds per step. Also: one graphed step
replayed back to back (GPU time, 1 and 8 rows) and the host side of a first token (templating,
prefill, first sample); first of all, where the GPU idles while a reply streams (``gaps``).
``--baseline`` runs the same with the fused kernels of chat.gemv off (the cuBLAS products and the
modules around them).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.decode_cpu import SHAPES, tiny_tokenizer  # noqa: E402
from benchmarks.decode_gpu import build, concurrent, emit, reply, step_ms  # noqa: E402
from myassistant.chat import ChatEngine, GenerationSettings, gemv  # noqa: E402


def kernels(fn, reps: int = 3, top: int = 25) -> dict:
    """GPU time per call of fn() by kernel name (the `top` longest), kernels per call, total us per call."""
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    rows = []
    for evt in prof.key_averages():
        us = getattr(evt, "self_device_time_total", None) or getattr(evt, "self_cuda_time_total", 0)
        if us and str(getattr(evt, "device_type", "")).endswith("CUDA"):
            rows.append((evt.key[:90], evt.count / reps, us / reps))
    rows.sort(key=lambda r: -r[2])
    return {"gpu_us": round(sum(r[2] for r in rows), 1), "kernels": round(sum(r[1] for r in rows), 1),
            "top": [[name, count, round(us, 1)] for name, count, us in rows[:top]]}


def gaps(fn, every_us: float = 2.0) -> dict:
    """Where the GPU waits while ``fn()`` (a whole reply) runs: the trace's kernels and copies against its span.

    ``idle_us_per_step``: GPU time with nothing running, a decode step (a graph launch); ``outside_graph``: the
    kernels launched one by one (not by a graph replay), GPU microseconds a step; ``largest_gaps``: the longest
    idle stretches with the kernels on either side; ``idle_by_neighbours``: idle microseconds a step by the
    kernels before and after.
    """
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        events = json.loads(path.read_text())["traceEvents"]
    runtime = {e.get("args", {}).get("correlation"): e["name"] for e in events if e.get("cat") == "cuda_runtime"}
    gpu = sorted((e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")), key=lambda e: e["ts"])
    steps = sum(1 for name in runtime.values() if name == "cudaGraphLaunch") or 1
    busy, end, idle, stretches, pairs = 0.0, gpu[0]["ts"], 0.0, [], {}
    for before, event in zip([None, *gpu], gpu):
        start, stop = event["ts"], event["ts"] + event.get("dur", 0)
        if start > end:
            idle += start - end
            if before is not None:
                pair = f"{before['name'][:40]} -> {event['name'][:40]}"
                pairs[pair] = pairs.get(pair, 0.0) + (start - end) / steps
            if start - end >= every_us and before is not None:
                stretches.append((round(start - end, 1), before["name"][:60], event["name"][:60]))
        busy += max(0.0, stop - max(start, end))
        end = max(end, stop)
    outside: dict[str, float] = {}
    for event in gpu:
        launcher = runtime.get(event.get("args", {}).get("correlation"), "")
        if launcher != "cudaGraphLaunch":
            key = f"{event['name'][:60]} ({launcher or event.get('cat')})"
            outside[key] = outside.get(key, 0.0) + event.get("dur", 0) / steps
    stretches.sort(reverse=True)
    return {"steps": steps, "span_us_per_step": round((end - gpu[0]["ts"]) / steps, 1),
            "busy_us_per_step": round(busy / steps, 1), "idle_us_per_step": round(idle / steps, 1),
            "gaps_over_us": every_us, "gaps_per_step": round(len(stretches) / steps, 2),
            "outside_graph": {k: round(v, 2) for k, v in sorted(outside.items(), key=lambda kv: -kv[1])[:12]},
            "idle_by_neighbours": {k: round(v, 2) for k, v in sorted(pairs.items(), key=lambda kv: -kv[1])[:10]},
            "largest_gaps": stretches[:12]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=SHAPES, default="internlm2-1.8b")
    parser.add_argument("--baseline", action="store_true", help="chat.gemv's fused kernels off")
    parser.add_argument("--gaps-only", action="store_true", help="only the idle GPU time of a reply (`gaps`)")
    args = parser.parse_args(argv)
    if args.baseline:
        gemv.triton = None
    label = "baseline" if args.baseline else "fused"
    tokenizer = tiny_tokenizer()
    model = build(args.shape, torch.bfloat16, "cuda")
    engine = ChatEngine(model, tokenizer, name=args.shape)
    engine.stop_ids = []
    start = time.perf_counter()
    engine.warm_up()
    short = [{"role": "user", "content": "Tell me about the weather today, please."}]
    if not args.gaps_only:
        concurrent(engine, short, 8, 16)  # captures the 8-row step
    emit("profile_warm_up", path=label, seconds=round(time.perf_counter() - start, 1))
    for how, settings in (("greedy", GenerationSettings(temperature=0, max_new_tokens=128)),
                          ("sampled", GenerationSettings(temperature=0.7, top_p=0.8, seed=0, max_new_tokens=128))):
        emit("profile_gaps", path=label, sampling=how, graph_ms=round(step_ms(engine, 1), 3),
             decode_tokens_per_s=round(reply(engine, short, settings).tokens_per_s, 1),
             **gaps(lambda: reply(engine, short, settings)))  # noqa: B023 - called at once
    if args.gaps_only:
        return 0
    batch = engine.batch
    with torch.inference_mode():
        for rows in (1, 8):
            emit("profile_step", path=label, rows=rows, graph_ms=round(step_ms(engine, rows), 3),
                 **kernels(lambda: batch._step_logits(rows, 256)))
        long = [{"role": "user", "content": " ".join(["tell me about the weather today"] * 71)}]
        one = GenerationSettings(temperature=0, max_new_tokens=1)
        ids, _, _ = engine.prompt(long, one)
        x = torch.tensor([ids], device="cuda")
        emit("profile_prefill", path=label, tokens=len(ids),
             **kernels(lambda: engine.decoder.prefill(x, batch.cache, 0)))
        times = {}
        for _ in range(5):
            t0 = time.perf_counter()
            engine.prompt(long, one)
            t1 = time.perf_counter()
            logits = engine.decoder.prefill(x, batch.cache, 0)
            torch.cuda.synchronize()
            t2 = time.perf_counter()
            int(logits.argmax())
            t3 = time.perf_counter()
            for key, value in (("template_ms", t1 - t0), ("prefill_ms", t2 - t1), ("sample_ms", t3 - t2)):
                times.setdefault(key, []).append(value * 1e3)
    reply(engine, long, one)
    ttft = sorted(reply(engine, long, one).first_token_s for _ in range(5))[2]
    emit("profile_ttft", path=label, first_token_ms=round(ttft * 1e3, 2),
         **{k: round(sorted(v)[2], 2) for k, v in times.items()})
    stats = reply(engine, short, GenerationSettings(temperature=0, max_new_tokens=256))
    emit("profile_engine", path=label, decode_tokens_per_s=round(stats.tokens_per_s, 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
