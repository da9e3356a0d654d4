"""One-row products against weight-only int4 matrices on the CUDA cores (chat.gemv's candidates for one row): each
thread's loads of the packed rows stay in the registers they land in, in the layout the input's columns are loaded
in: no shared memory between the loads and the FMAs.

chat.gemv's tensor-core kernel hands the packed int4 tile to the dot through shared memory, read back a few bytes at
a time (0.2-0.3 of the copy bandwidth on an H200, benchmarks/README.md). One row needs no tensor core. Here a
program is one warp; a loop trip covers BLOCK_B bytes of each of its BLOCK_N rows, CHUNK contiguous bytes a thread
(tiles [chunks, rows, CHUNK], the compiler's layout for them), and the input's columns for a chunk are a [chunks,
CHUNK] tile that the compiler loads in the same layout (CHUNK bf16: one 16-byte load): byte j of a 64-byte group
holds column j in its low nibble and 64 + j in its high one, so a thread's bytes meet two runs of contiguous
columns. Inline PTX makes each nibble the float 0.5 + nibble / 256 (the nibble as bits 16-19 of 0.5's bits, one
byte permute: exact), so a chunk's sum is FMAs alone and nibble - 8 = 256 w - 136 comes out of the chunk's sum
once: 256 sum(w x) - 136 sum(x), times the group's scale. The next trip's weights are loaded before this trip's
arithmetic. chat.gemv's epilogue (residual, SiLU*mul, split-K sum) finishes, so the result differs from the
tensor-core kernel's in summation order (and fp32 rounding of that identity) only.

Measured on an H200 (7B shape, one chat, benchmarks/README.md): qkv 18.6 -> 12.0 us, o_proj 9.4 -> 8.7, gate/up
49.8 -> 38.5 (down stays on the tensor cores: 19.8 against 21.1); the int4 decode 291 -> 348 tokens/s. For int8
the same kernel measured no decode gain (307 against 305 tokens/s), so int8 stays on the tensor cores.
"""
from __future__ import annotations

import torch

from myassistant.chat.int_weights import GROUP

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs
    triton = None

CHUNK = 8  # bytes of a row a thread loads at once and sums in its registers
BLOCK_B = 32 * CHUNK  # bytes of a row a program's warp covers a loop trip
TARGET_PROGRAMS = 2048  # programs of one warp a launch should have

