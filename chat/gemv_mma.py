"""Products of 1-8 bf16 rows against weight-only int4 matrices on the tensor cores, the weights made bf16 in the
registers they are loaded into (chat.gemv's candidates for these products on a GPU).

chat.gemv's tensor-core kernel hands the packed tile to its dots through shared memory and pads the rows to 16;
chat.gemv_rows multiplies one row on the CUDA cores (~3.5 instructions an int4 weight with the norm). Here a warp's
`mma.sync.m16n8k16` (bf16 in, fp32 sums) multiplies 16 weight rows x 16 columns by up to 8 input rows in one
instruction, and the threads only unpack: a word of 8 nibbles is 8 bf16 weights in 2 byte permutes, 2 shifts, 4
LOP3s under the bits of 128.0 and 4 bf16x2 FMAs taking 136.0 off (exact), ~1.7 instructions a weight in all, the
same for 1 row as for 8. No layout conversion: the mma's operand fragments are the loaded words.

The weights stay in chat.int_weights' layout. A K index of the mma is free to stand for any input column, so long as
the A (weights) and B (input) fragments agree: lane 4 g + t of a warp loads 16 bytes of rows g and g + 8 of a 16-row
tile at byte 16 t of a 64-byte group (columns 16 t .. 16 t + 15 in the low nibbles, 64 more in the high ones) and
the same 2 x 16 columns of input row g (bf16 pairs, as they lie in memory; with fewer rows the last repeats); word j
of those bytes is the A fragment of one mma over its low nibbles and of one over its high nibbles, the input's pairs
2 j, 2 j + 1 its B fragment. The mma's sums are then rows g and g + 8 for input rows 2 t and 2 t + 1, each taking
its weight row's group scale as fp32.

The tensors are [32 lanes, groups a trip, tiles, words] with one warp a program: Triton gives a warp's threads to the
first dimension without contiguity and a thread's 16-byte words to the last, so each lane holds its fragments in
order (`tests/test_gemv.py` checks the loop has no shared memory on sm_90). The RMSNorm is split: the input times the
norm's weight by one bf16x2 multiply a pair, 1 / RMS on the fp32 sums (the module rounds x * rstd to bf16 first: a
difference of ~1e-3 relative, where int4's own rounding is ~10 %). chat.gemv's epilogue (residual, SiLU*mul, split-K
sum, the squares) finishes. Under Triton's interpreter (CPU tests) the two inline PTX pieces have a plain-arithmetic
form: the mma's sums added across the lanes as the mma adds them, the bf16x2 multiply rounded in integers.

Measured on an H200 (7B shape, benchmarks/README.md, session 27), µs: 8 rows qkv 21.8 -> 10.0-12.0, o_proj 9.5 ->
8.0-8.3, gate/up 43.0 -> 34.8-35.4, down 19.9 -> 18.3-18.9 against the tensor-core tiles; the 8-row decode step 3.05
-> 2.47 ms, 8 chats 0.597 -> 0.692-0.699 of one chat. One row: as fast as chat.gemv_rows (o_proj and down pick it
by a few %, qkv and gate/up do not), so one chat's 0.60 of the copy bandwidth stays: those products are bound by a
launch's fixed ~5 µs (ramp, drain, split-K sum), not by instructions.
"""
from __future__ import annotations

import torch

from myassistant.chat.int_weights import GROUP

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs
    triton = None

TAG = "mma"  # the stages field of a configuration: chat.gemv's `_launch` sends it here
ROWS = 8  # input rows a product takes at most: an mma.m16n8k16's n, one input row per group of 4 lanes
TARGET_PROGRAMS = 2048  # programs of one warp a launch should have (as chat.gemv_rows')


