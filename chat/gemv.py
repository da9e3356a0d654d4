"""Skinny matrix products of a decode step (1-16 rows against a weight matrix) with the neighbours fused in.

A batch-1 decode step of a 1.8B model is 97 matrix products of 1-8 rows against 2048-wide weights:
pure weight reads, each with its own RMSNorm, SiLU*mul, residual add or cast kernel around it under
cuBLAS (every extra kernel is a launch and a ramp-up in a graph). Here one Triton kernel does:

- ``NORM``: the RMSNorm of the input rows as the prologue (no normalised copy is written). Each program
  needs the rows' mean square: in a decode step the product that wrote the rows (o_proj, down: the residual
  add) hands on their sums of squares (``SQUARES`` -> ``SHARED_NORM``, chat.gemv_epilogue), else each program
  recomputes it from the input read from L2 (at 7B, 8 KiB a program);
- the product, each program owning BLOCK_N output features (weights streamed once, fp32 accumulation
  on the tensor cores, the rows padded to 16), over the whole K or a 1/SPLIT slice of it: the slices'
  partial sums meet in a workspace and the last program of a column block to arrive adds them in a
  fixed order (one launch, deterministic);
- ``GATED``: SiLU(gate) * up as the epilogue of the merged [gate; up] weight (a program reads gate
  rows j and up rows I + j, so the 2I-wide intermediate is never written);
- ``RESIDUAL``: the residual add as the epilogue.

Block width and split are timed per product shape at its first call, in CUDA graphs (chat.gemv_pick). On an H200
(benchmarks/gemv_gpu.py, 1 row, of the copy bandwidth, ours / cuBLAS with the modules around it): qkv 0.35 / 0.24,
o_proj 0.27 / 0.27, gate/up 0.65 / 0.45, down 0.55 / 0.57, lm_head 0.88 / 0.82. The small products are bound by a
fixed ~4-5 us a kernel, not by the reads; programmatic dependent launch (weights loaded before waiting on the
previous kernel) measured no faster in three forms and was removed (benchmarks/README_decode.md).

Every rounding step is the model's own (normalised input rounded to the weights' dtype before the norm's weight,
SiLU and products rounded as bf16 tensors would be), so the result differs from the module chain only by the
summation order of the product. Used on CUDA for bf16 / fp16 weights and at most MAX_ROWS rows, and for a short
prompt's products against int8 / int4 weights (up to PREFILL_ROWS rows in one tile, the bare product: a 7B int8 first
token of 28 prompt tokens 17.4 -> 9.6 ms on an H200); elsewhere (CPU, fp32, longer prefills) the model's modules
run. The kernel runs under Triton's interpreter on a CPU (TRITON_INTERPRET=1): the tests check it there.

Weight-only int8 / int4 (chat.int_weights, ``QUANT``; served by chat.weight_only): int8 rows with a scale each, or
int4 two to a byte with a scale per row and 128 columns (a group's bytes hold columns j and 64 + j, so its two nibble
tiles meet contiguous x columns; inline PTX makes 4 bytes 8 exact bf16 weights; the scales multiply the fp32 sums).

Other kernels `_pick` times beside this one's tiles (each must first agree with the first candidate's product;
benchmarks/README.md has the figures): for one bf16 / fp16 row, chat.gemv_dense_rows (a few rows a program over
long K tiles on the CUDA cores: every product of the 1.8B one-chat step); for one int8 / int4 row, chat.gemv_rows
(fp16 pairs on the CUDA cores, no shared memory: all four 7B products); for 1-8 bf16 rows over int4, chat.gemv_mma
(mma.sync on the packed words as loaded: all four 7B products of 2-8 rows, so the tiles stay only as the product to
agree with). Measured slower and removed: the weights as the dots' first operand (Hopper's wgmma) and a CUDA-core
kernel whose input columns passed through shared memory.
"""
from __future__ import annotations

import logging

import torch

from myassistant.chat import gemv_dense_rows, gemv_mma, gemv_pick, gemv_rows
from myassistant.chat.int_weights import GROUP, QuantWeight
from myassistant.chat.scratch import scratch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the model's modules everywhere
    triton = None
else:
    from myassistant.chat.gemv_epilogue import _finish, _rstd, shared_rstd

log = logging.getLogger(__name__)

