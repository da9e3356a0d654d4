"""One-row products against bf16 / fp16 weights on the CUDA cores: chat.gemv's candidates beside its tensor-core tiles
for a one-chat decode step.

chat.gemv's tensor-core kernel pads the row to a 16-row tile and hands each weight tile to the dot through shared
memory; its picks favour about one program a multiprocessor (chat.gemv_pick.BF16_PROGRAMS). Here a program is a few
whole rows (BLOCK_N, or a K slice of them) and 2-8 warps, many programs a multiprocessor: a loop trip multiplies a
[BLOCK_N, BLOCK_K] weight tile by the input's BLOCK_K columns element by element in float32 (the products exact, the
sums float32, as the tensor cores' bf16 dots), the next trip's tile loaded before this trip's sums, the row sums taken
once at the end. BLOCK_K is long (1024-2048 columns: a 1.8B row in one or two trips), so a program asks for all or
half of its weights at once. The candidates are timed in graphs at the warm-up like the others (chat.gemv_pick), so
they serve only where they are faster. On an H200 (1.8B, one chat) their first form, 8-16 rows a program over
512-column trips, took qkv, o_proj, down and lm_head from the tensor-core kernel (graphed step 1.427 -> 1.325 ms,
session 24); this form takes gate/up too (step 1.345 -> 1.177 ms, decode 737.6 -> 818.1 tokens/s against the code
before in one call, session 25; benchmarks/README.md).
The input's norm (its sums of squares handed on, or computed from the row), SiLU*mul, the residual add, the split-K sum
and the squares handed on are chat.gemv_rows' and chat.gemv_epilogue's.
"""
from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs
    triton = None

TAG = "dense"  # the configurations' last field: chat.gemv's `_launch` sends them here

