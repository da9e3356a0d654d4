"""One-row products against weight-only int4 / int8 matrices on the CUDA cores (chat.gemv's candidates for one
row): each thread's loads of the packed rows stay in the registers they land in, in the layout the input's columns
are loaded in: no shared memory between the loads and the arithmetic.

chat.gemv's tensor-core kernel hands the packed tile to the dot through shared memory, read back a few bytes at a
time (int4: 0.2-0.3 of the copy bandwidth on an H200, benchmarks/README.md). One row needs no tensor core. Here a
program is one warp; a loop trip covers BLOCK_B bytes of each of its BLOCK_N rows, CHUNK contiguous bytes a thread
loaded as two 32-bit words (tiles [chunks, rows, 2 words]), and the input's columns for a chunk are a [chunks, 8]
tile that the compiler loads in the same layout (8 bf16: one 16-byte load). int4: byte j of a 64-byte group holds
column j in its low nibble and 64 + j in its high one; int8: byte b of word i is column 4 i + b.

The products are fp16 pairs, two weights an instruction: inline PTX makes a word's nibbles (or bytes) fp16 pairs
with one LOP3 (a byte permute) each under the bits of fp16 1024, takes the offset out exactly (HSUB2 / HFMA2) and
multiplies by the input's columns paired the same way (HFMA2), so the integer pipe, which runs at half the FMA
pipe's rate, does half the work of a float32 form (one byte permute a weight). fp16 has 11 bits and ends at 65504,
so each chunk's columns are scaled by a power of two (exact) that keeps a lane's sum finite (`_power_of_two`) and
the chunk's float32 sum scaled back; a product then differs from float32 arithmetic by ~1e-3 relative (int4's own
rounding: ~10 %). The next trip's weights are loaded before this trip's arithmetic; the loads are unmasked where the
rows fill the blocks. chat.gemv's epilogue (residual, SiLU*mul, split-K sum) finishes.

Measured on an H200 (7B shape, one chat, the tensor-core kernel alone -> with this one, benchmarks/README.md): int4
qkv 16.4 -> 10.3 us, o_proj 9.2 -> 7.7, gate/up 50.6 -> 26.3, down 19.9 -> 16.9, decode 293 -> 446 tokens/s; int8
qkv 17.1 -> 13.0, o_proj 10.2 -> 9.5, gate/up 43.1 -> 39.3, down 23.7 -> 22.5, decode 304 -> 365 tokens/s.
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
    from myassistant.chat.gemv_epilogue import _finish, shared_rstd

    def _words_ptx(registers: str, constants: str, word: str) -> tl.constexpr:
        """The inline PTX of a chunk's sum: `word` (a template over one 32-bit word {w} and its input pairs {x0}..)
        for the words $1 and $2 (their pairs from $3 on), the fp16 pair sum then added up as float32 into $0."""
        per = word.count("{x")  # input pairs a word
        body = "".join(word.format(w=f"${i + 1}", **{f"x{j}": f"${3 + per * i + j}" for j in range(per)})
                       for i in range(2)).replace("fma.rn.f16x2 acc, v0, $3, acc;", "mul.rn.f16x2 acc, v0, $3;", 1)
        return tl.constexpr("{\n.reg .b32 s, acc, " + registers + ";\n.reg .b16 lo, hi;\n.reg .f32 f;\n" + constants
                            + body + "mov.b32 {lo, hi}, acc;\ncvt.f32.f16 f, lo;\ncvt.f32.f16 $0, hi;\n"
                            "add.f32 $0, $0, f;\n}")

    # int4: LOP3 makes fp16 pairs 1024 + nibble (low nibbles of bytes 0 and 2; of 1 and 3 after a shift) and
    # 1024 + 16 nibble (the high ones); HSUB2 of 1032 / HFMA2 by 1/16 less 72 leave nibble - 8 (exact)
    INT4_PTX = _words_ptx("v0, v1, v2, v3, k1032, k16, km72",
                          "mov.b32 k1032, 0x64086408;\nmov.b32 k16, 0x2c002c00;\nmov.b32 km72, 0xd480d480;\n", """\