MAX_ROWS = 16  # rows a decode product takes (one tensor-core tile); more rows go to cuBLAS, which is good there
# Weight-only int8 / int4 products of up to this many rows (a short prompt's prefill: the prefill graphs' buckets of 64
# and 128 tokens) run this kernel too, in one tile of 32-128 rows: cuBLAS needs the matrix dequantised into bf16
# first, which writes and reads again twice to four times the quantised bytes (chat.weight_only).
PREFILL_ROWS = 128
TIME_CANDIDATES = True  # False: the first candidate without timing (tests of many small shapes)
AGREE = 1e-2  # relative difference from the first candidate's product above which a candidate is left out
ROWS_ONE_ROW = True  # one-row products: chat.gemv_rows' / chat.gemv_dense_rows' CUDA-core kernels are candidates too
MMA_ROWS = True  # 1-8 bf16 rows against int4 weights: chat.gemv_mma's kernel is a candidate too


if triton is not None:
    from myassistant.chat.gemv_rows import rms_normed

    @triton.jit
    def _x_tile(x_ptrs, nw_ptr, first, k0, cols, m_ok, rstd, dtype: tl.constexpr, NORM: tl.constexpr,
                UPCAST: tl.constexpr):
        """The input rows at `x_ptrs` (columns first + k0 + cols), RMS-normalised as LlamaRMSNorm does:
        weight * (x * rstd).to(dtype)."""
        x = tl.load(x_ptrs, mask=m_ok[:, None], other=0.0)
        if NORM:
            x = rms_normed(x, rstd[:, None], tl.load(nw_ptr + first + k0 + cols)[None, :], dtype)
        if UPCAST:  # Triton's interpreter multiplies bf16 tiles wrongly; exact in fp32
            x = x.to(tl.float32)
        return x

    @triton.jit
    def _int4_values(nibbles, MAGIC: tl.constexpr, dtype: tl.constexpr):
        """Nibbles (0..15, the stored value + 8) as `dtype` tiles of nibble - 8: fp16 (MAGIC 0x6400, the bits of 1024.0,
        whose last mantissa bits are then the nibble) by an OR, a bitcast and a subtraction (exact), no conversion."""
        if MAGIC == 0:  # float32 (and Triton's interpreter, which has no bf16 bit patterns): exact
            return nibbles.to(tl.float32) - 8.0
        return (nibbles.to(tl.int16) | MAGIC).to(dtype, bitcast=True) - 1032.0

    @triton.jit
    def _dot_int4(xl, xh, packed, scale, dtype: tl.constexpr, MAGIC: tl.constexpr, PRECISION: tl.constexpr):
        """x @ w.T for one group of a packed int4 tile (xl, xh: the x columns of the low and high nibbles) times
        the group's scales (applied to the fp32 sums: the weights are exact integers in the dot)."""
        if MAGIC == -1:  # bf16, 4 bytes a 32-bit word: 2 byte permutes, 4 LOP3s (nibble | the bits of 128.0), 2 shifts
            # and 4 bf16x2 FMAs (x 1.0 - 136.0, exact; `sub.bf16x2` would need sm_90) give 8 weights
            low, high = tl.inline_asm_elementwise(
                """{
                .reg .b32 a, b, c, one;
                prmt.b32 a, $4, 0, 0x4140;
                prmt.b32 b, $4, 0, 0x4342;
                mov.b32 c, 0xc308c308;
                mov.b32 one, 0x3f803f80;
                lop3.b32 $0, a, 0x000f000f, 0x43004300, 0xea;
                lop3.b32 $1, b, 0x000f000f, 0x43004300, 0xea;
                shr.b32 a, a, 4;
                shr.b32 b, b, 4;
                lop3.b32 $2, a, 0x000f000f, 0x43004300, 0xea;
                lop3.b32 $3, b, 0x000f000f, 0x43004300, 0xea;
                fma.rn.bf16x2 $0, $0, one, c;
                fma.rn.bf16x2 $1, $1, one, c;
                fma.rn.bf16x2 $2, $2, one, c;
                fma.rn.bf16x2 $3, $3, one, c;
                }""", "=r,=r,=r,=r,r", [packed], dtype=(tl.bfloat16, tl.bfloat16), is_pure=True, pack=4)
        else:
            low = _int4_values(packed & 15, MAGIC, dtype)
            high = _int4_values(packed >> 4, MAGIC, dtype)
        return (tl.dot(xl, tl.trans(low), input_precision=PRECISION)
                + tl.dot(xh, tl.trans(high), input_precision=PRECISION)) * scale[None, :]

    @triton.jit
    def _rstd_rows(x_ptr, m, M, stride_xm, eps, K: tl.constexpr, BLOCK_M: tl.constexpr):
        """`_rstd` with each row read in one load (K a power of two): one L2 round trip before the weights stream,
        not K / BLOCK_K (they are dependent loads of a 16-row tile)."""
        sq = tl.zeros([BLOCK_M], tl.float32)
        cols = tl.arange(0, K)
        for r in tl.static_range(BLOCK_M):
            if r < M:
                xs = tl.load(x_ptr + r * stride_xm + cols).to(tl.float32)
                sq = tl.where(m == r, tl.sum(xs * xs, 0), sq)
        return 1.0 / tl.sqrt(sq / K + eps)

    @triton.jit
    def _gemv_kernel(x_ptr, w_ptr, out_ptr, res_ptr, nw_ptr, ws_ptr, count_ptr, s_ptr, sq_in_ptr, sq_out_ptr, M, N,
                     stride_xm, stride_wn, stride_om, stride_rm, stride_sn, eps, K: tl.constexpr, NORM: tl.constexpr,
                     SHARED_NORM: tl.constexpr, GATED: tl.constexpr, RESIDUAL: tl.constexpr, SQUARES: tl.constexpr,
                     QUANT: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_K: tl.constexpr, SPLIT: tl.constexpr, STAGES: tl.constexpr, UPCAST: tl.constexpr,
                     PRECISION: tl.constexpr, GROUP: tl.constexpr, MAGIC: tl.constexpr):
        pid = tl.program_id(0)
        part = tl.program_id(1)  # which K / SPLIT slice of the product this program sums
        n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
        m = tl.arange(0, BLOCK_M)
        kk = tl.arange(0, BLOCK_K)
        m_ok = m < M
        n_ok = n < N
        dtype = x_ptr.dtype.element_ty  # the activations' (the weights may be int8 / packed int4)
        first = part * (K // SPLIT)
        # K is a constant of the compiled kernel (a model has two or three widths; Triton's interpreter
        # wants constant loop bounds) and a multiple of SPLIT * BLOCK_K (the host picks them so).
        if NORM and SHARED_NORM:  # from the sums of squares the product that wrote the rows left
            rstd = shared_rstd(sq_in_ptr, m, m_ok, eps, K)
        elif NORM and QUANT == 0 and K <= 8192 and (K & (K - 1)) == 0:  # bf16 / fp16: a row in one load
            rstd = _rstd_rows(x_ptr, m, M, stride_xm, eps, K, BLOCK_M)
        else:
            rstd = _rstd(x_ptr, m, m_ok, kk, stride_xm, eps, K, NORM, BLOCK_M, BLOCK_K)
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        acc2 = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        x_rows = x_ptr + m[:, None] * stride_xm + first + kk[None, :]
        w_rows = w_ptr + n[:, None] * stride_wn + first + kk[None, :]
        for k0 in tl.range(0, K // SPLIT, BLOCK_K, num_stages=STAGES):
            if QUANT == 4:  # BLOCK_K / GROUP groups; byte j of a group: column j (low nibble), GROUP / 2 + j (high)
                half = tl.arange(0, GROUP // 2)
                for g in tl.static_range(BLOCK_K // GROUP):
                    col = first + k0 + g * GROUP
                    x_group = x_ptr + m[:, None] * stride_xm + (col + half)[None, :]
                    xl = _x_tile(x_group, nw_ptr, col, 0, half, m_ok, rstd, dtype, NORM, UPCAST)
                    xh = _x_tile(x_group + GROUP // 2, nw_ptr, col, GROUP // 2, half, m_ok, rstd, dtype, NORM, UPCAST)
                    packed = w_ptr + n[:, None] * stride_wn + col // 2 + half[None, :]
                    scales = s_ptr + n * stride_sn + col // GROUP
                    acc += _dot_int4(xl, xh, tl.load(packed, mask=n_ok[:, None], other=0),
                                     tl.load(scales, mask=n_ok, other=0.0), dtype, MAGIC, PRECISION)
                    if GATED:
                        acc2 += _dot_int4(xl, xh, tl.load(packed + N * stride_wn, mask=n_ok[:, None], other=0),
                                          tl.load(scales + N * stride_sn, mask=n_ok, other=0.0), dtype, MAGIC,
                                          PRECISION)
            else:  # bf16 / fp16 / fp32 weights, or int8 ones (exact in bf16 / fp16) converted for the dot
                x = _x_tile(x_rows + k0, nw_ptr, first, k0, kk, m_ok, rstd, dtype, NORM, UPCAST)
                w = tl.load(w_rows + k0, mask=n_ok[:, None], other=0.0)
                if QUANT == 8 and not UPCAST:  # exact in bf16 / fp16 (the interpreter converts through fp32)
                    w = w.to(dtype)
                if UPCAST:
                    w = w.to(tl.float32)
                acc += tl.dot(x, tl.trans(w), input_precision=PRECISION)
                if GATED:
                    w2 = tl.load(w_rows + N * stride_wn + k0, mask=n_ok[:, None], other=0.0)
                    if QUANT == 8 and not UPCAST:
                        w2 = w2.to(dtype)
                    if UPCAST:
                        w2 = w2.to(tl.float32)
                    acc2 += tl.dot(x, tl.trans(w2), input_precision=PRECISION)
        if QUANT == 8:  # per output row scales: the product of the int8 rows, then the scale
            acc = acc * tl.load(s_ptr + n, mask=n_ok, other=0.0)[None, :]
            if GATED:
                acc2 = acc2 * tl.load(s_ptr + n + N, mask=n_ok, other=0.0)[None, :]
        _finish(acc, acc2, ws_ptr, count_ptr, res_ptr, out_ptr, sq_out_ptr, pid, part, m, n, m_ok, n_ok, N, stride_om,
                stride_rm, dtype, GATED, RESIDUAL, SQUARES, SPLIT, BLOCK_M, BLOCK_N)


_picked: dict[tuple, tuple] = {}  # the timed choice per (shape, fusions, rows)
timed: dict[tuple, dict[tuple, float]] = {}  # _pick's median ms per candidate, per key of _picked (benchmarks read it)


def tile_rows(rows: int) -> int:
    """The rows of the tile a product of `rows` rows runs in: 1 (chat.gemv_rows' candidates too), 8 (chat.gemv_mma's
    too), MAX_ROWS (a decode step's), or a prefill's power of two from 32; each its own pick (the tensor-core kernel's
    tile has at least MAX_ROWS rows)."""
    if rows <= gemv_mma.ROWS:
        return 1 if rows == 1 else gemv_mma.ROWS
    return MAX_ROWS if rows <= MAX_ROWS else max(32, 1 << (rows - 1).bit_length())


def _launch(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None, out: torch.Tensor,
            residual: torch.Tensor | None, norm_weight: torch.Tensor | None, eps: float, gated: bool,
            config: tuple, squares_in: torch.Tensor | None = None, squares_out: torch.Tensor | None = None) -> None:
    m, k = x.shape
    n = out.shape[1]
    block_n, block_k, split, warps, stages = config
    block_m = max(tile_rows(m), MAX_ROWS)
    quant = 4 if weight.dtype == torch.uint8 else 8 if weight.dtype == torch.int8 else 0
    tiles = triton.cdiv(n, block_n)
    # split K: each slice's fp32 partial sums, and a zeroed arrival counter per column block
    ws = scratch("gemv workspace", x.device, torch.float32, split * 2 * block_m * n if split > 1 else 1)
    count = scratch("gemv counters", x.device, torch.int32, tiles, zeroed=True)
    if stages == "rows":  # one row on the CUDA cores (chat.gemv_rows)
        return gemv_rows.launch(x, weight, scale, out, residual, norm_weight, eps, gated, config, ws, count, squares_in,
                                squares_out)
    if stages == gemv_mma.TAG:  # 1-8 bf16 rows against int4 weights on the tensor cores, unpacked in registers
        return gemv_mma.launch(x, weight, scale, out, residual, norm_weight, eps, gated, config, ws, count, squares_in,
                               squares_out)
    if stages == gemv_dense_rows.TAG:  # one row against bf16 / fp16 weights on the CUDA cores
        return gemv_dense_rows.launch(x, weight, out, residual, norm_weight, eps, gated, config, ws, count, squares_in,
                                      squares_out)
    assert x.stride(-1) == 1 and weight.stride(-1) == 1 and k % (split * block_k) == 0
    # a prefill's tile: the bare product (the norm's one-load row loop and the handed squares are a decode tile's)
    assert m <= MAX_ROWS or (m <= PREFILL_ROWS and norm_weight is None and squares_out is None)
    dummy = x  # pointer arguments of the fusions that are off: never read
    args = (x, weight, out, dummy if residual is None else residual, dummy if norm_weight is None else norm_weight, ws,
            count, ws if scale is None else scale, count if squares_in is None else squares_in,
            count if squares_out is None else squares_out, m, n, x.stride(0), weight.stride(0), out.stride(0),
            0 if residual is None else residual.stride(0), 0 if scale is None else scale.stride(0), eps)
    # int4 tiles for the dots: from the bits of 128 + nibble (bf16: inline PTX, -1) or 1024 + nibble (fp16 0x6400)
    magic = 0 if not x.is_cuda or quant != 4 else {torch.bfloat16: -1, torch.float16: 0x6400}.get(x.dtype, 0)
    meta = dict(K=k, NORM=norm_weight is not None, SHARED_NORM=squares_in is not None, GATED=gated,
                RESIDUAL=residual is not None, SQUARES=squares_out is not None, QUANT=quant,
                BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, SPLIT=split,
                STAGES=stages, UPCAST=not x.is_cuda, PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
                GROUP=GROUP, MAGIC=magic, num_warps=warps)
    _gemv_kernel[(tiles, split)](*args, **meta)


def _pick(x, weight, scale, out, residual, norm_weight, eps, gated, squares_in=None, squares_out=None) -> tuple:
    """The fastest candidate for this product, timed once on the real tensors inside CUDA graphs with the L2 flushed
    (chat.gemv_pick); the first candidate where timing is not possible (CPU, inside a capture, TIME_CANDIDATES off).
    `squares_out` is left as it was (the timed launches add to it)."""
    n, k = out.shape[1], x.shape[1]
    quant = 4 if weight.dtype == torch.uint8 else 8 if weight.dtype == torch.int8 else 0
    rows = x.shape[0]
    found = gemv_pick.all_candidates(n, k, quant, gated, x, rows > MAX_ROWS, ROWS_ONE_ROW, MMA_ROWS)
    # residual / norm: 0 off, 1 on, 2 on and handing on the sums of squares / taking them
    key = (n, k, gated, (residual is not None) + (squares_out is not None), (norm_weight is not None) +
           (squares_in is not None), out.dtype, weight.dtype, tile_rows(rows))
    if key in _picked or not x.is_cuda or not TIME_CANDIDATES or torch.cuda.is_current_stream_capturing():
        return _picked.get(key, found[0])
    squares = None if squares_out is None else squares_out.clone()
    launch = lambda config: _launch(x, weight, scale, out, residual, norm_weight, eps, gated, config,  # noqa: E731
                                    squares_in, squares_out)
    compiled, first = [], None
    for config in found:
        try:
            launch(config)  # compile, grow the buffers
        except triton.runtime.errors.OutOfResources:  # too much shared memory (fp32 tiles): not a candidate
            continue
        except Exception as e:  # noqa: BLE001 - a candidate that does not compile here is not one (the first must)
            if config == found[0]:
                raise
            log.warning("gemv candidate %s for %dx%d: %s", config, n, k, e)
            continue
        # a candidate must compute what the first does (differing only in summation order): a kernel that a
        # GPU or Triton version gets wrong is left out, not served
        if first is None:
            first = out.float().clone()
        elif float((out.float() - first).norm()) > AGREE * float(first.norm()):
            log.warning("gemv candidate %s for %dx%d left out: its product differs from %s's", config, n, k, found[0])
            continue
        compiled.append(config)
    times = gemv_pick.time_in_graphs(compiled, launch, x.device)
    if squares is not None:
        squares_out.copy_(squares)
    timed[key] = times
    _picked[key] = min(times, key=times.get) if times else found[0]
    return _picked[key]


def _out_features(weight: torch.Tensor, gated: bool) -> int:
    return weight.shape[0] // 2 if gated else weight.shape[0]


def _product(x, weight, scale, residual, norm_weight, eps, gated, out_float, squares_in, squares_out) -> torch.Tensor:
    out = torch.empty(x.shape[0], _out_features(weight, gated), dtype=torch.float32 if out_float else x.dtype,
                      device=x.device)
    _launch(x, weight, scale, out, residual, norm_weight, eps, gated,
            _pick(x, weight, scale, out, residual, norm_weight, eps, gated, squares_in, squares_out),
            squares_in, squares_out)
    return out


@torch.library.custom_op("myassistant::gemv", mutates_args=())
def gemv(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None, residual: torch.Tensor | None,
         norm_weight: torch.Tensor | None, eps: float, gated: bool, out_float: bool,
         squares_in: torch.Tensor | None = None) -> torch.Tensor:
    """``[norm](x) @ weight.T`` for x [m, K] (m <= MAX_ROWS): [m, N], or [m, N/2] when `gated` (SiLU(gate) * up of
    the merged [gate; up] weight); plus `residual` [m, N] when given; float32 when `out_float` (logits).
    `weight` in x's dtype, or a `QuantWeight`'s q with its `scale`. `squares_in` (int64 [m]): the input rows' sums of
    squares as `gemv_squares` left them (the norm then reads no row: chat.gemv_epilogue)."""
    return _product(x, weight, scale, residual, norm_weight, eps, gated, out_float, squares_in, None)


@gemv.register_fake
def _(x, weight, scale, residual, norm_weight, eps, gated, out_float, squares_in=None):
    return x.new_empty(x.shape[0], _out_features(weight, gated), dtype=torch.float32 if out_float else x.dtype)


@torch.library.custom_op("myassistant::gemv_squares", mutates_args=("squares_out",))
def gemv_squares(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None, residual: torch.Tensor | None,
                 norm_weight: torch.Tensor | None, eps: float, gated: bool, out_float: bool,
                 squares_in: torch.Tensor | None, squares_out: torch.Tensor) -> torch.Tensor:
    """`gemv` that also adds its output rows' sums of squares to `squares_out` (int64 [m], zeroed before the step)
    for the next product's `squares_in`. An op of its own: inductor does not compile an op whose mutated argument
    may be None, and the compiled decode layers have no use for it (chat.fast)."""
    return _product(x, weight, scale, residual, norm_weight, eps, gated, out_float, squares_in, squares_out)


@gemv_squares.register_fake
def _(x, weight, scale, residual, norm_weight, eps, gated, out_float, squares_in, squares_out):
    return x.new_empty(x.shape[0], _out_features(weight, gated), dtype=torch.float32 if out_float else x.dtype)


def product(x: torch.Tensor, weight: torch.Tensor | QuantWeight, residual: torch.Tensor | None = None,
            norm: torch.nn.Module | None = None, gated: bool = False, out_float: bool = False,
            squares_in: torch.Tensor | None = None, squares_out: torch.Tensor | None = None) -> torch.Tensor:
    """`gemv` with a model's RMSNorm module (`norm`) and a plain or quantised weight; `squares_in` / `squares_out`:
    the input rows' sums of squares taken from the product that wrote them / the output rows' handed on (see
    `gemv_squares`)."""
    q, scale = weight if isinstance(weight, QuantWeight) else (weight, None)
    eps = 0.0 if norm is None else norm.variance_epsilon
    args = (x, q, scale, residual, None if norm is None else norm.weight, eps, gated, out_float, squares_in)
    return gemv(*args) if squares_out is None else gemv_squares(*args, squares_out)


def prefill_usable(weight: QuantWeight, rows: int) -> bool:
    """Whether a product of `rows` rows (more than a decode step's) against a quantised `weight` runs the kernel in
    one tile (PREFILL_ROWS)."""
    return triton is not None and weight.q.is_cuda and MAX_ROWS < rows <= PREFILL_ROWS


def usable(weight: torch.Tensor | QuantWeight, rows: int) -> bool:
    """Whether a product of `rows` rows against `weight` runs the fused kernel (CUDA, bf16 / fp16 or quantised,
    few rows)."""
    if isinstance(weight, QuantWeight):
        return triton is not None and weight.q.is_cuda and rows <= MAX_ROWS
    return (triton is not None and weight.is_cuda and weight.dtype in (torch.bfloat16, torch.float16)
            and rows <= MAX_ROWS and weight.shape[1] % 16 == 0)
