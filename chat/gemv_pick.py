"""Which configuration each fused decode product of chat.gemv runs: the candidates per weight shape, and their
timing inside a CUDA graph, where a decode step runs them.

A product's time depends on its tile width, K split, warps and pipeline stages more than any rule of thumb says
(benchmarks/decode_tune_gpu.py), so chat.gemv times a short list per shape at its first call (the warm-up). The
timing is of the kernel as a step's graph replays it: launched back to back inside a graph, each launch after a
256 MB write that leaves none of the weights in the L2, less the writes alone. Timed eagerly instead, each launch
carried the host's launch gap, which is larger for some configurations than others: the warm-up picked slower
configurations for the 1.8B shape's qkv and lm_head (about 25 us a step) and slower one-row int8 products at 7B
(benchmarks/README_decode.md, benchmarks/README.md).
"""
from __future__ import annotations

from typing import Callable

import torch

from myassistant.chat import gemv_dense_rows, gemv_mma, gemv_rows
from myassistant.chat.int_weights import GROUP

BLOCK_K = 256
# Programs a launch should have: at one program per multiprocessor (132 on an H100/H200) too few loads
# are in flight to stream the weights (measured: 0.3-0.5 of the copy bandwidth for the 2048-wide
# o_proj, down and qkv at 128 programs, 0.8-0.93 for gate/up and lm_head at 1,000+).
TARGET_PROGRAMS = 400
# bf16 / fp16: about a program a multiprocessor streams best (benchmarks/decode_tune_gpu.py, H200: gate/up 0.78 of
# the copy bandwidth at 256 programs of 32 whole rows, 0.68 at 512; o_proj 0.32 at 128, 0.30 at 512)
BF16_PROGRAMS = 128
PREFILL_PROGRAMS = 256  # a prefill tile's programs: two a multiprocessor
FLUSH_BYTES = 256 << 20  # more than any GPU's L2
REPEATS = 8  # launches in a timed graph


def candidates(n: int, k: int, quant: int = 0) -> list[tuple]:
    """(BLOCK_N, BLOCK_K, SPLIT, warps, stages) to try for an [n, k] weight: per block width, the K split that
    gives about TARGET_PROGRAMS programs. The first is the pick where nothing was timed (CPU, inside a capture).
    `quant` 8 / 4: weight-only int8 / int4, whose rows are 1/2 and 1/4 of bf16's bytes: wider K blocks are tried
    too (an int4 block is whole groups of GROUP columns) so that a load streams as many bytes as bf16's."""
    if quant == 4:
        widths = [b for b in (4 * GROUP, 2 * GROUP, GROUP) if k % b == 0]
        return [c for block_k in widths for c in _split_candidates(n, k, block_k, (32, 64, 128))][:8]
    block_k = BLOCK_K if k % BLOCK_K == 0 else 64 if k % 64 == 0 else 16
    if quant == 0:
        return _split_candidates(n, k, block_k, (32, 16, 64), BF16_PROGRAMS, (3, 4))
    found = _split_candidates(n, k, block_k, (32, 16, 64))
    # whole-K programs: gate/up's double blocks stream best unsplit (0.80 of the copy bandwidth against 0.65)
    found += [c for c in ((64, block_k, 1, 4, 3), (32, block_k, 1, 4, 4)) if c not in found]
    if quant == 8 and k % (2 * block_k) == 0:
        found += _split_candidates(n, k, 2 * block_k, (32, 64))
    return found


def all_candidates(n: int, k: int, quant: int, gated: bool, x: torch.Tensor, prefill: bool, rows_kernels: bool = True,
                   mma: bool = True) -> list[tuple]:
    """Every configuration chat.gemv's `_pick` times for the product of rows `x` against an [n, k] weight (`quant`
    8 / 4: weight-only int8 / int4): the tensor-core tiles (a `prefill`'s tiles past a decode step's rows), for one
    row also chat.gemv_rows' / chat.gemv_dense_rows' (`rows_kernels`), for 1-8 bf16 rows over int4 on CUDA
    chat.gemv_mma's (`mma`): at 2-8 rows the tiles measured slower for every 7B product, so only the first stays,
    as the product the others must agree with."""
    rows = x.shape[0]
    found = tile_candidates(n, k, quant) if prefill else candidates(n, k, quant)
    if rows == 1 and x.dtype in (torch.bfloat16, torch.float16) and rows_kernels:
        found += gemv_rows.candidates(n, k, quant) if quant else gemv_dense_rows.candidates(n, k, gated)
    if rows <= gemv_mma.ROWS and quant == 4 and x.dtype == torch.bfloat16 and x.is_cuda and mma:
        found = (found if rows == 1 else found[:1]) + gemv_mma.candidates(n, k, rows)
    return found


def tile_candidates(n: int, k: int, quant: int) -> list[tuple]:
    """(BLOCK_N, BLOCK_K, SPLIT, warps, stages) for a prefill tile of 17-128 rows against a quantised weight: per block
    width, K split until about PREFILL_PROGRAMS programs (an unsplit 64-wide tile gave the 7B shape's o_proj and down
    64 programs: 0.07-0.16 of the copy bandwidth on an H200); an int4 block is whole groups of GROUP columns."""
    block_k = GROUP if quant == 4 else 64 if k % 64 == 0 else 16
    return _split_candidates(n, k, block_k, (32, 64, 128, 16), PREFILL_PROGRAMS)


def _split_candidates(n: int, k: int, block_k: int, widths: tuple[int, ...], programs: int = TARGET_PROGRAMS,
                      stages: tuple[int, ...] = (3,)) -> list[tuple[int, int, int, int, int]]:
    found = []
    for block_n in widths:
        split = 1
        while -(-n // block_n) * split < programs and k % (2 * split * block_k) == 0 and split < 8:
            split *= 2
        found += [(block_n, block_k, split, 4, s) for s in stages]
    return found


def graph_ms(body: Callable[[], None], repeats: int = REPEATS) -> float:
    """Median ms of replaying a CUDA graph of `repeats` calls of `body` (its kernels compiled, its buffers made)."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(repeats):
            body()
    graph.replay()
    runs = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        runs.append(start.elapsed_time(end))
    return sorted(runs)[len(runs) // 2]


def time_in_graphs(configs: list[tuple], launch: Callable[[tuple], None], device: torch.device) -> dict[tuple, float]:
    """ms a launch of each configuration takes in a graph with the L2 flushed before it (see the module's text);
    a configuration whose graph cannot be captured is left out."""
    flush = torch.empty(FLUSH_BYTES, dtype=torch.uint8, device=device)
    flushes = graph_ms(flush.zero_)
    times = {}
    for config in configs:
        def body(config=config):
            flush.zero_()
            launch(config)
        try:
            times[config] = max(graph_ms(body) - flushes, 0.0) / REPEATS
        except RuntimeError:  # a capture that fails here fails in the step too: not a candidate
            torch.cuda.synchronize(device)
    return times