if triton is not None:
    from myassistant.chat.gemv_epilogue import _finish
    from myassistant.chat.gemv_rows import _row_rstd, _x_cols

    @triton.jit
    def _tiles(rows, k0, GATED: tl.constexpr, N: tl.constexpr, K: tl.constexpr):
        """The weight tiles of a trip at column k0: the rows', and the up rows' for GATED."""
        w = tl.load(rows + k0)
        w2 = w
        if GATED:
            w2 = tl.load(rows + N * K + k0)
        return w, w2

    @triton.jit
    def _dense_kernel(x_ptr, w_ptr, out_ptr, res_ptr, nw_ptr, ws_ptr, count_ptr, sq_in_ptr, sq_out_ptr, stride_om,
                      stride_rm, eps, N: tl.constexpr, K: tl.constexpr, NORM: tl.constexpr, SHARED_NORM: tl.constexpr,
                      GATED: tl.constexpr, RESIDUAL: tl.constexpr, SQUARES: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_K: tl.constexpr, SPLIT: tl.constexpr):
        pid = tl.program_id(0)
        part = tl.program_id(1)  # which K / SPLIT slice of the product this program sums
        n = pid * BLOCK_N + tl.arange(0, BLOCK_N)  # N is a multiple of BLOCK_N (the candidates are)
        cols = tl.arange(0, BLOCK_K)
        dtype = x_ptr.dtype.element_ty
        first = part * (K // SPLIT)
        rstd = _row_rstd(x_ptr, sq_in_ptr, eps, K, NORM, SHARED_NORM)
        rows = w_ptr + n[:, None] * K + first + cols[None, :]
        w, w2 = _tiles(rows, 0, GATED, N, K)
        acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
        acc2 = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
        for k0 in range(0, K // SPLIT - BLOCK_K, BLOCK_K):
            w_next, w2_next = _tiles(rows, k0 + BLOCK_K, GATED, N, K)  # in flight during this trip's sums
            x = _x_cols(x_ptr, nw_ptr, first + k0 + cols, rstd, dtype, NORM)[None, :]
            acc += w.to(tl.float32) * x
            if GATED:
                acc2 += w2.to(tl.float32) * x
            w, w2 = w_next, w2_next
        x = _x_cols(x_ptr, nw_ptr, first + K // SPLIT - BLOCK_K + cols, rstd, dtype, NORM)[None, :]  # the last trip
        acc += w.to(tl.float32) * x
        out = tl.sum(acc, 1)
        out2 = out
        if GATED:
            acc2 += w2.to(tl.float32) * x
            out2 = tl.sum(acc2, 1)
        m = tl.arange(0, 1)
        _finish(out[None, :], out2[None, :], ws_ptr, count_ptr, res_ptr, out_ptr, sq_out_ptr, pid, part, m, n, m < 1,
                n < N, N, stride_om, stride_rm, dtype, GATED, RESIDUAL, SQUARES, SPLIT, 1, BLOCK_N)


# (BLOCK_N, BLOCK_K, warps): a few rows a program over long K tiles, so that a program asks for all (or half) of its
# weights at once and many programs stream side by side. On an H200 the grid's best for the 1.8B one-row products
# (benchmarks/decode_tune_gpu.py --dense, session 25): qkv 4 x 2048, o_proj and down 2 x 2048 / 1024, lm_head 8 x 2048,
# all 4 warps, gate/up 2 x 2048 at 2 warps; the graphed step 1.354 -> 1.239 ms against this module's first picks
# (8-16 rows, 512 columns a trip).
SHAPES = ((2, 2048, 4), (4, 2048, 4), (8, 2048, 4), (2, 1024, 4))
GATED_SHAPES = ((2, 2048, 2), (2, 1024, 8), (4, 2048, 4), (4, 1024, 8))
PER_THREAD = 64  # weights a thread a tile at most where a program makes several trips (ptxas for sm_90 spills beyond)


def candidates(n: int, k: int, gated: bool) -> list[tuple]:
    """(BLOCK_N, BLOCK_K, SPLIT 1, warps, TAG) for a one-row product against an [n, k] bf16 / fp16 weight (n: the
    output's features; gated: BLOCK_N rows of gate and of up): SHAPES / GATED_SHAPES where they divide the weight and,
    over several trips, hold at most PER_THREAD weights a thread (a K below a shape's tile: one trip of K columns when
    K is a power of two)."""
    found = []
    for block_n, block_k, warps in GATED_SHAPES if gated else SHAPES:
        block_k = min(block_k, k)
        per_thread = block_n * block_k * (2 if gated else 1) // (32 * warps)
        config = (block_n, block_k, 1, warps, TAG)
        if (n % block_n or k % block_k or block_k & (block_k - 1) or (k > block_k and per_thread > PER_THREAD)
                or config in found):
            continue
        found.append(config)
    return found


def launch(x: torch.Tensor, weight: torch.Tensor, out: torch.Tensor, residual: torch.Tensor | None,
           norm_weight: torch.Tensor | None, eps: float, gated: bool, config: tuple, ws: torch.Tensor,
           count: torch.Tensor, squares_in: torch.Tensor | None = None,
           squares_out: torch.Tensor | None = None) -> None:
    """The product of one row `x` [1, K] with the bf16 / fp16 `weight` (chat.gemv's arguments, squares and buffers)."""
    block_n, block_k, split, warps, _ = config
    n = out.shape[1]
    assert x.shape[0] == 1 and x.stride(-1) == 1 and weight.is_contiguous() and n % block_n == 0
    dummy = x
    _dense_kernel[(n // block_n, split)](
        x, weight, out, dummy if residual is None else residual, dummy if norm_weight is None else norm_weight, ws,
        count, count if squares_in is None else squares_in, count if squares_out is None else squares_out,
        out.stride(0), 0 if residual is None else residual.stride(0), eps, N=n, K=x.shape[1],
        NORM=norm_weight is not None, SHARED_NORM=squares_in is not None, GATED=gated, RESIDUAL=residual is not None,
        SQUARES=squares_out is not None, BLOCK_N=block_n, BLOCK_K=block_k, SPLIT=split, num_warps=warps)
