"""Which product configurations make the shortest decode step: a grid of (BLOCK_N, BLOCK_K, SPLIT, warps, stages)
per matrix product of a decode step, timed where they run (CUDA graphs of back-to-back products that read their
weights from memory, benchmarks.gemv_gpu), then one graphed decode step of the whole model (1 and 8 rows) with
the grid's best against chat.gemv's own picks (its candidates, timed at their first call), and the step's kernels.

    python3 -m benchmarks.decode_tune_gpu [--shape internlm2-1.8b] [--workers 14]

The grid's kernels are compiled first by worker processes (Triton's disk cache then serves this one): hundreds of
compiles one after the other would take minutes of a device call. Random weights, bf16.
"""
from __future__ import annotations

import argparse
import itertools
import multiprocessing
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.decode_cpu import SHAPES  # noqa: E402
from benchmarks.decode_gpu import build, copy_bandwidth, emit  # noqa: E402
from benchmarks.decode_profile import kernels  # noqa: E402
from benchmarks.gemv_gpu import graph_time, products  # noqa: E402
from myassistant.chat import gemv, gemv_dense_rows, gemv_pick  # noqa: E402
from myassistant.chat.batch import BatchDecoder  # noqa: E402
from myassistant.chat.fast import StaticCacheDecoder  # noqa: E402

SMEM = 220_000  # bytes of shared memory a program may take (an H100 / H200 multiprocessor has 228 KB)


