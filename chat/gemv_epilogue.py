"""The end of chat.gemv's products (and chat.gemv_rows'): the fused epilogues over a program's fp32 sums (SiLU*mul,
residual, the output's dtype), the split-K sum of the K slices' partial sums in one launch, and the rows' sums of
squares that the next product's RMSNorm needs (``SQUARES``).

Why hand the squares on: a product with the norm fused in (qkv, gate/up, lm_head) needs 1 / RMS of its whole input
row in every program, and with one-row int8 / int4 products that is 2-3 thousand programs each reading the whole
row from L2 first (at 7B, 8 KiB a program: as many bytes again as the qkv product's weights). The product that
wrote the row (the residual adds of o_proj and down) has each value in registers anyway: each program adds its
block's sum of squares to the row's total. The total is fixed-point (an int64 in units of 2^-20): integer sums do
not depend on the order the programs arrive in, so a step's numbers are the same every run.
"""
from __future__ import annotations

import triton
import triton.language as tl

from myassistant.chat.arrival import last_to_arrive

SQUARE_UNITS = tl.constexpr(1048576.0)  # 2^20 units a 1.0: sums of squares to 2^43 (an RMS of 46,000 at K 4096)


@triton.jit
def shared_rstd(sq_ptr, m, m_ok, eps, K: tl.constexpr):
    """1 / RMS of rows m over K from the sums of squares the product that wrote them left (`SQUARES`)."""
    total = tl.load(sq_ptr + m, mask=m_ok, other=0).to(tl.float32) / SQUARE_UNITS
    return 1.0 / tl.sqrt(total / K + eps)


@triton.jit
def _rstd(x_ptr, m, m_ok, kk, stride_xm, eps, K: tl.constexpr, NORM: tl.constexpr, BLOCK_M: tl.constexpr,
          BLOCK_K: tl.constexpr):
    """1 / RMS of the input rows over the whole K (whatever slice of it a program sums); `eps` without the norm
    (unused)."""
    if NORM:
        sq = tl.zeros([BLOCK_M], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            xs = tl.load(x_ptr + m[:, None] * stride_xm + (k0 + kk)[None, :], mask=m_ok[:, None], other=0.0)
            xs = xs.to(tl.float32)
            sq += tl.sum(xs * xs, 1)
        rstd = 1.0 / tl.sqrt(sq / K + eps)
    else:
        rstd = eps
    return rstd


@triton.jit
def _epilogue(acc, acc2, res_ptr, out_ptr, sq_ptr, m, n, m_ok, n_ok, stride_om, stride_rm, dtype: tl.constexpr,
              GATED: tl.constexpr, RESIDUAL: tl.constexpr, SQUARES: tl.constexpr):
    out = acc
    if GATED:  # act_fn(gate) * up on bf16 tensors: each op rounded to the dtype
        gate = acc.to(dtype).to(tl.float32)
        act = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32)
        out = act * acc2.to(dtype).to(tl.float32)
    if RESIDUAL:  # x + proj(...): the product rounded, then the sum
        res = tl.load(res_ptr + m[:, None] * stride_rm + n[None, :], mask=m_ok[:, None] & n_ok[None, :], other=0.0)
        out = out.to(dtype).to(tl.float32) + res.to(tl.float32)
    stored = out.to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + m[:, None] * stride_om + n[None, :], stored, mask=m_ok[:, None] & n_ok[None, :])
    if SQUARES:  # this block's share of each row's sum of squares (of the stored values, as the norm reads them)
        v = tl.where(n_ok[None, :], stored.to(tl.float32), 0.0)
        tl.atomic_add(sq_ptr + m, (tl.sum(v * v, 1) * SQUARE_UNITS + 0.5).to(tl.int64), mask=m_ok, sem="relaxed")


@triton.jit
def _finish(acc, acc2, ws_ptr, count_ptr, res_ptr, out_ptr, sq_ptr, pid, part, m, n, m_ok, n_ok, N, stride_om,
            stride_rm, dtype: tl.constexpr, GATED: tl.constexpr, RESIDUAL: tl.constexpr, SQUARES: tl.constexpr,
            SPLIT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The epilogue over a program's fp32 sums, or over the K slices' sums once the last of them is in."""
    if SPLIT == 1:
        _epilogue(acc, acc2, res_ptr, out_ptr, sq_ptr, m, n, m_ok, n_ok, stride_om, stride_rm, dtype, GATED, RESIDUAL,
                  SQUARES)
    else:
        # Split K: each program leaves its fp32 partial sums in the workspace; the last of a column
        # block's SPLIT programs to arrive (a counter per block) adds them in a fixed order and writes
        # the output, then zeroes the counter for the next launch. One launch, no reduction kernel.
        tile = m[:, None] * N + n[None, :]
        ok = m_ok[:, None] & n_ok[None, :]  # the real rows only: a 1-row product moves 1/16 of the tile
        ws = ws_ptr + part * 2 * BLOCK_M * N
        tl.store(ws + tile, acc, mask=ok)
        if GATED:
            tl.store(ws + BLOCK_M * N + tile, acc2, mask=ok)
        if last_to_arrive(count_ptr, pid, SPLIT):
            tl.debug_barrier()
            acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
            acc2 = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
            for s in tl.static_range(SPLIT):
                ws = ws_ptr + s * 2 * BLOCK_M * N
                acc += tl.load(ws + tile, mask=ok, other=0.0, cache_modifier=".cg")
                if GATED:
                    acc2 += tl.load(ws + BLOCK_M * N + tile, mask=ok, other=0.0, cache_modifier=".cg")
            _epilogue(acc, acc2, res_ptr, out_ptr, sq_ptr, m, n, m_ok, n_ok, stride_om, stride_rm, dtype, GATED,
                      RESIDUAL, SQUARES)
            tl.atomic_xchg(count_ptr + pid, 0)
