"""QLoRA linear layers whose frozen products run on fp8 tensor cores (``train.qlora_fp8``; Ada / Hopper GPUs).

Most of a 7B QLoRA step is the frozen weight's GEMMs (forward, recompute, input gradient: 239 of ~314 ms at
bs2 on an H200, benchmarks/README.md); an H100 / H200 multiplies e4m3 at twice the bf16 rate. Here:

- forward: W (NF4) dequantised and scaled per row into e4m3 (``W8``, with ``W8ᵀ`` for backward); x scaled per
  token into e4m3; ``y = x8 W8ᵀ`` scaled back by ``torch._scaled_mm``, plus ``s (x Aᵀ) Bᵀ`` in bf16 (one addmm
  into y);
- backward: ``dx = dy W + s (dy B) A``, the first product in e4m3 too (W's row scales multiplied onto dy's
  columns before dy is scaled per token, so ``W8ᵀ`` serves as it is); the adapter's gradients from the bf16 x
  and dy, as in ``qlora_fold``.

Why the adapter is not folded into W8 as ``qlora_fold`` folds it into W': e4m3 keeps 3 mantissa bits, so
``W + s B A`` rounded to it would drop every adapter contribution under ~6 % of its weight (all of them early
in training); beside the fp8 product it keeps bf16's precision.

Numerics: each input of the frozen products is rounded to 2^-4 relative (a product's error ~1-3 %, where the
NF4 weight itself is ~10 % off its bf16 original), so a run differs from the bf16 default: an opt-in setting,
saved with the run. Same layer contract as ``qlora_fold._FoldedLinear`` (``keep``, ``skip``).
"""
from __future__ import annotations

import functools

import torch

E4M3 = torch.float8_e4m3fn
E4M3_MAX = 448.0  # the largest finite e4m3fn value
SMALLEST_SCALE = 1e-30  # an all-zero row (padding) keeps a finite scale and quantises to zeros


def unsupported() -> str | None:
    """Why the fp8 products cannot run here, or None."""
    if not torch.cuda.is_available():
        return "needs a CUDA GPU"
    major, minor = torch.cuda.get_device_capability()
    if (major, minor) < (8, 9):
        return (f"needs fp8 tensor cores (compute capability 8.9 or later: L4, RTX 40xx, H100, H200); "
                f"{torch.cuda.get_device_name()} is {major}.{minor}")
    return None


def check_supported() -> None:
    """A ConfigError when ``train.qlora_fp8`` cannot run here: a run would otherwise differ from what its saved config
    says (``train`` asks before it loads anything, ``fast.apply`` for its other callers)."""
    from myassistant.trainer.config import ConfigError

    why = unsupported()
    if why is not None:
        raise ConfigError(f"train.qlora_fp8: {why}; train.qlora_fp8=false trains in bf16")


def shapes_fit(n_out: int, n_in: int) -> bool:
    """Whether a weight's sizes fit the fp8 GEMMs (``torch._scaled_mm``: both multiples of 16)."""
    return n_out % 16 == 0 and n_in % 16 == 0