def _mma_ptx() -> str:
    """PTX of one lane's element: words $4-$7 (row g) and $8-$11 (row g + 8), input pairs $12-$19 (the low nibbles'
    columns) and $20-$27 (the high ones'), into the fp32 sums $0-$3 of the group (8 mmas from zero)."""
    # nibble | the bits of 128.0 is 128 + nibble; x 1.0 - 136.0 by a bf16x2 FMA (exact; `sub.bf16x2` needs sm_90)
    lines = [".reg .b32 p, q, r, u, a0, a1, a2, a3, k, one;", "mov.b32 k, 0xc308c308;", "mov.b32 one, 0x3f803f80;"]
    lines += [f"mov.f32 ${i}, 0f00000000;" for i in range(4)]
    mma = "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {$0, $1, $2, $3}, {a0, a1, a2, a3}, {$%d, $%d}, " \
          "{$0, $1, $2, $3};"
    unpack = ["lop3.b32 a0, p, 0x000f000f, 0x43004300, 0xea;", "lop3.b32 a2, q, 0x000f000f, 0x43004300, 0xea;",
              "lop3.b32 a1, r, 0x000f000f, 0x43004300, 0xea;", "lop3.b32 a3, u, 0x000f000f, 0x43004300, 0xea;"]
    unpack += [f"fma.rn.bf16x2 a{i}, a{i}, one, k;" for i in range(4)]
    for j in range(4):
        # bytes 0, 1 and 2, 3 of each row's word j as 16-bit halves: the two columns of a0 / a1 and of a2 / a3
        lines += [f"prmt.b32 p, ${4 + j}, 0, 0x4140;", f"prmt.b32 q, ${4 + j}, 0, 0x4342;",
                  f"prmt.b32 r, ${8 + j}, 0, 0x4140;", f"prmt.b32 u, ${8 + j}, 0, 0x4342;"]
        lines += unpack + [mma % (12 + 2 * j, 13 + 2 * j)]  # the low nibbles: columns 4 j .. 4 j + 3 of 16 t
        lines += [f"shr.b32 {v}, {v}, 4;" for v in "pqru"]
        lines += unpack + [mma % (20 + 2 * j, 21 + 2 * j)]  # the high nibbles: 64 columns on
    return "{\n" + "\n".join(lines) + "\n}"


