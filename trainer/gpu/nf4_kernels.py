"""The Triton kernels that read bitsandbytes' 4-bit weights: ``qlora_fold``'s fold (``W + s B A`` in bf16) and
``qlora_fp8``'s conversion (e4m3 W8 / W8ᵀ), on the tile ``codes_tile`` reads.

Imported only where Triton is (by those modules' ``_kernel()``), so Triton stays optional. The helpers are module
globals on purpose: inside a compiled layer torch.compile (Inductor) launches a copy of a kernel made of its source and
the Triton functions it finds in the kernel's module globals; one reached any other way (a closure) is missing there,
and every compiled layer falls back to eager (session 28; ``tests/test_qlora_fold.py`` builds the copies).
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def codes_tile(q_ptr, code_ptr, n_out, n_in, BLOCKSIZE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    """This program's BM x BN tile of a packed 4-bit weight as code-table values (before the blocks' absmax), with
    its rows (int64, [BM, 1]), which rows are inside, its columns, its quantisation blocks' indices ([BM, BN //
    BLOCKSIZE]) and which of those are inside. n_in % BLOCKSIZE == 0 and BN % BLOCKSIZE == 0
    (``qlora_fold.foldable``), so each row of a tile holds whole quantisation blocks."""
    NB: tl.constexpr = BN // BLOCKSIZE
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    rows = rm.to(tl.int64)[:, None]
    in_rows = (rm < n_out)[:, None]
    half = tl.program_id(1) * (BN // 2) + tl.arange(0, BN // 2)
    byte = tl.load(q_ptr + rows * (n_in // 2) + half[None, :], mask=in_rows & (half < n_in // 2)[None, :],
                   other=0).to(tl.int32)
    # bitsandbytes packs element 2j in the high nibble, 2j + 1 in the low one
    w = tl.reshape(tl.join(tl.load(code_ptr + (byte >> 4)), tl.load(code_ptr + (byte & 15))), (BM, BN))
    blk = tl.program_id(1) * NB + tl.arange(0, NB)
    return w, rows, in_rows, rn, rows * (n_in // BLOCKSIZE) + blk[None, :], in_rows & (blk < n_in // BLOCKSIZE)[None, :]


@triton.jit
def bf16_rounded_bits(w):
    """float32 ``w``'s bits with the bf16 value rounded to nearest even in their high half (by hand: Triton's
    interpreter's float32 -> bf16 cast truncates)."""
    bits = w.to(tl.uint32, bitcast=True)
    return bits + 0x7FFF + ((bits >> 16) & 1)


@triton.autotune(configs=[triton.Config({"BM": bm, "BN": bn}, num_warps=w)
                          for bm, bn, w in ((64, 128, 4), (128, 64, 4), (64, 64, 4), (128, 128, 8),
                                            (128, 256, 8), (256, 128, 8))],
                 key=["n_out", "n_in", "R"])
