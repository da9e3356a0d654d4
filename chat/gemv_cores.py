"""One-row products against weight-only int8 / int4 weights on the CUDA cores (chat.gemv's candidates for 1 row).

chat.gemv multiplies quantised weights on the tensor cores: the packed tile is loaded, unpacked in registers and
converted to the dot's operand layout through shared memory (int4 measured at 0.2-0.3 of the copy bandwidth on an
H200, int8 0.4-0.7: bound by that round trip, not by the reads). One row needs no tensor core: here each thread
keeps its 16-byte loads of the packed rows in registers and multiplies them against x with fp32 FMAs, no shared
memory. The weights are read as int32 words (`QuantWeight.q` viewed as int32: the same bytes, no new layout):

- int4: a group's 64 bytes are 16 words; the nibble at bit 8b + 4h of word i is column 4i + b + 64h of the group;
- int8: word i holds columns 4i..4i+3 (byte b: column 4i + b), made unsigned (+128) by one XOR per word.

A field is made a float without a conversion instruction: (word & field mask) | the bits of 2^23 is 2^23 + field *
2^pos (the field below bit 20; words are shifted by 12 or 16 for the higher ones), and one subtraction of 2^23 + bias
* 2^pos leaves (field - bias) * 2^pos exactly: x is multiplied by 2^-pos for it (exact). So a weight costs one LOP3, one
FADD and one FFMA; the fp32 sums take the group scales (int4) or the row scale (int8), and chat.gemv's epilogue
(residual, SiLU*mul, split-K reduction) finishes. Exact in the same sense as chat.gemv: only the summation order
differs from the dequantised matrix's product.
"""
from __future__ import annotations

import torch

from myassistant.chat import gemv, gemv_pick, int_weights