if triton is not None:
    from myassistant.chat.gemv_epilogue import _finish, _rstd, shared_rstd
    from myassistant.chat.gemv_rows import _load

    MMA_PTX = tl.constexpr(_mma_ptx())
    GROUP_WORDS = tl.constexpr(GROUP // 2)  # 32-bit words of bf16 input pairs a group

    @triton.jit
    def _words(t):
        """A [32, A, B, 4] tensor as its 4 [32, A, B] slices along the last dimension (a thread's registers,
        renamed)."""
        a, b = tl.split(tl.reshape(t, [32, t.shape[1], t.shape[2], 2, 2]))  # words 0, 2 and 1, 3
        w0, w2 = tl.split(a)
        w1, w3 = tl.split(b)
        return w0, w1, w2, w3

    @triton.jit
    def _halves(words):
        """32-bit words [32, KW, 1, 4] of bf16 pairs as float32 [8 (g), 4 (t), KW, 1, 8]: a lane's 8 columns in order
        (the first of a pair in the low half)."""
        low = (words << 16).to(tl.float32, bitcast=True)
        high = (words & -65536).to(tl.float32, bitcast=True)
        return tl.reshape(tl.join(low, high), [8, 4, words.shape[1], 1, 8])

    @triton.jit
    def _nibbles(q, HIGH: tl.constexpr):
        """Words [32, KW, T, 4] of packed int4 as float32 weights (nibble - 8) [8 (g), 4 (t), KW, T, 2, 8]: the low
        (or HIGH) nibbles of a lane's 16 bytes, its columns 0-7 and 8-15."""
        shifts = (tl.arange(0, 4) * 8 + HIGH * 4)[None, None, None, None, :]
        values = ((q[:, :, :, :, None] >> shifts) & 15).to(tl.float32) - 8.0  # [32, KW, T, word, byte]
        return tl.reshape(values, [8, 4, q.shape[1], q.shape[2], 2, 8])

    @triton.jit
    def _cross_lanes(w, x):
        """The mma's sums from per-lane values: w [8 (g), 4 (t), KW, T, 8] weights and x [8, 4, KW, 1, 8] inputs of
        the same columns (lane 4 n + t holds input row n's); [32, KW, T] each for input rows n = 2 t and 2 t + 1."""
        products = w[:, None, :, :, :, :] * x[None, :, :, :, :, :]  # [g, n, t, KW, T, column]
        sums = tl.sum(tl.sum(products, 5), 2)  # every lane's columns of weight row g times input row n
        KW: tl.constexpr = sums.shape[2]
        T: tl.constexpr = sums.shape[3]
        even, odd = tl.split(tl.permute(tl.reshape(sums, [8, 4, 2, KW, T]), (0, 1, 3, 4, 2)))
        return tl.reshape(even, [32, KW, T]), tl.reshape(odd, [32, KW, T])

    @triton.jit
    def _row_sums(w, lo, hi):
        """Sums 0 and 1 (or 2 and 3) of the mma for weight words w [32, KW, T, 4] and the inputs lo / hi
        [8, 4, KW, 1, 8, 2] of their low / high nibbles' columns (0-7, 8-15 of a lane's 16)."""
        wl0, wl1 = tl.split(tl.permute(_nibbles(w, 0), (0, 1, 2, 3, 5, 4)))
        wh0, wh1 = tl.split(tl.permute(_nibbles(w, 1), (0, 1, 2, 3, 5, 4)))
        xl0, xl1 = tl.split(lo)
        xh0, xh1 = tl.split(hi)
        a0, a1 = _cross_lanes(wl0, xl0)
        b0, b1 = _cross_lanes(wl1, xl1)
        c0, c1 = _cross_lanes(wh0, xh0)
        e0, e1 = _cross_lanes(wh1, xh1)
        return a0 + b0 + c0 + e0, a1 + b1 + c1 + e1

    @triton.jit
    def _group_sums_interpreted(q, q8, xa, xb, xc, xd):
        """`_group_sums` in plain tensor arithmetic, across the lanes as the mma sums (Triton's interpreter runs no
        PTX): the same products in float32."""
        lo = tl.join(_halves(xa), _halves(xb))  # [g, t, KW, 1, 8, 2 (columns 0-7, 8-15)]
        hi = tl.join(_halves(xc), _halves(xd))
        d0, d1 = _row_sums(q, lo, hi)
        d2, d3 = _row_sums(q8, lo, hi)
        return d0, d1, d2, d3

    @triton.jit
    def _bf16_product(a, b):
        """The bf16x2 product of two words of bf16 pairs in integer and float32 arithmetic (the interpreter's form):
        each half's float32 product rounded to the nearest even bf16."""
        low = ((a << 16).to(tl.float32, bitcast=True) * (b << 16).to(tl.float32, bitcast=True)).to(tl.int32,
                                                                                                   bitcast=True)
        high = ((a & -65536).to(tl.float32, bitcast=True) * (b & -65536).to(tl.float32, bitcast=True)).to(
            tl.int32, bitcast=True)
        low = low + 32767 + ((low >> 16) & 1)
        high = high + 32767 + ((high >> 16) & 1)
        return (high & -65536) | ((low >> 16) & 65535)

    @triton.jit
    def _group_sums(q, q8, xa, xb, xc, xd, ASM: tl.constexpr):
        """The fp32 sums of one group a lane takes part in: q / q8 [32, KW, T, 4] words of rows g / g + 8; xa, xb /
        xc, xd [32, KW, 1, 4] the input's pairs 0-3, 4-7 for the low / high nibbles; four [32, KW, T] tensors (the
        mma's sums 0-3)."""
        if not ASM:
            return _group_sums_interpreted(q, q8, xa, xb, xc, xd)
        w0, w1, w2, w3 = _words(q)
        v0, v1, v2, v3 = _words(q8)
        l0, l1, l2, l3 = _words(xa)
        l4, l5, l6, l7 = _words(xb)
        h0, h1, h2, h3 = _words(xc)
        h4, h5, h6, h7 = _words(xd)
        return tl.inline_asm_elementwise(
            MMA_PTX, "=f,=f,=f,=f" + ",r" * 24,
            [w0, w1, w2, w3, v0, v1, v2, v3, l0, l1, l2, l3, l4, l5, l6, l7, h0, h1, h2, h3, h4, h5, h6, h7],
            dtype=(tl.float32, tl.float32, tl.float32, tl.float32), is_pure=True, pack=1)

    @triton.jit
    def _pairs(x_ptr, nw_ptr, word, NORM: tl.constexpr, ASM: tl.constexpr):
        """4 bf16 pairs (32-bit words) of the input at `word`, times the norm's weight's (bf16x2) with NORM."""
        x = tl.load(x_ptr + word)
        if NORM and ASM:
            # x * w + (-0.0): one rounding of the product (`mul.bf16x2` would need sm_90)
            x = tl.inline_asm_elementwise("{\n.reg .b32 z;\nmov.b32 z, 0x80008000;\nfma.rn.bf16x2 $0, $1, $2, z;\n}",
                                          "=r,r,r", [x, tl.load(nw_ptr + word)], dtype=tl.int32, is_pure=True,
                                          pack=1)
        elif NORM:
            x = _bf16_product(x, tl.load(nw_ptr + word))
        return x

    @triton.jit
    def _weights(words, ok, ok8, N: tl.constexpr, WORDS: tl.constexpr, GATED: tl.constexpr, EVEN: tl.constexpr):
        """A trip's words of rows g and g + 8 at `words` [32, KW, T, 4], and of the up rows (N on) with GATED."""
        q = _load(words, ok, EVEN)
        q8 = _load(words + 8 * WORDS, ok8, EVEN)
        u = q
        u8 = q8
        if GATED:
            u = _load(words + N * WORDS, ok, EVEN)
            u8 = _load(words + (N + 8) * WORDS, ok8, EVEN)
        return q, q8, u, u8

    @triton.jit
    def _trip(q, q8, u, u8, x_ptr, nw_ptr, group, x_row, scales, ok, ok8, acc, acc2, N: tl.constexpr,
              GROUPS: tl.constexpr, NORM: tl.constexpr, GATED: tl.constexpr, EVEN: tl.constexpr, ASM: tl.constexpr):
        """One trip's groups (`group` [1, KW, 1], scales at `scales` [32, KW, T] for rows g) added to the sums acc
        [32, KW, T, 2, 2] (acc2: the up rows u, u8 with GATED): the mma's sums (row g, n = 2 t and 2 t + 1; row
        g + 8, the same) times their rows' scales. Lane 4 g + t's input row is `x_row` (word offset, [32, 1, 1, 1])."""
        # the input's columns 16 t .. 16 t + 15 of each group (4 + 4 pairs) and 64 on, [32, KW, 1, 4] each
        word = (group * GROUP_WORDS + tl.arange(0, 32)[:, None, None] % 4 * 8)[:, :, :, None] \
            + tl.arange(0, 4)[None, None, None, :]
        xa = _pairs(x_ptr + x_row, nw_ptr, word, NORM, ASM)
        xb = _pairs(x_ptr + x_row, nw_ptr, word + 4, NORM, ASM)
        xc = _pairs(x_ptr + x_row, nw_ptr, word + GROUP_WORDS // 2, NORM, ASM)
        xd = _pairs(x_ptr + x_row, nw_ptr, word + GROUP_WORDS // 2 + 4, NORM, ASM)
        d0, d1, d2, d3 = _group_sums(q, q8, xa, xb, xc, xd, ASM)
        scale = tl.join(_load(scales, ok, EVEN), _load(scales + 8 * GROUPS, ok8, EVEN))  # rows g, g + 8
        acc += tl.join(tl.join(d0, d1), tl.join(d2, d3)) * scale[:, :, :, None, :]
        if GATED:
            e0, e1, e2, e3 = _group_sums(u, u8, xa, xb, xc, xd, ASM)
            scale = tl.join(_load(scales + N * GROUPS, ok, EVEN), _load(scales + (N + 8) * GROUPS, ok8, EVEN))
            acc2 += tl.join(tl.join(e0, e1), tl.join(e2, e3)) * scale[:, :, :, None, :]
        return acc, acc2

    @triton.jit
    def _rows_of(acc, T: tl.constexpr):
        """[32, KW, T, 2 (i), 2 (h)] sums (lane 4 g + t: input row n = 2 t + i of weight row 8 h + g of each tile) as
        the program's [8, 16 T] products (every input row its own)."""
        sums = tl.reshape(tl.sum(acc, 1), [8, 4, T, 2, 2])  # [g, t, tile, i, h]
        return tl.reshape(tl.permute(sums, (1, 3, 2, 4, 0)), [8, 16 * T])

    @triton.jit
    def _mma_kernel(x_ptr, w_ptr, out_ptr, res_ptr, nw_ptr, ws_ptr, count_ptr, s_ptr, sq_in_ptr, sq_out_ptr, M,
                    stride_xm, stride_om, stride_rm, eps, N: tl.constexpr, K: tl.constexpr, NORM: tl.constexpr,
                    SHARED_NORM: tl.constexpr, GATED: tl.constexpr, RESIDUAL: tl.constexpr, SQUARES: tl.constexpr,
                    T: tl.constexpr, KW: tl.constexpr, SPLIT: tl.constexpr, ASM: tl.constexpr):
        pid = tl.program_id(0)
        part = tl.program_id(1)  # which K / SPLIT slice of the product this program sums
        BLOCK_N: tl.constexpr = 16 * T
        EVEN: tl.constexpr = N % BLOCK_N == 0
        dtype = x_ptr.dtype.element_ty
        WORDS: tl.constexpr = K // 8  # 32-bit words a row
        GROUPS: tl.constexpr = K // (GROUP_WORDS * 2)  # chat.int_weights.GROUP
        PART: tl.constexpr = GROUPS // SPLIT  # groups this program sums
        TRIPS: tl.constexpr = PART // KW
        STEP: tl.constexpr = KW * GROUP_WORDS // 4  # words of a row a trip moves on (16 a group)
        m = tl.arange(0, 8)
        if NORM and SHARED_NORM:  # 1 / RMS of the input rows, from the squares handed on or from the rows
            rstd = shared_rstd(sq_in_ptr, m, m < M, eps, K)
        else:
            rstd = _rstd(x_ptr, m, m < M, tl.arange(0, 128), stride_xm, eps, K, NORM, 8, 128)
        x_words = x_ptr.to(tl.pointer_type(tl.int32), bitcast=True)
        nw_words = nw_ptr.to(tl.pointer_type(tl.int32), bitcast=True)
        # [32 lanes, KW groups, T tiles] (the lanes first: the compiler gives a warp's threads to the first dimension
        # with no contiguity, and the words of a lane are the last): lane 4 g + t reads rows g and g + 8 of its tile
        # at byte 16 t of each group, and input row g (the last one where there are fewer: its columns repeat)
        lane = tl.arange(0, 32)[:, None, None]
        x_row = (tl.minimum(lane // 4, M - 1) * (stride_xm // 2))[:, :, :, None]
        row = pid * BLOCK_N + tl.arange(0, T)[None, None, :] * 16 + lane // 4  # [32, 1, T]
        ok = row < N
        ok8 = row + 8 < N
        group = part * PART + tl.arange(0, KW)[None, :, None]  # [1, KW, 1]: the first trip's groups
        scales = s_ptr + row * GROUPS + group  # [32, KW, T]
        words = (w_ptr + row * WORDS + group * (GROUP_WORDS // 4) + lane % 4 * 4)[:, :, :, None] \
            + tl.arange(0, 4)[None, None, None, :]  # [32, KW, T, 4]
        ok4 = ok[:, :, :, None]
        ok84 = ok8[:, :, :, None]
        acc = tl.zeros([32, KW, T, 2, 2], tl.float32)
        acc2 = tl.zeros([32, KW, T, 2, 2], tl.float32)
        q, q8, u, u8 = _weights(words, ok4, ok84, N, WORDS, GATED, EVEN)
        for trip in range(TRIPS - 1):
            # the next trip's weights first: their loads are in flight during this trip's arithmetic
            q_next, q8_next, u_next, u8_next = _weights(words + (trip + 1) * STEP, ok4, ok84, N, WORDS, GATED, EVEN)
            acc, acc2 = _trip(q, q8, u, u8, x_words, nw_words, group + trip * KW, x_row, scales + trip * KW, ok,
                              ok8, acc, acc2, N, GROUPS, NORM, GATED, EVEN, ASM)
            q = q_next
            q8 = q8_next
            u = u_next
            u8 = u8_next
        acc, acc2 = _trip(q, q8, u, u8, x_words, nw_words, group + (TRIPS - 1) * KW, x_row,
                          scales + (TRIPS - 1) * KW, ok, ok8, acc, acc2, N, GROUPS, NORM, GATED, EVEN, ASM)
        out = _rows_of(acc, T)
        out2 = _rows_of(acc2, T)
        if NORM:  # the norm's 1 / RMS, on the sums (see the module's text)
            out *= rstd[:, None]
            out2 *= rstd[:, None]
        n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        _finish(out, out2, ws_ptr, count_ptr, res_ptr, out_ptr, sq_out_ptr, pid, part, m, n, m < M, n < N, N,
                stride_om, stride_rm, dtype, GATED, RESIDUAL, SQUARES, SPLIT, 8, BLOCK_N)


def candidates(n: int, k: int, rows: int = 8) -> list[tuple]:
    """(16 T rows, 128 KW columns, SPLIT, 1 warp, TAG) for a product of `rows` (up to 8) bf16 rows against an [n, k]
    int4 weight: a tile a program, K split until about TARGET_PROGRAMS programs of one warp. One row (where
    chat.gemv_rows' kernel is as fast): 1 or 2 groups a trip; more rows: 2 or 4, and 4 at half the split. The
    configurations the 7B shape's products picked on an H200 among ~20 (1-4 tiles a program, 1-4 groups a trip, 1/4
    to 1 times the split: benchmarks/README.md, session 27); each is a compiled kernel a product at the warm-up."""
    groups = k // GROUP
    found = []
    for per_trip, fewer in ((1, 1), (2, 1)) if rows == 1 else ((2, 1), (4, 1), (4, 2)):
        split = 1
        while -(-n // 16) * split < TARGET_PROGRAMS and groups % (2 * split * per_trip) == 0 and split < 16:
            split *= 2
        split = max(split // fewer, 1)
        if groups % (split * per_trip) == 0:
            found.append((16, GROUP * per_trip, split, 1, TAG))
    return list(dict.fromkeys(found))


def launch(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, out: torch.Tensor,
           residual: torch.Tensor | None, norm_weight: torch.Tensor | None, eps: float, gated: bool,
           config: tuple, ws: torch.Tensor, count: torch.Tensor, squares_in: torch.Tensor | None = None,
           squares_out: torch.Tensor | None = None) -> None:
    """The product of up to 8 bf16 rows `x` [m, K] with the int4 `weight` / `scale` (chat.gemv's arguments, squares
    and buffers)."""
    block_n, block_k, split, warps, _ = config
    assert x.shape[0] <= ROWS and x.stride(1) == 1 and x.stride(0) % 8 == 0 and x.dtype == torch.bfloat16
    assert weight.dtype == torch.uint8 and weight.is_contiguous() and scale.is_contiguous()
    assert scale.dtype == torch.float32
    n = out.shape[1]
    dummy = x
    _mma_kernel[(triton.cdiv(n, block_n), split)](
        x, weight.view(torch.int32), out, dummy if residual is None else residual,
        dummy if norm_weight is None else norm_weight, ws, count, scale,
        count if squares_in is None else squares_in, count if squares_out is None else squares_out, x.shape[0],
        x.stride(0), out.stride(0), 0 if residual is None else residual.stride(0), eps, N=n, K=x.shape[1],
        NORM=norm_weight is not None, SHARED_NORM=squares_in is not None, GATED=gated, RESIDUAL=residual is not None,
        SQUARES=squares_out is not None, T=block_n // 16, KW=block_k // GROUP, SPLIT=split, ASM=x.is_cuda,
        num_warps=warps)