if triton is not None:
    from myassistant.chat.gemv_epilogue import _finish

    @triton.jit
    def _int4_halves(packed, ASM: tl.constexpr):
        """The low and high nibbles of each byte as 0.5 + nibble / 256, exact (`_chunk_sums` takes the offsets out)."""
        if ASM:  # 4 bytes a 32-bit word: 3 ops for the nibble words, then each nibble made bits 16-19 of 0.5's bits
            # (0x3f000000) by one byte permute
            return tl.inline_asm_elementwise(
                """{
                .reg .b32 l, h;
                and.b32 l, $8, 0x0f0f0f0f;
                shr.u32 h, $8, 4;
                and.b32 h, h, 0x0f0f0f0f;
                prmt.b32 $0, l, 0x3f000000, 0x7054;
                prmt.b32 $1, l, 0x3f000000, 0x7154;
                prmt.b32 $2, l, 0x3f000000, 0x7254;
                prmt.b32 $3, l, 0x3f000000, 0x7354;
                prmt.b32 $4, h, 0x3f000000, 0x7054;
                prmt.b32 $5, h, 0x3f000000, 0x7154;
                prmt.b32 $6, h, 0x3f000000, 0x7254;
                prmt.b32 $7, h, 0x3f000000, 0x7354;
                }""", "=r,=r,=r,=r,=r,=r,=r,=r,r", [packed], dtype=(tl.float32, tl.float32), is_pure=True, pack=4)
        return (packed & 15).to(tl.float32) * (1.0 / 256) + 0.5, ((packed >> 4) & 15).to(tl.float32) * (1.0 / 256) + 0.5

    @triton.jit
    def _x_cols(x_ptr, nw_ptr, cols, rstd, dtype: tl.constexpr, NORM: tl.constexpr):
        """The input row's columns `cols` as float32, RMS-normalised as LlamaRMSNorm does (chat.gemv's _x_tile)."""
        x = tl.load(x_ptr + cols)
        if NORM:
            x = ((x.to(tl.float32) * rstd).to(dtype).to(tl.float32) * tl.load(nw_ptr + cols).to(tl.float32)).to(dtype)
        return x.to(tl.float32)

    @triton.jit
    def _chunk_sums(q, x_lo, x_hi, ASM: tl.constexpr):
        """Per chunk of CHUNK bytes and row (q [chunks, BLOCK_N, CHUNK]): the sum of the chunk's weights times their
        input columns (x_lo, x_hi [chunks, CHUNK]: of the low and high nibbles), [chunks, BLOCK_N]."""
        low, high = _int4_halves(q, ASM)  # w = 0.5 + nibble / 256: nibble - 8 = 256 w - 136
        sums = tl.sum(low * x_lo[:, None, :], 2) + tl.sum(high * x_hi[:, None, :], 2)  # FMA chains
        return 256.0 * sums - 136.0 * tl.sum(x_lo + x_hi, 1)[:, None]

    @triton.jit
    def _rows_kernel(x_ptr, w_ptr, out_ptr, res_ptr, nw_ptr, ws_ptr, count_ptr, s_ptr, N, stride_wn, stride_om,
                     stride_rm, stride_sn, eps, K: tl.constexpr, NORM: tl.constexpr, GATED: tl.constexpr,
                     RESIDUAL: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr,
                     SPLIT: tl.constexpr, GROUP: tl.constexpr, CHUNK: tl.constexpr, ASM: tl.constexpr):
        pid = tl.program_id(0)
        part = tl.program_id(1)  # which K / SPLIT slice of the product this program sums
        n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = n < N
        dtype = x_ptr.dtype.element_ty
        ROW: tl.constexpr = K // SPLIT // 2  # bytes of a row this program reads
        first = part * ROW  # its first byte
        rstd = 0.0
        if NORM:  # 1 / RMS of the input row over the whole K
            sq = tl.zeros([1024], tl.float32)
            for k0 in tl.static_range(0, K, 1024):
                cols = k0 + tl.arange(0, 1024)
                xs = tl.load(x_ptr + cols, mask=cols < K, other=0.0).to(tl.float32)
                sq += xs * xs
            rstd = 1.0 / tl.sqrt(tl.sum(sq, 0) / K + eps)
        # tiles [chunks, rows, CHUNK bytes]: a thread holds a chunk of each row (the compiler's layout for CHUNK
        # contiguous bytes, threads along the chunks), and the input's columns [chunks, CHUNK] (CHUNK bf16: one 16-byte
        # load) are loaded in the same layout, with one warp a program: no shared memory between loads and FMAs
        c = tl.arange(0, BLOCK_B // CHUNK)[:, None]
        j = tl.arange(0, CHUNK)[None, :]
        rows = w_ptr + n[None, :, None] * stride_wn + first + (c * CHUNK + j)[:, None, :]
        ok = n_ok[None, :, None]
        q = tl.load(rows, mask=ok, other=0)
        if GATED:
            q2 = tl.load(rows + N * stride_wn, mask=ok, other=0)
        acc = tl.zeros([BLOCK_B // CHUNK, BLOCK_N], tl.float32)
        acc2 = tl.zeros([BLOCK_B // CHUNK, BLOCK_N], tl.float32)
        for k0 in range(0, ROW, BLOCK_B):
            # the next trip's weights first: their loads are in flight during this trip's arithmetic
            more = k0 + BLOCK_B < ROW
            q_next = tl.load(rows + k0 + BLOCK_B, mask=ok & more, other=0)
            if GATED:
                q2_next = tl.load(rows + N * stride_wn + k0 + BLOCK_B, mask=ok & more, other=0)
            # byte j of a group: columns j (low nibble) and GROUP / 2 + j (high)
            per: tl.constexpr = GROUP // 2 // CHUNK  # chunks a group
            lo = (first + k0) * 2 + c // per * GROUP + c % per * CHUNK + j  # (first + k0: whole groups)
            x_lo = _x_cols(x_ptr, nw_ptr, lo, rstd, dtype, NORM)
            x_hi = _x_cols(x_ptr, nw_ptr, lo + GROUP // 2, rstd, dtype, NORM)
            group = (first + k0) // (GROUP // 2) + tl.arange(0, BLOCK_B // CHUNK) // per
            scales = s_ptr + n[None, :] * stride_sn + group[:, None]
            acc += _chunk_sums(q, x_lo, x_hi, ASM) * tl.load(scales, mask=n_ok[None, :], other=0.0)
            if GATED:
                acc2 += _chunk_sums(q2, x_lo, x_hi, ASM) * tl.load(scales + N * stride_sn, mask=n_ok[None, :],
                                                                   other=0.0)
            q = q_next
            if GATED:
                q2 = q2_next
        out = tl.sum(acc, 0)
        out2 = tl.sum(acc2, 0)
        m = tl.arange(0, 1)
        _finish(out[None, :], out2[None, :], ws_ptr, count_ptr, res_ptr, out_ptr, pid, part, m, n, m < 1, n_ok, N,
                stride_om, stride_rm, dtype, GATED, RESIDUAL, SPLIT, 1, BLOCK_N)


def candidates(n: int, k: int) -> list[tuple]:
    """(BLOCK_N, BLOCK_B, SPLIT, 1 warp, "rows") for a one-row product against an [n, k] int4 weight: K split until
    about TARGET_PROGRAMS programs of one warp (a multiprocessor holds up to 32). chat.gemv's `_launch` knows them by
    the "rows" where its own configurations have pipeline stages."""
    found = []
    for block_n in (8, 16, 4):
        split = 1
        while -(-n // block_n) * split < TARGET_PROGRAMS and k // 2 % (2 * split * BLOCK_B) == 0 and split < 8:
            split *= 2
        if k // 2 % (split * BLOCK_B) == 0:
            found.append((block_n, BLOCK_B, split, 1, "rows"))
    return found


def launch(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, out: torch.Tensor,
           residual: torch.Tensor | None, norm_weight: torch.Tensor | None, eps: float, gated: bool,
           config: tuple, ws: torch.Tensor, count: torch.Tensor) -> None:
    """The product of one row `x` [1, K] with the int4 `weight` / `scale` (chat.gemv's arguments and buffers)."""
    block_n, block_b, split, warps, _ = config
    assert x.shape[0] == 1 and x.stride(-1) == 1 and weight.stride(-1) == 1 and weight.dtype == torch.uint8
    n = out.shape[1]
    dummy = x
    _rows_kernel[(triton.cdiv(n, block_n), split)](
        x, weight, out, dummy if residual is None else residual, dummy if norm_weight is None else norm_weight, ws,
        count, scale, n, weight.stride(0), out.stride(0), 0 if residual is None else residual.stride(0),
        scale.stride(0), eps, K=x.shape[1], NORM=norm_weight is not None, GATED=gated, RESIDUAL=residual is not None,
        BLOCK_N=block_n, BLOCK_B=block_b, SPLIT=split, GROUP=GROUP, CHUNK=CHUNK, ASM=x.is_cuda, num_warps=warps)