def rowwise_e4m3(t: torch.Tensor, column_scale: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``t`` [rows, cols] (times ``column_scale`` [1, cols]) as e4m3 and a float32 scale per row: t ≈ q * scale,
    each row's largest magnitude at e4m3's largest value. Rounded once, from float32 (a bf16 product first would
    round some values twice, to the wrong neighbour)."""
    if t.is_cuda and not torch.compiler.is_compiling():
        # a layer that runs eagerly (a decoder layer's last product, trainer.gpu.fast) gets the pass compiled too:
        # eagerly each float32 temporary of a 7B down_proj's [4096, 14336] weight is a 235 MB allocation
        return _compiled_rows()(t, column_scale)
    return _e4m3_rows(t, column_scale)


@functools.cache
def _compiled_rows():
    return torch.compile(_e4m3_rows)


def _e4m3_rows(t: torch.Tensor, column_scale: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    t = t.float() if column_scale is None else t.float() * column_scale
    scale = torch.linalg.vector_norm(t, float("inf"), dim=1, keepdim=True).clamp(min=SMALLEST_SCALE) / E4M3_MAX
    return (t * (1.0 / scale)).clamp_(-E4M3_MAX, E4M3_MAX).to(E4M3), scale  # a multiply: what the kernel can afford


def dequantized(quant: tuple[torch.Tensor, ...], meta: tuple | None) -> torch.Tensor:
    """The frozen weight in its compute dtype: bitsandbytes' own dequantisation of the NF4 / FP4 parts ``quant``
    (``qlora_fold._quant_args``' order) with ``meta`` = (n_out, n_in, blocksize, blocksize2, nested, dtype,
    quant_type); ``meta`` None: ``quant`` is the weight itself."""
    if meta is None:
        return quant[0]
    n_out, n_in, blocksize, _, _, dtype, quant_type = meta
    return torch.ops.bitsandbytes.dequantize_4bit(quant[0], block_absmax(quant, meta), blocksize, quant_type,
                                                  [n_out, n_in], dtype)


def block_absmax(quant: tuple[torch.Tensor, ...], meta: tuple) -> torch.Tensor:
    """Each quantisation block's float32 scale (double quantisation undone as bitsandbytes undoes it)."""
    _, absmax, absmax2, code2, offset, _ = quant
    if meta[4]:  # nested: bitsandbytes.functional.dequantize_4bit's steps, on tensors (torch.compile reads the ops)
        return torch.ops.bitsandbytes.dequantize_blockwise(absmax, absmax2, code2, meta[3], torch.float32) + offset
    return absmax


def _weight_e4m3(quant, meta, rows: bool = True, cols: bool = False):
    """W8 [out, in] (``rows``, else None), W8ᵀ [in, out] (``cols``, else None) and W's scale per row [out, 1]."""
    if meta is not None and quant[0].is_cuda and meta[5] == torch.bfloat16 and _registered:
        w8, w8t, scale = _converted(quant, meta, rows, cols)
        return (w8 if rows else None), (w8t if cols else None), scale
    w8, scale = rowwise_e4m3(dequantized(quant, meta))
    return (w8 if rows else None), (w8.t().contiguous() if cols else None), scale


def _converted(quant, meta, rows: bool, cols: bool, out_dtype: torch.dtype = E4M3, launch=None):
    """NF4 / FP4 straight to e4m3 in one kernel (``_op``). Each row's scale comes from its blocks' absmax: a block's
    largest weight is its absmax times the code table's largest value (bitsandbytes quantises it so), in bf16 the
    value ``rowwise_e4m3`` finds in the dequantised weight, so both give the same bits. Tests pass ``launch``
    (``_launch`` with the kernel and a tile) and ``out_dtype`` float32: the values before the cast, under Triton's
    interpreter, whose own e4m3 cast does not round to nearest."""
    n_out, n_in, blocksize = meta[0], meta[1], meta[2]
    absmax = block_absmax(quant, meta)
    largest = (absmax.view(n_out, -1) * quant[5].abs().amax()).to(torch.bfloat16).float().amax(dim=1, keepdim=True)
    scale = largest.clamp(min=SMALLEST_SCALE) / E4M3_MAX
    w8, w8t = (launch or torch.ops.assistant.nf4_to_e4m3)(quant[0], absmax, quant[5], 1.0 / scale, n_out, n_in,
                                                          blocksize, rows, cols, out_dtype)
    return w8, w8t, scale


def _kernel():
    """The NF4 -> e4m3 Triton kernel (autotuned; ``trainer.gpu.nf4_kernels``), built without a GPU too (under
    Triton's interpreter in tests)."""
    from myassistant.trainer.gpu.nf4_kernels import e4m3_kernel

    return e4m3_kernel


def _launch(kernel, q, absmax, code, inverse, n_out: int, n_in: int, blocksize: int, rows: bool, cols: bool,
            out_dtype: torch.dtype, **tile) -> tuple[torch.Tensor, torch.Tensor]:
    import triton

    w8 = torch.empty((n_out, n_in) if rows else (0,), dtype=out_dtype, device=q.device)
    w8t = torch.empty((n_in, n_out) if cols else (0,), dtype=out_dtype, device=q.device)

    def grid(config):
        return triton.cdiv(n_out, config["BM"]), triton.cdiv(n_in, config["BN"])
    kernel[grid](q, absmax, code, inverse, w8, w8t, n_out, n_in, BLOCKSIZE=blocksize, ROWS=rows, COLS=cols, **tile)
    return w8, w8t


_registered = False  # whether ``_op`` registered the kernel (read in compiled code: a plain global, not the call)


def enabled() -> bool:
    """Whether NF4 weights convert in one kernel here (Triton and a CUDA GPU; else dequantised, then scaled)."""
    return _op() is not None


@functools.cache
def _op():
    """The custom op ``assistant::nf4_to_e4m3`` (the Triton kernel, which torch.compile launches as it is), or None
    without Triton / CUDA."""
    global _registered
    try:
        from torch.library import triton_op, wrap_triton
        kernel = _kernel()
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None

    @triton_op("assistant::nf4_to_e4m3", mutates_args=())
    def nf4_to_e4m3(q: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, inverse: torch.Tensor, n_out: int,
                    n_in: int, blocksize: int, rows: bool, cols: bool,
                    out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        return _launch(wrap_triton(kernel), q, absmax, code, inverse, n_out, n_in, blocksize, rows, cols, out_dtype)

    _registered = True

    return nf4_to_e4m3


class Fp8Linear(torch.autograd.Function):
    """``x @ W.T + s (x @ A.T) @ B.T`` with the W products in e4m3, gradients for x, A and B.

    ``keep``: ``W8ᵀ`` and the row scales are saved for backward (under an activation checkpoint the recompute's
    serve the backward; 1 byte a weight where ``qlora_fold`` keeps 2); otherwise backward dequantises again.
    ``skip``: a recompute whose output nothing reads (``qlora_fold.recomputing``): saves, computes no product.
    """

    @staticmethod
    def forward(ctx, x, lora_a, lora_b, scale, meta, keep, skip, *quant):
        dtype = meta[5] if meta is not None else quant[0].dtype
        x2 = x.reshape(-1, x.shape[-1]).to(dtype)
        xa = x2 @ lora_a.to(dtype).t()  # [tokens, r], backward's too
        w8 = w8t = w_scale = None
        if keep or not skip:  # W8ᵀ laid out K-major for backward's product (the fp8 GEMMs take both operands so)
            w8, w8t, w_scale = _weight_e4m3(quant, meta, rows=not skip, cols=keep)
        ctx.save_for_backward(x, lora_a, lora_b, xa, *((w8t, w_scale) if keep else quant))
        ctx.scale, ctx.meta, ctx.keep, ctx.n_quant, ctx.dtype = scale, meta, keep, len(quant), dtype
        n_out = meta[0] if meta is not None else quant[0].shape[0]
        if skip:
            return x.new_zeros((), dtype=dtype).expand(*x.shape[:-1], n_out)
        x8, x_scale = rowwise_e4m3(x2)
        # sums accumulated in full: Hopper's fast fp8 accumulation keeps ~14 bits (DeepSeek-V3's report: up to 2 %
        # off at K = 4096), which a CPU cannot show; benchmarks/fp8_layer_gpu.py times both
        y = torch._scaled_mm(x8, w8.t(), scale_a=x_scale, scale_b=w_scale.reshape(1, -1), out_dtype=dtype)
        y = torch.addmm(y, xa, lora_b.to(dtype).t(), alpha=scale)
        return y.reshape(*x.shape[:-1], n_out)

    @staticmethod
    def backward(ctx, dy):
        x, lora_a, lora_b, xa, *rest = ctx.saved_tensors
        if ctx.keep:
            w8t, w_scale = rest
        else:
            _, w8t, w_scale = _weight_e4m3(tuple(rest), ctx.meta, rows=False, cols=True)
        dtype, s = ctx.dtype, ctx.scale
        x2, dy2 = x.reshape(-1, x.shape[-1]).to(dtype), dy.reshape(-1, dy.shape[-1]).to(dtype)
        dyb = dy2 @ lora_b.to(dtype)  # [tokens, r]
        dx = None
        if ctx.needs_input_grad[0]:
            dy8, dy_scale = rowwise_e4m3(dy2, w_scale.reshape(1, -1))
            dx = torch._scaled_mm(dy8, w8t.t(), scale_a=dy_scale, scale_b=dy_scale.new_ones(1, w8t.shape[0]),
                                  out_dtype=dtype)
            dx = torch.addmm(dx, dyb, lora_a.to(dtype), alpha=s).reshape(x.shape).to(x.dtype)
        grad_a = ((dyb.t() @ x2) * s).to(lora_a.dtype)
        grad_b = ((dy2.t() @ xa) * s).to(lora_b.dtype)
        return (dx, grad_a, grad_b, None, None, None, None) + (None,) * ctx.n_quant