@triton.jit
def fold_kernel(q_ptr, absmax_ptr, absmax2_ptr, code2_ptr, offset_ptr, code_ptr, a_ptr, b_ptr, out_ptr,
                scale, n_out, n_in, rank,
                BLOCKSIZE: tl.constexpr, BLOCKSIZE2: tl.constexpr, NESTED: tl.constexpr, R: tl.constexpr,
                BM: tl.constexpr, BN: tl.constexpr, ASM: tl.constexpr):
    w, rows, in_rows, rn, at, in_blocks = codes_tile(q_ptr, code_ptr, n_out, n_in, BLOCKSIZE, BM, BN)
    NB: tl.constexpr = BN // BLOCKSIZE
    if NESTED:  # double quantisation: the blocks' absmax are 8-bit codes, with their own blockwise scale;
        # rounded twice, as bitsandbytes does (its product, then + offset in another op): a fused multiply-add
        # moves ~8 % of the absmax by one unit and, now and then, a bf16 weight (a gpu test failed so once).
        code = tl.load(code2_ptr + tl.load(absmax_ptr + at, mask=in_blocks, other=0).to(tl.int32))
        scale2 = tl.load(absmax2_ptr + at // BLOCKSIZE2, mask=in_blocks, other=0.0)
        if ASM:
            absmax = tl.inline_asm_elementwise("mul.rn.f32 $0, $1, $2;", "=r,r,r", [code, scale2], dtype=tl.float32,
                                               is_pure=True, pack=1) + tl.load(offset_ptr)
        else:  # Triton's interpreter (no PTX), which rounds every operation on its own
            absmax = code * scale2 + tl.load(offset_ptr)
    else:
        absmax = tl.load(absmax_ptr + at, mask=in_blocks, other=0.0)
    w = tl.reshape(tl.reshape(w, (BM, NB, BLOCKSIZE)) * absmax[:, :, None], (BM, BN))
    rk = tl.arange(0, R)
    b = tl.load(b_ptr + rows * rank + rk[None, :], mask=in_rows & (rk < rank)[None, :], other=0.0)
    a = tl.load(a_ptr + rk[:, None] * n_in + rn[None, :], mask=(rk < rank)[:, None] & (rn < n_in)[None, :],
                other=0.0)
    w += scale * tl.dot(b.to(tl.bfloat16), a.to(tl.bfloat16))  # autocast's precision for the adapter
    if ASM:
        tl.store(out_ptr + rows * n_in + rn[None, :], w.to(out_ptr.dtype.element_ty),
                 mask=in_rows & (rn < n_in)[None, :])
    else:  # the interpreter's float32 -> bf16 truncates: rounded to nearest even here (bf16 out only)
        tl.store(out_ptr.to(tl.pointer_type(tl.uint16)) + rows * n_in + rn[None, :],
                 (bf16_rounded_bits(w) >> 16).to(tl.uint16), mask=in_rows & (rn < n_in)[None, :])


@triton.autotune(configs=[triton.Config({"BM": bm, "BN": bn}, num_warps=w)
                          for bm, bn, w in ((32, 128, 4), (64, 128, 8), (32, 256, 4), (64, 128, 4), (32, 128, 2))],
                 key=["n_out", "n_in", "ROWS", "COLS"])
@triton.jit
def e4m3_kernel(q_ptr, absmax_ptr, code_ptr, inverse_ptr, rows_ptr, cols_ptr, n_out, n_in,
                BLOCKSIZE: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr, BM: tl.constexpr,
                BN: tl.constexpr):
    # the fold's tile without the adapter; the blocks' absmax come as float32 (double quantisation undone before)
    w, rows, in_rows, rn, at, in_blocks = codes_tile(q_ptr, code_ptr, n_out, n_in, BLOCKSIZE, BM, BN)
    NB: tl.constexpr = BN // BLOCKSIZE
    absmax = tl.load(absmax_ptr + at, mask=in_blocks, other=0.0)
    w = tl.reshape(tl.reshape(w, (BM, NB, BLOCKSIZE)) * absmax[:, :, None], (BM, BN))
    # bitsandbytes' bf16 weight, then e4m3 from it, as rowwise_e4m3 rounds that weight
    w = (bf16_rounded_bits(w) & 0xFFFF0000).to(tl.float32, bitcast=True)
    inverse = tl.load(inverse_ptr + rows, mask=in_rows, other=1.0)  # 1 / the row's scale, [BM, 1]
    w = tl.clamp(w * inverse, -448.0, 448.0)
    inside = in_rows & (rn < n_in)[None, :]
    if ROWS:
        tl.store(rows_ptr + rows * n_in + rn[None, :], w.to(rows_ptr.dtype.element_ty), mask=inside)
    if COLS:  # W8ᵀ for backward's product
        tl.store(cols_ptr + rn.to(tl.int64)[None, :] * n_out + rows, w.to(cols_ptr.dtype.element_ty), mask=inside)