def grid(n: int, k: int, gated: bool, out_float: bool) -> list[tuple[int, int, int, int, int]]:
    """(BLOCK_N, BLOCK_K, SPLIT, warps, stages) for an [n, k] weight (gated: [gate; up], n / 2 outputs) that fit
    in shared memory and give 100-3,000 programs."""
    found = []
    for block_n, block_k, split, warps, stages in itertools.product((16, 32, 64), (256, 512), (1, 2, 4, 8), (4, 8),
                                                                     (3, 4)):
        smem = stages * (block_n * block_k * 2 * (2 if gated else 1) + gemv.MAX_ROWS * block_k * 2)
        programs = -(-(n // 2 if gated else n) // block_n) * split
        if k % (block_k * split) or smem > SMEM or not 100 <= programs <= 3000 or (out_float and split > 1):
            continue
        found.append((block_n, block_k, split, warps, stages))
    return found


def dense_grid(n: int, k: int, gated: bool) -> list[tuple]:
    """(BLOCK_N, BLOCK_K, SPLIT, warps, "dense") of chat.gemv_dense_rows for one row against an [n, k] weight (gated:
    [gate; up], BLOCK_N a half's rows): 128-40,000 programs, at most 64 weights a thread a tile where there are
    several trips (ptxas for sm_90 spills beyond), 128 in one trip."""
    out_n = n // 2 if gated else n
    found = []
    for block_n, block_k, split, warps in itertools.product((2, 4, 8, 16), (512, 1024, 2048), (1, 2, 4), (2, 4, 8)):
        per_thread = block_n * block_k * (2 if gated else 1) // (32 * warps)
        trips = k // (block_k * split)
        if (k % (block_k * split) or out_n % block_n or not 128 <= out_n // block_n * split <= 40_000
                or not 8 <= per_thread <= (64 if trips > 1 else 128)):
            continue
        found.append((block_n, block_k, split, warps, gemv_dense_rows.TAG))
    return found


def tensors(spec: tuple, rows: int, copies: int = 1) -> tuple:
    """The inputs of a product of `spec` (N, K, norm, gated, residual, float out): x, weight copies, out, residual,
    norm weight."""
    n, k, norm, gated, residual, out_float = spec
    torch.manual_seed(0)
    out_n = n // 2 if gated else n
    weights = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * k ** -0.5 for _ in range(copies)]
    x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
    out = torch.empty(rows, out_n, device="cuda", dtype=torch.float32 if out_float else torch.bfloat16)
    res = torch.randn(rows, out_n, device="cuda", dtype=torch.bfloat16) if residual else None
    nw = (1 + 0.1 * torch.randn(k, device="cuda")).to(torch.bfloat16) if norm else None
    return x, weights, out, res, nw


def compile_configs(task: tuple) -> int:
    """Worker: compile (by launching once) each config of `task` (spec, rows, configs); how many compiled."""
    spec, rows, configs = task
    x, weights, out, res, nw = tensors(spec, rows)
    done = 0
    for config in configs:
        try:
            gemv._launch(x, weights[0], None, out, res, nw, 1e-5, spec[3], config)
            done += 1
        except Exception:  # noqa: BLE001 - a config that does not compile (resources): timed as not there
            pass
    torch.cuda.synchronize()
    return done


def precompile(pool, tasks: list[tuple], workers: int) -> None:
    """Spread each task's configs over the workers."""
    chunks = [(spec, rows, configs[i::workers]) for spec, rows, configs in tasks for i in range(workers)]
    pool.map(compile_configs, [c for c in chunks if c[2]])


def step_ms(batch: BatchDecoder, rows: int, reps: int = 50) -> tuple[float, torch.cuda.CUDAGraph]:
    graph = batch.graph(rows, 256)
    graph.replay()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        graph.replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / reps * 1e3, graph


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=SHAPES, default="internlm2-1.8b")
    parser.add_argument("--workers", type=int, default=14)
    parser.add_argument("--top", type=int, default=4, help="configs of each product timed again at 8 rows")
    parser.add_argument("--dense", action="store_true", help="one row: chat.gemv_dense_rows' configs in the grid too")
    args = parser.parse_args(argv)
    bandwidth = copy_bandwidth()
    emit("copy_bandwidth", tb_per_s=round(bandwidth / 1e12, 3))
    specs = {name: (n, k, norm, gated, residual, name == "lm_head")
             for name, (n, k, norm, gated, residual) in products(SHAPES[args.shape]).items()}
    pool = multiprocessing.get_context("spawn").Pool(args.workers)
    start = time.perf_counter()
    own = [(spec, rows, gemv_pick.candidates(spec[0] // 2 if spec[3] else spec[0], spec[1]))
           for spec in specs.values() for rows in (1, 8)]  # chat.gemv's own candidates (the warm-up times them), both row kinds
    one_row = {spec: grid(spec[0], spec[1], spec[3], spec[5]) + (dense_grid(spec[0], spec[1], spec[3])
                                                                 if args.dense else []) for spec in specs.values()}
    precompile(pool, [(spec, 1, configs) for spec, configs in one_row.items()] + own, args.workers)
    emit("precompiled", seconds=round(time.perf_counter() - start, 1))
    best: dict[tuple, tuple] = {}
    for name, spec in specs.items():
        n, k, norm, gated, residual, out_float = spec
        copies = max(2, -(-(512 << 20) // (n * k * 2)))  # >= 512 MB of weights: none of them stays in L2
        ideal = n * k * 2 / bandwidth
        found = {}
        for rows in (1, 8):
            x, weights, out, res, nw = tensors(spec, rows, copies)
            configs = one_row[spec] if rows == 1 else [c for c in sorted(found, key=found.get)
                                                       if c[-1] != gemv_dense_rows.TAG][:args.top]
            if rows == 8:
                precompile(pool, [(spec, 8, configs)], args.workers)
            times = {}
            for config in configs:
                try:
                    times[config] = graph_time(lambda i: gemv._launch(x, weights[i], None, out, res, nw, 1e-5, gated,
                                                                      config), copies, reps=3)
                except Exception:  # noqa: BLE001
                    continue
            if rows == 1:
                found = times
            ranked = sorted(times, key=times.get)
            best[(name, rows)] = ranked[0]
            emit("tune", product=name, rows=rows, configs=len(times),
                 best=[[list(c), round(times[c] * 1e6, 2), round(ideal / times[c], 3)] for c in ranked[:6]])
            del x, weights, out, res, nw
            torch.cuda.empty_cache()
    emit("tuned", seconds=round(time.perf_counter() - start, 1))
    pool.close()

    model = build(args.shape, torch.bfloat16, "cuda")
    batch = BatchDecoder(StaticCacheDecoder(model, 8192), rows=8)
    with torch.inference_mode():
        batch.positions.fill_(200)  # a chat 200 tokens in: attention over 200 keys of the 256-key bucket
        for label in ("own", "tuned"):
            gemv._picked.clear()
            if label == "tuned":  # the grid's best for every product, 1 row and several
                for name, (n, k, norm, gated, residual, out_float) in specs.items():
                    for rows, handed in itertools.product((1, 8), (0, 1)):  # handed: sums of squares (chat.gemv)
                        key = (n // 2 if gated else n, k, gated, residual * (1 + handed), norm * (1 + handed),
                               torch.float32 if out_float else torch.bfloat16, torch.bfloat16, gemv.tile_rows(rows))
                        gemv._picked[key] = best[(name, rows)]
            times = {}
            for rows in (1, 8):
                times[rows], graph = step_ms(batch, rows)
            emit("step", picks=label, rows_1_ms=round(times[1], 3), rows_8_ms=round(times[8], 3),
                 weights_of_bandwidth=round(sum(p.numel() * 2 for p in model.parameters()) / bandwidth / times[1] * 1e3,
                                            3),
                 picked={f"{k[0]}x{k[1]}{'_gated' if k[2] else ''}_{'rows' if k[-1] > 1 else 'row'}": list(v)
                         for k, v in gemv._picked.items()})
            batch.graphs.clear()
        emit("step_kernels", picks="tuned", rows=1, **kernels(lambda: batch._step_logits(1, 256), top=30))
    return 0


if __name__ == "__main__":
    sys.exit(main())