lop3.b32 v0, {w}, 0x000f000f, 0x64006400, 0xea;
lop3.b32 v1, {w}, 0x00f000f0, 0x64006400, 0xea;
shr.u32 s, {w}, 8;
lop3.b32 v2, s, 0x000f000f, 0x64006400, 0xea;
lop3.b32 v3, s, 0x00f000f0, 0x64006400, 0xea;
sub.rn.f16x2 v0, v0, k1032;
fma.rn.f16x2 v1, v1, k16, km72;
sub.rn.f16x2 v2, v2, k1032;
fma.rn.f16x2 v3, v3, k16, km72;
fma.rn.f16x2 acc, v0, {x0}, acc;
fma.rn.f16x2 acc, v2, {x1}, acc;
fma.rn.f16x2 acc, v1, {x2}, acc;
fma.rn.f16x2 acc, v3, {x3}, acc;
""")
    # int8: the sign bits flipped (byte + 128), a byte permute under 0x64 makes fp16 pairs 1152 + byte of bytes 0
    # and 2, 1 and 3; HSUB2 of 1152 leaves the byte (exact)
    INT8_PTX = _words_ptx("v0, v1, k1152", "mov.b32 k1152, 0x64806480;\n", """\
xor.b32 s, {w}, 0x80808080;
prmt.b32 v0, s, 0x64646464, 0x4240;
prmt.b32 v1, s, 0x64646464, 0x4341;
sub.rn.f16x2 v0, v0, k1152;
sub.rn.f16x2 v1, v1, k1152;
fma.rn.f16x2 acc, v0, {x0}, acc;
fma.rn.f16x2 acc, v1, {x1}, acc;
""")

    @triton.jit
    def _nibbles(word):
        """The 8 nibbles of each 32-bit word (4 packed bytes) as floats, nibble - 8: the low nibbles of bytes 0-3,
        then the high ones (the interpreter's form of the kernel's PTX)."""
        return (((word >> 0) & 15).to(tl.float32) - 8, ((word >> 8) & 15).to(tl.float32) - 8,
                ((word >> 16) & 15).to(tl.float32) - 8, ((word >> 24) & 15).to(tl.float32) - 8,
                ((word >> 4) & 15).to(tl.float32) - 8, ((word >> 12) & 15).to(tl.float32) - 8,
                ((word >> 20) & 15).to(tl.float32) - 8, ((word >> 28) & 15).to(tl.float32) - 8)

    @triton.jit
    def _bytes_in_order(b0, b1, b2, b3, C: tl.constexpr, R: tl.constexpr, W: tl.constexpr):
        """[chunks, rows, words] tensors of bytes 0-3 of each word as [chunks, rows, 4 * words] in byte order (word
        w's byte b at 4 w + b): joins along new last dimensions, which stay in a thread's registers."""
        return tl.reshape(tl.join(tl.join(b0, b2), tl.join(b1, b3)), [C, R, 4 * W])

    @triton.jit
    def rms_normed(x, rstd, nw, dtype: tl.constexpr):
        """LlamaRMSNorm's weight * (x * rstd).to(dtype), each product rounded to `dtype` as the module rounds it
        (chat.gemv's tensor-core kernel normalises its input tiles with it too)."""
        return ((x.to(tl.float32) * rstd).to(dtype).to(tl.float32) * nw.to(tl.float32)).to(dtype)

    @triton.jit
    def _x_cols(x_ptr, nw_ptr, cols, rstd, dtype: tl.constexpr, NORM: tl.constexpr):
        """The input row's columns `cols` as float32, RMS-normalised (`rms_normed`) with NORM."""
        x = tl.load(x_ptr + cols)
        if NORM:
            x = rms_normed(x, rstd, tl.load(nw_ptr + cols), dtype)
        return x.to(tl.float32)

    @triton.jit
    def _chunk_sums(q, x_lo, x_hi):
        """Per chunk and row, the sum of a chunk's int4 weights (q [chunks, rows, 2] words) times their input columns
        (x_lo, x_hi [chunks, 8]: of the low and high nibbles), [chunks, rows], in float32 (the interpreter's form)."""
        C: tl.constexpr = q.shape[0]
        R: tl.constexpr = q.shape[1]
        l0, l1, l2, l3, h0, h1, h2, h3 = _nibbles(q)
        low = _bytes_in_order(l0, l1, l2, l3, C, R, 2)
        high = _bytes_in_order(h0, h1, h2, h3, C, R, 2)
        return tl.sum(low * x_lo[:, None, :], 2) + tl.sum(high * x_hi[:, None, :], 2)

    @triton.jit
    def _pairs(x):
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
        """Per chunk and row, the sum of a chunk's int4 weights (q [chunks, rows, 2] words) times their input columns
        (x_lo, x_hi [chunks, 8], scaled so no fp16 sum can overflow) in fp16 pairs: each pair of nibbles made two fp16
        (1024 + nibble or 1024 + 16 nibble by one LOP3, then nibble - 8 by one HSUB2 / HFMA2: exact), multiplied and
        summed by HFMA2s, the chunk's pair sum then made float32; [chunks, rows]."""
        if not ASM:  # the interpreter: the same products in float32
            return _chunk_sums(q, x_lo, x_hi)
        lo02_0, lo13_0, lo02_1, lo13_1 = _pairs(x_lo)
        hi02_0, hi13_0, hi02_1, hi13_1 = _pairs(x_hi)
        w0, w1 = tl.split(q)
        return tl.inline_asm_elementwise(INT4_PTX, "=r,r,r,r,r,r,r,r,r,r,r",
            [w0, w1, lo02_0[:, None], lo13_0[:, None], hi02_0[:, None], hi13_0[:, None], lo02_1[:, None],
             lo13_1[:, None], hi02_1[:, None], hi13_1[:, None]], dtype=tl.float32, is_pure=True, pack=1)

    @triton.jit
    def _half_sums8(q, x, ASM: tl.constexpr):
        """Per chunk and row, the sum of a chunk's int8 weights (q [chunks, rows, 2] words, byte b of word i is column
        4 i + b) times x [chunks, 8] (scaled: see the kernel), in fp16 pairs: each byte made 1024 + 128 + byte by a
        byte permute under 0x64 (the bits of fp16 1024), 1152 subtracted (exact), HFMA2s."""
        if not ASM:  # the interpreter: the same products in float32
            C: tl.constexpr = q.shape[0]
            R: tl.constexpr = q.shape[1]
            b0 = (((q >> 0) + 128) & 255) - 128
            b1 = (((q >> 8) + 128) & 255) - 128
            b2 = (((q >> 16) + 128) & 255) - 128
            b3 = (((q >> 24) + 128) & 255) - 128
            w = _bytes_in_order(b0, b1, b2, b3, C, R, 2).to(tl.float32)
            return tl.sum(w * x[:, None, :], 2)
        p02_0, p13_0, p02_1, p13_1 = _pairs(x)
        w0, w1 = tl.split(q)
        return tl.inline_asm_elementwise(INT8_PTX, "=r,r,r,r,r,r,r",
            [w0, w1, p02_0[:, None], p13_0[:, None], p02_1[:, None], p13_1[:, None]], dtype=tl.float32,
            is_pure=True, pack=1)

    @triton.jit
    def _power_of_two(a, b, SHIFT: tl.constexpr):
        """Per chunk of a and b [chunks, n]: 2^p scaling the chunk's largest magnitude into [2^(SHIFT - 1), 2^SHIFT),
        and 2^-p, each [chunks, 1], made from the float's exponent bits (exact; zeros take p = 126 - SHIFT)."""
        big = tl.maximum(tl.max(tl.abs(a), 1), tl.max(tl.abs(b), 1))
        e = tl.maximum(big.to(tl.int32, bitcast=True) >> 23, SHIFT)  # the largest's exponent bits
        up = ((253 + SHIFT - e) << 23).to(tl.float32, bitcast=True)[:, None]  # 2^(126 + SHIFT - e)
        down = ((e + 1 - SHIFT) << 23).to(tl.float32, bitcast=True)[:, None]  # 2^(e - 126 - SHIFT)
        return up, down

    @triton.jit
    def _load(ptrs, ok, EVEN: tl.constexpr):
        """Unmasked where every row is real: no predicates, no zeroed registers, a load an instruction."""
        if EVEN:
            return tl.load(ptrs)
        return tl.load(ptrs, mask=ok, other=0)

    @triton.jit
    def _row_rstd(x_ptr, sq_in_ptr, eps, K: tl.constexpr, NORM: tl.constexpr, SHARED_NORM: tl.constexpr):
        """1 / RMS of the one input row for NORM (0.0 without): from the sums of squares the product that wrote the
        row left (SHARED_NORM), else from the row over the whole K."""
        rstd = 0.0
        if NORM and SHARED_NORM:
            rstd = tl.sum(shared_rstd(sq_in_ptr, tl.arange(0, 1), tl.arange(0, 1) < 1, eps, K), 0)
        elif NORM:
            sq = tl.zeros([1024], tl.float32)
            for k0 in tl.static_range(0, K, 1024):
                cols = k0 + tl.arange(0, 1024)
                xs = tl.load(x_ptr + cols, mask=cols < K, other=0.0).to(tl.float32)
                sq += xs * xs
            rstd = 1.0 / tl.sqrt(tl.sum(sq, 0) / K + eps)
        return rstd

    @triton.jit
    def _trip(q, q2, x_ptr, nw_ptr, s_ptr, rstd, byte0, n, n_ok, N: tl.constexpr, K: tl.constexpr,
              NORM: tl.constexpr, GATED: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr,
              GROUP: tl.constexpr, CHUNK: tl.constexpr, ASM: tl.constexpr, EVEN: tl.constexpr, QUANT: tl.constexpr):
        """The sums of one loop trip: the words q (q2: the up rows) of bytes byte0.. byte0 + BLOCK_B of each row,
        [chunks, BLOCK_N] each; int4 times the group scales, int8 without its row scales (the kernel's end)."""
        dtype = x_ptr.dtype.element_ty
        c = tl.arange(0, BLOCK_B // CHUNK)[:, None]
        j = tl.arange(0, CHUNK)[None, :]
        if QUANT == 8:
            # fp16 products: a chunk's columns scaled by a power of two so the largest is below 64: a lane's 4
            # products of |byte| <= 127 then sum to less than 2^15 (fp16 ends at 65504); `down` takes it out (exact)
            x = _x_cols(x_ptr, nw_ptr, byte0 + c * CHUNK + j, rstd, dtype, NORM)
            up, down = _power_of_two(x, x, 6)
            sums = _half_sums8(q, x * up, ASM) * down
            sums2 = sums
            if GATED:
                sums2 = _half_sums8(q2, x * up, ASM) * down
            return sums, sums2
        per: tl.constexpr = GROUP // 2 // CHUNK  # chunks a group
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
        # fp16 products: a chunk's columns scaled by a power of two so the largest is below 256: a lane's 8 products
        # of |nibble - 8| <= 8 then sum to less than 2^14 (fp16 ends at 65504); `down` takes it out (exact)
        up, down = _power_of_two(x_lo, x_hi, 8)
        sums = _half_sums(q, x_lo * up, x_hi * up, ASM) * (s1 * down)
        sums2 = sums
        if GATED:
            sums2 = _half_sums(q2, x_lo * up, x_hi * up, ASM) * (s2 * down)
        return sums, sums2

    @triton.jit
    def _rows_kernel(x_ptr, w_ptr, out_ptr, res_ptr, nw_ptr, ws_ptr, count_ptr, s_ptr, sq_in_ptr, sq_out_ptr,
                     stride_om, stride_rm, eps, N: tl.constexpr, K: tl.constexpr, NORM: tl.constexpr,
                     SHARED_NORM: tl.constexpr, GATED: tl.constexpr, RESIDUAL: tl.constexpr, SQUARES: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_B: tl.constexpr, SPLIT: tl.constexpr,
                     GROUP: tl.constexpr, CHUNK: tl.constexpr, ASM: tl.constexpr, QUANT: tl.constexpr):
        pid = tl.program_id(0)
        part = tl.program_id(1)  # which K / SPLIT slice of the product this program sums
        n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        n_ok = n < N
        EVEN: tl.constexpr = N % BLOCK_N == 0
        dtype = x_ptr.dtype.element_ty
        WORDS: tl.constexpr = K * QUANT // 32  # 32-bit words a row
        ROW: tl.constexpr = WORDS * 4 // SPLIT  # bytes of a row this program reads
        first = part * ROW  # its first byte
        rstd = _row_rstd(x_ptr, sq_in_ptr, eps, K, NORM, SHARED_NORM)
        # tiles [chunks, rows, CHUNK bytes as 32-bit words]: a thread holds a chunk of each row (the compiler's layout
        # for CHUNK contiguous bytes, threads along the chunks), and the input's columns [chunks, CHUNK] (CHUNK bf16:
        # one 16-byte load) are loaded in the same layout, with one warp a program: no shared memory between loads and
        # FMAs. The rows' strides are constants (contiguous rows), so a trip's loads share one address register.
        c = tl.arange(0, BLOCK_B // CHUNK)[:, None]
        word = tl.arange(0, CHUNK // 4)[None, :]
        rows = w_ptr + n[None, :, None] * WORDS + first // 4 + (c * (CHUNK // 4) + word)[:, None, :]
        ok = n_ok[None, :, None]
        q = _load(rows, ok, EVEN)
        q2 = q
        if GATED:
            q2 = _load(rows + N * WORDS, ok, EVEN)
        acc = tl.zeros([BLOCK_B // CHUNK, BLOCK_N], tl.float32)
        acc2 = tl.zeros([BLOCK_B // CHUNK, BLOCK_N], tl.float32)
        for k0 in range(0, ROW - BLOCK_B, BLOCK_B):
            # the next trip's weights first: their loads are in flight during this trip's arithmetic
            q_next = _load(rows + (k0 + BLOCK_B) // 4, ok, EVEN)
            q2_next = q_next
            if GATED:
                q2_next = _load(rows + N * WORDS + (k0 + BLOCK_B) // 4, ok, EVEN)
            sums, sums2 = _trip(q, q2, x_ptr, nw_ptr, s_ptr, rstd, first + k0, n, n_ok, N, K, NORM, GATED, BLOCK_N,
                                BLOCK_B, GROUP, CHUNK, ASM, EVEN, QUANT)
            acc += sums
            acc2 += sums2
            q = q_next
            q2 = q2_next
        sums, sums2 = _trip(q, q2, x_ptr, nw_ptr, s_ptr, rstd, first + ROW - BLOCK_B, n, n_ok, N, K, NORM, GATED,
                            BLOCK_N, BLOCK_B, GROUP, CHUNK, ASM, EVEN, QUANT)  # the last trip: nothing to load next
        acc += sums
        acc2 += sums2
        out = tl.sum(acc, 0)
        out2 = tl.sum(acc2, 0)
        if QUANT == 8:  # the row scales
            out *= _load(s_ptr + n, n_ok, EVEN)
            if GATED:
                out2 *= _load(s_ptr + N + n, n_ok, EVEN)
        m = tl.arange(0, 1)
        _finish(out[None, :], out2[None, :], ws_ptr, count_ptr, res_ptr, out_ptr, sq_out_ptr, pid, part, m, n, m < 1,
                n_ok, N, stride_om, stride_rm, dtype, GATED, RESIDUAL, SQUARES, SPLIT, 1, BLOCK_N)


def candidates(n: int, k: int, quant: int) -> list[tuple]:
    """(BLOCK_N, BLOCK_B, SPLIT, 1 warp, "rows") for a one-row product against an [n, k] int4 / int8 weight: K split
    until about TARGET_PROGRAMS programs of one warp (a multiprocessor holds up to 32; half as many were slower for
    all four 7B int4 products on an H200). chat.gemv's `_launch` knows them by the "rows" where its own
    configurations have pipeline stages."""
    row = k * quant // 8  # bytes
    found = []
    for block_n in (8, 16, 4):
        split = 1
        while -(-n // block_n) * split < TARGET_PROGRAMS and row % (2 * split * BLOCK_B) == 0 and split < 8:
            split *= 2
        if row % (split * BLOCK_B) == 0:
            found.append((block_n, BLOCK_B, split, 1, "rows"))
    return found


def launch(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, out: torch.Tensor,
           residual: torch.Tensor | None, norm_weight: torch.Tensor | None, eps: float, gated: bool,
           config: tuple, ws: torch.Tensor, count: torch.Tensor, squares_in: torch.Tensor | None = None,
           squares_out: torch.Tensor | None = None) -> None:
    """The product of one row `x` [1, K] with the int4 / int8 `weight` / `scale` (chat.gemv's arguments, squares and
    buffers)."""
    block_n, block_b, split, warps, _ = config
    assert x.shape[0] == 1 and x.stride(-1) == 1 and weight.dtype in (torch.uint8, torch.int8)
    # 4 packed bytes a word; rows (int4: whole 64-byte groups) and their scales contiguous
    assert weight.is_contiguous() and scale.is_contiguous()
    n = out.shape[1]
    dummy = x
    _rows_kernel[(triton.cdiv(n, block_n), split)](
        x, weight.view(torch.int32), out, dummy if residual is None else residual,
        dummy if norm_weight is None else norm_weight, ws, count, scale,
        count if squares_in is None else squares_in, count if squares_out is None else squares_out, out.stride(0),
        0 if residual is None else residual.stride(0), eps, N=n, K=x.shape[1], NORM=norm_weight is not None,
        SHARED_NORM=squares_in is not None, GATED=gated, RESIDUAL=residual is not None,
        SQUARES=squares_out is not None, BLOCK_N=block_n, BLOCK_B=block_b, SPLIT=split, GROUP=GROUP,
        CHUNK=CHUNK, ASM=x.is_cuda, QUANT=8 if weight.dtype == torch.int8 else 4, num_warps=warps)
