"""A CPU decode step's attention (all layers) on an fp32 cache: torch's SDPA vs chat.attention_cpu's C kernel.

    python benchmarks/decode_attention_cpu.py [--lengths 96 512] [--threads 1 2] [--rows 8] [--reps 10]

The InternLM2-1.8B shape by default: 24 layers, 8 kv heads of 128, 2 query heads per kv head. Each layer
has its own cache [rows + 1, kv_heads, L + 128, 128] (the engine's strided view: rows 0..rows-1, keys
0..L-1), rows at positions between L/2 and L - 1 (one at L - 1), as the engine's CPU steps attend over the
longest row. A step is `decode_attention`'s two callees called once per layer, as the engine calls them
(SDPA with the engine's mask; the kernel with the positions); before each step a buffer of 4x the L3 is
written, so the cache comes from memory as in serving (24 layers of 8 rows at 96 keys are 151 MB).
Printed: one JSON line per (L, threads) with the median ms per step of each, the ratio, the K/V bytes the
rows attend to over the kernel's time (GB/s), the same process's read bandwidth (torch sum over 1 GiB)
as the peer for that figure, and the largest difference between the two outputs.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
from torch.nn import functional as F

from myassistant.chat import attention_cpu

FLUSH_BYTES = 128 << 20  # 4x this machine's 32 MB L3: what a step's cache would meet after the weights


def step_ms(fn, flush: torch.Tensor, reps: int) -> float:
    """Median ms of fn() over `reps`, the caches cold (flush written) before each."""
    fn()
    times = []
    for _ in range(reps):
        flush.add_(1.0)
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def read_gb_s(reps: int = 5) -> float:
    """This process's read bandwidth at the current threads: a sum over 1 GiB, best of `reps`."""
    big = torch.ones(1 << 28)
    best = min(_timed(lambda: big.sum()) for _ in range(reps))
    return big.numel() * 4 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def case(length: int, threads: int, rows: int, layers: int, kv_heads: int, group: int, dim: int, reps: int) -> dict:
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    max_len = length + 128
    caches = [(torch.randn(rows + 1, kv_heads, max_len, dim, generator=gen),
               torch.randn(rows + 1, kv_heads, max_len, dim, generator=gen)) for _ in range(layers)]
    queries = [torch.randn(rows, kv_heads, group, dim, generator=gen) for _ in range(layers)]
    positions = torch.randint(length // 2, length, (rows,), generator=gen)
    positions[0] = length - 1
    mask = torch.where(torch.arange(length)[None] <= positions[:, None], 0.0, float("-inf")).view(rows, 1, 1, length)
    views = [(k[:rows, :, :length], v[:rows, :, :length]) for k, v in caches]
    scale = dim ** -0.5
    flush = torch.zeros(FLUSH_BYTES // 4)

    def sdpa() -> list[torch.Tensor]:
        return [F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale) for q, (k, v) in zip(queries, views)]

    def kernel() -> list[torch.Tensor]:
        return [attention_cpu.attend(q, k, v, positions, scale) for q, (k, v) in zip(queries, views)]

    with torch.inference_mode():
        diff = max(float((a - b).abs().max()) for a, b in zip(sdpa(), kernel()))
        sdpa_ms, kernel_ms = step_ms(sdpa, flush, reps), step_ms(kernel, flush, reps)
        bandwidth = read_gb_s()
    kv_bytes = int((positions + 1).sum()) * kv_heads * dim * 4 * 2 * layers
    return {"length": length, "threads": threads, "rows": rows, "layers": layers, "sdpa_ms": round(sdpa_ms, 2),
            "kernel_ms": round(kernel_ms, 2), "kernel_speedup": round(sdpa_ms / kernel_ms, 2),
            "kv_mb": round(kv_bytes / 1e6, 1), "kernel_gb_s": round(kv_bytes / kernel_ms / 1e6, 1),
            "sdpa_gb_s": round(kv_bytes / sdpa_ms / 1e6, 1), "read_gb_s": round(bandwidth, 1),
            "max_abs_diff": diff, "load": round(os.getloadavg()[0], 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[96, 512], help="attended cache length L")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rows", type=int, default=8, help="concurrent chats")
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--group", type=int, default=2, help="query heads per kv head")
    parser.add_argument("--dim", type=int, default=128, help="head width")
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args(argv)
    attention_cpu.load()  # built before timing; says why where it cannot
    for length in args.lengths:
        for threads in args.threads:
            print(json.dumps(case(length, threads, args.rows, args.layers, args.kv_heads, args.group, args.dim,
                                  args.reps)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
