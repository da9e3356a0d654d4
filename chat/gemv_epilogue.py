"""The end of chat.gemv's products (and chat.gemv_rows'): the fused epilogues over a program's fp32 sums (SiLU*mul,
residual, the output's dtype) and the split-K sum of the K slices' partial sums in one launch."""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _epilogue(acc, acc2, res_ptr, out_ptr, m, n, m_ok, n_ok, stride_om, stride_rm, dtype: tl.constexpr,
              GATED: tl.constexpr, RESIDUAL: tl.constexpr):
    out = acc
    if GATED:  # act_fn(gate) * up on bf16 tensors: each op rounded to the dtype
        gate = acc.to(dtype).to(tl.float32)
        act = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32)
        out = act * acc2.to(dtype).to(tl.float32)
    if RESIDUAL:  # x + proj(...): the product rounded, then the sum
        res = tl.load(res_ptr + m[:, None] * stride_rm + n[None, :], mask=m_ok[:, None] & n_ok[None, :], other=0.0)
        out = out.to(dtype).to(tl.float32) + res.to(tl.float32)
    tl.store(out_ptr + m[:, None] * stride_om + n[None, :], out.to(out_ptr.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _finish(acc, acc2, ws_ptr, count_ptr, res_ptr, out_ptr, pid, part, m, n, m_ok, n_ok, N, stride_om, stride_rm,
            dtype: tl.constexpr, GATED: tl.constexpr, RESIDUAL: tl.constexpr, SPLIT: tl.constexpr,
            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The epilogue over a program's fp32 sums, or over the K slices' sums once the last of them is in."""
    if SPLIT == 1:
        _epilogue(acc, acc2, res_ptr, out_ptr, m, n, m_ok, n_ok, stride_om, stride_rm, dtype, GATED, RESIDUAL)
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
        tl.debug_barrier()  # every thread's partial stored before the counter says so
        arrived = tl.atomic_add(count_ptr + pid, 1, sem="acq_rel")
        if arrived == SPLIT - 1:
            tl.debug_barrier()
            acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
            acc2 = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
            for s in tl.static_range(SPLIT):
                ws = ws_ptr + s * 2 * BLOCK_M * N
                acc += tl.load(ws + tile, mask=ok, other=0.0, cache_modifier=".cg")
                if GATED:
                    acc2 += tl.load(ws + BLOCK_M * N + tile, mask=ok, other=0.0, cache_modifier=".cg")
            _epilogue(acc, acc2, res_ptr, out_ptr, m, n, m_ok, n_ok, stride_om, stride_rm, dtype, GATED, RESIDUAL)
            tl.atomic_xchg(count_ptr + pid, 0)
