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
FORMS = ("rows", "rows16")  # float32 products, fp16 pair products

if triton is not None:
    from myassistant.chat.gemv_epilogue import _finish

    @triton.jit
    def _nibbles(word, ASM: tl.constexpr):
        """The 8 nibbles of each 32-bit word (4 packed bytes, int32) as 0.5 + nibble / 256, exact: the low nibbles of
        bytes 0-3, then the high ones (`_chunk_sums` takes the offsets out)."""
        if ASM:  # 3 ops for the two nibble words, then each nibble made bits 16-19 of 0.5's bits (0x3f000000) by
            # one byte permute: the words are loaded as int32, so nothing unpacks and repacks their bytes
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
                }""", "=r,=r,=r,=r,=r,=r,=r,=r,r", [word], dtype=(tl.float32,) * 8, is_pure=True, pack=1)
        return (((word >> 0) & 15).to(tl.float32) * (1.0 / 256) + 0.5,
                ((word >> 8) & 15).to(tl.float32) * (1.0 / 256) + 0.5,
                ((word >> 16) & 15).to(tl.float32) * (1.0 / 256) + 0.5,
                ((word >> 24) & 15).to(tl.float32) * (1.0 / 256) + 0.5,
                ((word >> 4) & 15).to(tl.float32) * (1.0 / 256) + 0.5,
                ((word >> 12) & 15).to(tl.float32) * (1.0 / 256) + 0.5,
                ((word >> 20) & 15).to(tl.float32) * (1.0 / 256) + 0.5,
                ((word >> 28) & 15).to(tl.float32) * (1.0 / 256) + 0.5)

    @triton.jit
    def _bytes_in_order(b0, b1, b2, b3, C: tl.constexpr, R: tl.constexpr, W: tl.constexpr):
        """[chunks, rows, words] tensors of bytes 0-3 of each word as [chunks, rows, 4 * words] in byte order (word
        w's byte b at 4 w + b): joins along new last dimensions, which stay in a thread's registers."""
        return tl.reshape(tl.join(tl.join(b0, b2), tl.join(b1, b3)), [C, R, 4 * W])

    @triton.jit
    def _x_cols(x_ptr, nw_ptr, cols, rstd, dtype: tl.constexpr, NORM: tl.constexpr):
        """The input row's columns `cols` as float32, RMS-normalised as LlamaRMSNorm does (chat.gemv's _x_tile)."""
        x = tl.load(x_ptr + cols)
        if NORM:
            x = ((x.to(tl.float32) * rstd).to(dtype).to(tl.float32) * tl.load(nw_ptr + cols).to(tl.float32)).to(dtype)
        return x.to(tl.float32)

    @triton.jit
    def _chunk_sums(q, x_lo, x_hi, ASM: tl.constexpr):
        """Per chunk of CHUNK bytes and row (q [chunks, BLOCK_N, CHUNK / 4] 32-bit words): the sum of the chunk's weights times their
        input columns (x_lo, x_hi [chunks, CHUNK]: of the low and high nibbles), [chunks, BLOCK_N]."""
        C: tl.constexpr = q.shape[0]
        R: tl.constexpr = q.shape[1]
        W: tl.constexpr = q.shape[2]
        l0, l1, l2, l3, h0, h1, h2, h3 = _nibbles(q, ASM)  # w = 0.5 + nibble / 256: nibble - 8 = 256 w - 136
        low = _bytes_in_order(l0, l1, l2, l3, C, R, W)
        high = _bytes_in_order(h0, h1, h2, h3, C, R, W)
        sums = tl.sum(low * x_lo[:, None, :], 2) + tl.sum(high * x_hi[:, None, :], 2)  # FMA chains
        return 256.0 * sums - 136.0 * tl.sum(x_lo + x_hi, 1)[:, None]

    @triton.jit
    def _pairs(x, ASM: tl.constexpr):
        """A chunk's 8 columns x [chunks, 8] (word i's byte b at 4 i + b) as the fp16 pairs the words' nibbles pair
        up in (bytes 0 and 2, bytes 1 and 3, the first byte in the low half): [chunks] int32 each, word 0's then
        word 1's."""
        C: tl.constexpr = x.shape[0]
        even, odd = tl.split(tl.reshape(x, [C, 2, 2, 2]))  # [chunks, word, byte // 2]: bytes 0, 2 and 1, 3
        b0, b2 = tl.split(even)
        b1, b3 = tl.split(odd)
        p02 = tl.inline_asm_elementwise("cvt.rn.f16x2.f32 $0, $2, $1;", "=r,r,r", [b0, b2], dtype=tl.int32,
                                        is_pure=True, pack=1)
        p13 = tl.inline_asm_elementwise("cvt.rn.f16x2.f32 $0, $2, $1;", "=r,r,r", [b1, b3], dtype=tl.int32,
                                        is_pure=True, pack=1)
        p02_0, p02_1 = tl.split(p02)
        p13_0, p13_1 = tl.split(p13)
        return p02_0, p13_0, p02_1, p13_1

    @triton.jit
    def _half_sums(q, x_lo, x_hi, ASM: tl.constexpr):
        """`_chunk_sums` in fp16 pairs (x_lo, x_hi scaled so no sum can overflow: see the kernel): each pair of
        nibbles made two fp16 (nibble - 8, exact) by one LOP3 and one HSUB2 / HFMA2, multiplied and summed by HFMA2s
        (two weights an instruction), the chunk's fp16 pair sum then made float32: about half the integer
        instructions of the fp32 form, which the integer pipe (half the FMA pipe's rate) bound."""
        if not ASM:  # the interpreter: the same products in float32
            return _chunk_sums(q, x_lo, x_hi, ASM)
        lo02_0, lo13_0, lo02_1, lo13_1 = _pairs(x_lo, ASM)
        hi02_0, hi13_0, hi02_1, hi13_1 = _pairs(x_hi, ASM)
        w0, w1 = tl.split(q)
        return tl.inline_asm_elementwise(
            """{
            .reg .b32 s, v0, v1, v2, v3, acc, k1032, k16, km72;
            .reg .b16 lo, hi;
            .reg .f32 f;
            mov.b32 k1032, 0x64086408;
            mov.b32 k16, 0x2c002c00;
            mov.b32 km72, 0xd480d480;
            lop3.b32 v0, $1, 0x000f000f, 0x64006400, 0xea;
            lop3.b32 v1, $1, 0x00f000f0, 0x64006400, 0xea;
            shr.u32 s, $1, 8;
            lop3.b32 v2, s, 0x000f000f, 0x64006400, 0xea;
            lop3.b32 v3, s, 0x00f000f0, 0x64006400, 0xea;
            sub.rn.f16x2 v0, v0, k1032;
            fma.rn.f16x2 v1, v1, k16, km72;
            sub.rn.f16x2 v2, v2, k1032;
            fma.rn.f16x2 v3, v3, k16, km72;
            mul.rn.f16x2 acc, v0, $3;
            fma.rn.f16x2 acc, v2, $4, acc;
            fma.rn.f16x2 acc, v1, $5, acc;
            fma.rn.f16x2 acc, v3, $6, acc;
            lop3.b32 v0, $2, 0x000f000f, 0x64006400, 0xea;
            lop3.b32 v1, $2, 0x00f000f0, 0x64006400, 0xea;
            shr.u32 s, $2, 8;
            lop3.b32 v2, s, 0x000f000f, 0x64006400, 0xea;
            lop3.b32 v3, s, 0x00f000f0, 0x64006400, 0xea;
            sub.rn.f16x2 v0, v0, k1032;
            fma.rn.f16x2 v1, v1, k16, km72;
            sub.rn.f16x2 v2, v2, k1032;
            fma.rn.f16x2 v3, v3, k16, km72;
            fma.rn.f16x2 acc, v0, $7, acc;
            fma.rn.f16x2 acc, v2, $8, acc;
            fma.rn.f16x2 acc, v1, $9, acc;
            fma.rn.f16x2 acc, v3, $10, acc;
            mov.b32 {lo, hi}, acc;
            cvt.f32.f16 f, lo;
            cvt.f32.f16 $0, hi;
            add.f32 $0, $0, f;
            }""", "=r,r,r,r,r,r,r,r,r,r,r",
            [w0, w1, lo02_0[:, None], lo13_0[:, None], hi02_0[:, None], hi13_0[:, None], lo02_1[:, None],
             lo13_1[:, None], hi02_1[:, None], hi13_1[:, None]], dtype=tl.float32, is_pure=True, pack=1)

    @triton.jit
    def _load(ptrs, ok, EVEN: tl.constexpr):
        """Unmasked where every row is real: no predicates, no zeroed registers, a load an instruction."""
        if EVEN:
            return tl.load(ptrs)
        return tl.load(ptrs, mask=ok, other=0)

    @triton.jit
    def _trip(q, q2, x_ptr, nw_ptr, s_ptr, rstd, byte0, n, n_ok, N: tl.constexpr, K: tl.constexpr,
              NORM: tl.constexpr, GATED: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr,
              GROUP: tl.constexpr, CHUNK: tl.constexpr, ASM: tl.constexpr, HALF: tl.constexpr, EVEN: tl.constexpr):
        """The sums of one loop trip: the words q (q2: the up rows) of bytes byte0.. byte0 + BLOCK_B of each row,
        times the group scales, [chunks, BLOCK_N] each."""
        dtype = x_ptr.dtype.element_ty
        per: tl.constexpr = GROUP // 2 // CHUNK  # chunks a group
        c = tl.arange(0, BLOCK_B // CHUNK)[:, None]
        j = tl.arange(0, CHUNK)[None, :]
        # byte j of a group: columns j (low nibble) and GROUP / 2 + j (high); byte0 starts a group
        lo = byte0 * 2 + c // per * GROUP + c % per * CHUNK + j
        x_lo = _x_cols(x_ptr, nw_ptr, lo, rstd, dtype, NORM)
        x_hi = _x_cols(x_ptr, nw_ptr, lo + GROUP // 2, rstd, dtype, NORM)
        group = byte0 // (GROUP // 2) + tl.arange(0, BLOCK_B // CHUNK) // per
        scales = s_ptr + n[None, :] * (K // GROUP) + group[:, None]
        s1 = _load(scales, n_ok[None, :], EVEN)
        s2 = s1
        if GATED:
            s2 = _load(scales + N * (K // GROUP), n_ok[None, :], EVEN)
        if HALF:
            # fp16 products: each chunk's columns scaled by a power of two so the largest is in [128, 256): a chunk's
            # 16 products of |nibble - 8| <= 8 then sum to at most 2^15 (fp16 ends at 65504), and the group scales
            # take the power of two out again (exact)
            big = tl.maximum(tl.max(tl.abs(x_lo), 1), tl.max(tl.abs(x_hi), 1))
            e = tl.maximum(big.to(tl.int32, bitcast=True) >> 23, 8)  # its exponent's bits (at least 8)
            up = ((261 - e) << 23).to(tl.float32, bitcast=True)[:, None]  # 2^(134 - e)
            down = ((e - 7) << 23).to(tl.float32, bitcast=True)[:, None]  # 1 / up
            sums = _half_sums(q, x_lo * up, x_hi * up, ASM) * (s1 * down)
            sums2 = sums
            if GATED:
                sums2 = _half_sums(q2, x_lo * up, x_hi * up, ASM) * (s2 * down)
        else:
            sums = _chunk_sums(q, x_lo, x_hi, ASM) * s1
            sums2 = sums
            if GATED:
                sums2 = _chunk_sums(q2, x_lo, x_hi, ASM) * s2
        return sums, sums2

    @triton.jit
    def _rows_kernel(x_ptr, w_ptr, out_ptr, res_ptr, nw_ptr, ws_ptr, count_ptr, s_ptr, stride_om, stride_rm, eps,
                     N: tl.constexpr, K: tl.constexpr, NORM: tl.constexpr, GATED: tl.constexpr,
                     RESIDUAL: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr, SPLIT: tl.constexpr,
                     GROUP: tl.constexpr, CHUNK: tl.constexpr, ASM: tl.constexpr, HALF: tl.constexpr):
        pid = tl.program_id(0)
        part = tl.program_id(1)  # which K / SPLIT slice of the product this program sums
        n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = n < N
        EVEN: tl.constexpr = N % BLOCK_N == 0
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
        # tiles [chunks, rows, CHUNK bytes as 32-bit words]: a thread holds a chunk of each row (the compiler's layout
        # for CHUNK contiguous bytes, threads along the chunks), and the input's columns [chunks, CHUNK] (CHUNK bf16:
        # one 16-byte load) are loaded in the same layout, with one warp a program: no shared memory between loads and
        # FMAs. The rows' strides are constants (contiguous K / 2 bytes), so a trip's loads share one address register.
        c = tl.arange(0, BLOCK_B // CHUNK)[:, None]
        word = tl.arange(0, CHUNK // 4)[None, :]
        rows = w_ptr + n[None, :, None] * (K // 8) + first // 4 + (c * (CHUNK // 4) + word)[:, None, :]
        ok = n_ok[None, :, None]
        q = _load(rows, ok, EVEN)
        q2 = q
        if GATED:
            q2 = _load(rows + N * (K // 8), ok, EVEN)
        acc = tl.zeros([BLOCK_B // CHUNK, BLOCK_N], tl.float32)
        acc2 = tl.zeros([BLOCK_B // CHUNK, BLOCK_N], tl.float32)
        for k0 in range(0, ROW - BLOCK_B, BLOCK_B):
            # the next trip's weights first: their loads are in flight during this trip's arithmetic
            q_next = _load(rows + (k0 + BLOCK_B) // 4, ok, EVEN)
            q2_next = q_next
            if GATED:
                q2_next = _load(rows + N * (K // 8) + (k0 + BLOCK_B) // 4, ok, EVEN)
            sums, sums2 = _trip(q, q2, x_ptr, nw_ptr, s_ptr, rstd, first + k0, n, n_ok, N, K, NORM, GATED, BLOCK_N,
                                BLOCK_B, GROUP, CHUNK, ASM, HALF, EVEN)
            acc += sums
            acc2 += sums2
            q = q_next
            q2 = q2_next
        sums, sums2 = _trip(q, q2, x_ptr, nw_ptr, s_ptr, rstd, first + ROW - BLOCK_B, n, n_ok, N, K, NORM, GATED,
                            BLOCK_N, BLOCK_B, GROUP, CHUNK, ASM, HALF, EVEN)  # the last trip: nothing to load next
        acc += sums
        acc2 += sums2
        out = tl.sum(acc, 0)
        out2 = tl.sum(acc2, 0)
        m = tl.arange(0, 1)
        _finish(out[None, :], out2[None, :], ws_ptr, count_ptr, res_ptr, out_ptr, pid, part, m, n, m < 1, n_ok, N,
                stride_om, stride_rm, dtype, GATED, RESIDUAL, SPLIT, 1, BLOCK_N)


def candidates(n: int, k: int) -> list[tuple]:
    """(BLOCK_N, BLOCK_B, SPLIT, 1 warp, form) for a one-row product against an [n, k] int4 weight: K split until
    about TARGET_PROGRAMS programs of one warp (a multiprocessor holds up to 32; half as many split K were slower
    for all four 7B products on an H200); the form "rows" multiplies in float32, "rows16" in fp16 pairs. chat.gemv's `_launch` knows them by the form where its own
    configurations have pipeline stages."""
    found = []
    for block_n in (8, 16, 4):
        split = 1
        while -(-n // block_n) * split < TARGET_PROGRAMS and k // 2 % (2 * split * BLOCK_B) == 0 and split < 8:
            split *= 2
        if k // 2 % (split * BLOCK_B) == 0:
            found += [(block_n, BLOCK_B, split, 1, form) for form in FORMS]
    return found


def launch(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, out: torch.Tensor,
           residual: torch.Tensor | None, norm_weight: torch.Tensor | None, eps: float, gated: bool,
           config: tuple, ws: torch.Tensor, count: torch.Tensor) -> None:
    """The product of one row `x` [1, K] with the int4 `weight` / `scale` (chat.gemv's arguments and buffers)."""
    block_n, block_b, split, warps, form = config
    assert x.shape[0] == 1 and x.stride(-1) == 1 and weight.stride(-1) == 1 and weight.dtype == torch.uint8
    n = out.shape[1]
    dummy = x
    # 4 packed bytes a word; rows of K / 2 bytes (whole 64-byte groups) and their K / GROUP scales, contiguous
    assert weight.is_contiguous() and scale.is_contiguous()
    _rows_kernel[(triton.cdiv(n, block_n), split)](
        x, weight.view(torch.int32), out, dummy if residual is None else residual,
        dummy if norm_weight is None else norm_weight, ws, count, scale, out.stride(0),
        0 if residual is None else residual.stride(0), eps, N=n, K=x.shape[1], NORM=norm_weight is not None,
        GATED=gated, RESIDUAL=residual is not None, BLOCK_N=block_n, BLOCK_B=block_b, SPLIT=split, GROUP=GROUP,
        CHUNK=CHUNK, ASM=x.is_cuda, HALF=form == "rows16", num_warps=warps)