triton = gemv.triton
if triton is not None:
    import triton.language as tl

    from myassistant.chat.gemv import _finish, _rstd, _x_tile

    @triton.jit
    def _field(words, x, POS: tl.constexpr, MASK: tl.constexpr, BIAS: tl.constexpr):
        """(field at bit POS of each word - BIAS) * x, for a field below bit 20: 2^23 + field * 2^POS from the float
        bits, minus 2^23 + BIAS * 2^POS, times x * 2^-POS (all exact)."""
        value = ((words & (MASK << POS)) | 0x4B000000).to(tl.float32, bitcast=True) - (8388608.0 + BIAS * (1 << POS))
        return value * (x * (1.0 / (1 << POS)))

    @triton.jit
    def _step(words, x_ptr, nw_ptr, col, word, m, m_ok, stride_xm, rstd, dtype: tl.constexpr, QUANT: tl.constexpr,
              NORM: tl.constexpr, UPCAST: tl.constexpr):
        """The fp32 products of the 16 words of one step (int4: a group of 128 columns; int8: 64 columns) with the
        input row's columns from `col`, summed per word: [BLOCK_N, 16]."""
        if QUANT == 4:  # nibble 8b + 4h of word i: column 4i + b + 64h
            part = tl.zeros(words.shape, tl.float32)
            high = words >> 12  # the nibbles at bits 20, 24 and 28 to 8, 12 and 16
            for b in tl.static_range(4):
                for h in tl.static_range(2):
                    cols = 4 * word + b + 64 * h
                    x = _x_tile(x_ptr + m[:, None] * stride_xm + (col + cols)[None, :], nw_ptr, col, 0, cols, m_ok,
                                rstd, dtype, NORM, UPCAST).to(tl.float32)
                    if 8 * b + 4 * h < 20:
                        part += _field(words, x, 8 * b + 4 * h, 15, 8)
                    else:
                        part += _field(high, x, 8 * b + 4 * h - 12, 15, 8)
        else:  # byte b of word i: column 4i + b; XOR 0x80 per byte: the unsigned value + 128
            part = tl.zeros(words.shape, tl.float32)
            unsigned = words ^ -2139062144  # 0x80808080
            high = unsigned >> 16
            for b in tl.static_range(4):
                cols = 4 * word + b
                x = _x_tile(x_ptr + m[:, None] * stride_xm + (col + cols)[None, :], nw_ptr, col, 0, cols, m_ok, rstd,
                            dtype, NORM, UPCAST).to(tl.float32)
                if b < 2:
                    part += _field(unsigned, x, 8 * b, 255, 128)
                else:
                    part += _field(high, x, 8 * b - 16, 255, 128)
        return part

    @triton.jit
    def _cores_kernel(x_ptr, w_ptr, out_ptr, res_ptr, nw_ptr, ws_ptr, count_ptr, s_ptr, N, stride_xm, stride_wn,
                      stride_om, stride_rm, stride_sn, eps, K: tl.constexpr, NORM: tl.constexpr, GATED: tl.constexpr,
                      RESIDUAL: tl.constexpr, QUANT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      SPLIT: tl.constexpr, UPCAST: tl.constexpr, GROUP: tl.constexpr):
        pid = tl.program_id(0)
        part = tl.program_id(1)  # which K / SPLIT slice of the product this program sums
        n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        m = tl.arange(0, 1)
        m_ok = m < 1
        n_ok = n < N
        word = tl.arange(0, 16)
        dtype = x_ptr.dtype.element_ty
        first = part * (K // SPLIT)
        rstd = _rstd(x_ptr, m, m_ok, tl.arange(0, BLOCK_K), stride_xm, eps, K, NORM, 1, BLOCK_K)
        STEP: tl.constexpr = 128 if QUANT == 4 else 64  # columns of 16 words
        acc = tl.zeros([BLOCK_N, 16], tl.float32)
        acc2 = tl.zeros([BLOCK_N, 16], tl.float32)
        w_rows = w_ptr + n[:, None] * stride_wn + word[None, :]  # int32 words
        for k0 in range(0, K // SPLIT, BLOCK_K):
            for g in tl.static_range(BLOCK_K // STEP):
                col = first + k0 + g * STEP
                words = tl.load(w_rows + col // (STEP // 16), mask=n_ok[:, None], other=0)
                sums = _step(words, x_ptr, nw_ptr, col, word, m, m_ok, stride_xm, rstd, dtype, QUANT, NORM, UPCAST)
                if GATED:
                    words2 = tl.load(w_rows + N * stride_wn + col // (STEP // 16), mask=n_ok[:, None], other=0)
                    sums2 = _step(words2, x_ptr, nw_ptr, col, word, m, m_ok, stride_xm, rstd, dtype, QUANT, NORM,
                                  UPCAST)
                if QUANT == 4:  # the group's scales
                    scales = s_ptr + n[:, None] * stride_sn + col // GROUP
                    acc += sums * tl.load(scales, mask=n_ok[:, None], other=0.0)
                    if GATED:
                        acc2 += sums2 * tl.load(scales + N * stride_sn, mask=n_ok[:, None], other=0.0)
                else:
                    acc += sums
                    if GATED:
                        acc2 += sums2
        out = tl.sum(acc, 1)[None, :]
        out2 = tl.sum(acc2, 1)[None, :]
        if QUANT == 8:  # the row scales
            out = out * tl.load(s_ptr + n, mask=n_ok, other=0.0)[None, :]
            if GATED:
                out2 = out2 * tl.load(s_ptr + n + N, mask=n_ok, other=0.0)[None, :]
        _finish(out, out2, ws_ptr, count_ptr, res_ptr, out_ptr, pid, part, m, n, m_ok, n_ok, N, stride_om, stride_rm,
                dtype, GATED, RESIDUAL, SPLIT, 1, BLOCK_N)


def candidates(n: int, k: int, quant: int) -> list[tuple[int, int, int, int, int, bool]]:
    """(BLOCK_N, BLOCK_K, SPLIT, warps, stages, True) for a one-row product against an [n, k] int8 / int4 weight: two
    steps of 16 words a loop trip, 4-8 rows a thread (a warp's threads cover 8 rows x 16 words: the input's columns
    pass through shared memory once per step and are shared by the rows), K split to about TARGET_PROGRAMS."""
    found = [config(n, k, quant, block_n, warps, 2) for block_n, warps in ((64, 1), (32, 1), (128, 4))]
    return [c for c in found if c is not None]


def config(n: int, k: int, quant: int, block_n: int, warps: int, steps: int) -> tuple | None:
    """The configuration of `block_n` rows and `steps` steps of 16 words a loop trip, K split until about
    TARGET_PROGRAMS programs (None where K is no multiple of the trip)."""
    block_k = steps * (int_weights.GROUP if quant == 4 else 64)
    if k % block_k:
        return None
    split = 1
    while triton.cdiv(n, block_n) * split < gemv_pick.TARGET_PROGRAMS and k % (2 * split * block_k) == 0 and split < 8:
        split *= 2
    return block_n, block_k, split, warps, 1, True


def launch(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, out: torch.Tensor,
           residual: torch.Tensor | None, norm_weight: torch.Tensor | None, eps: float, gated: bool,
           config: tuple, ws: torch.Tensor, count: torch.Tensor) -> None:
    """chat.gemv's product of one row `x` [1, K] with `QuantWeight(weight, scale)` on the CUDA cores."""
    k = x.shape[1]
    n = out.shape[1]
    block_n, block_k, split, warps = config[:4]
    quant = 4 if weight.dtype == torch.uint8 else 8
    words = weight.view(torch.int32)  # the same bytes: 8 nibbles / 4 int8 a word
    assert x.shape[0] == 1 and k % (split * block_k) == 0
    dummy = x
    _cores_kernel[(triton.cdiv(n, block_n), split)](
        x, words, out, dummy if residual is None else residual, dummy if norm_weight is None else norm_weight, ws,
        count, scale, n, x.stride(0), words.stride(0), out.stride(0), 0 if residual is None else residual.stride(0),
        scale.stride(0), eps, K=k, NORM=norm_weight is not None, GATED=gated, RESIDUAL=residual is not None,
        QUANT=quant, BLOCK_N=block_n, BLOCK_K=block_k, SPLIT=split, UPCAST=not x.is_cuda, GROUP=int_weights.GROUP,
        num_warps=warps)
