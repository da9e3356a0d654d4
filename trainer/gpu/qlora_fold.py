"""QLoRA linear layers as one GEMM: the adapter folded into the weight while it is dequantised.

peft runs a QLoRA linear ``y = x W.T + s (x A.T) B.T`` as a dequantisation of the 4-bit W, the base
GEMM, two thin rank-r GEMMs, a clone and a sum, each pass over the [tokens, out] output a trip to
memory; the backward adds two more thin GEMMs and another sum. Here one Triton kernel writes
``W' = W + s B A`` straight from the NF4 weight (the dequantisation writes every element of W
anyway; the rank-r product rides along in registers), and the layer is ``y = x W'.T``:

- forward: one kernel for W', one GEMM (was: 5 kernels and 3 output-sized passes);
- backward: ``dx = dy W'`` (the adapter's share included), and the adapter's gradients
  ``dA = s (dy B).T x``, ``dB = s dy.T (x A.T)`` from four thin GEMMs.

Numerics: the plain path rounds ``x W.T`` and the adapter's output to bf16 and adds them in bf16;
here ``W + s B A`` is rounded to bf16 once per element. Both lose an adapter contribution below
2^-9 of the value it is added to, so the two agree within bf16 noise
(``tests/test_fast_path.py`` checks loss and LoRA gradients against plain peft).

Used by ``trainer.fast.apply`` for peft ``lora.Linear4bit`` layers with one adapter, no dropout,
no DoRA and no bias, in training mode; everything else (eval, generation, merged adapters) keeps
peft's forward. ``train.qlora_fold: false`` turns it off; ``train.qlora_fp8`` runs the same layers' frozen
products on fp8 tensor cores instead (``trainer.gpu.qlora_fp8``, same contract).
"""
from __future__ import annotations

import contextlib
import functools
import logging
import types

import torch
import torch.nn.functional as F

from myassistant.trainer.gpu import qlora_fp8

log = logging.getLogger(__name__)


def enabled() -> bool:
    """Whether the kernel can run here (Triton and a CUDA GPU)."""
    return _op() is not None


# ----------------------------------------------------------------------------- the kernel

def _kernel():
    """The fold's Triton kernel (autotuned; ``trainer.gpu.nf4_kernels``), built without a GPU too (tests compile it
    for sm_90 to read its PTX)."""
    from myassistant.trainer.gpu.nf4_kernels import fold_kernel

    return fold_kernel


@functools.cache
def _op():
    """The custom op ``assistant::qlora_folded_weight`` (a Triton kernel), or None without Triton/CUDA."""
    try:
        from torch.library import triton_op, wrap_triton
        fold_kernel = _kernel()
    except ImportError as err:
        log.info("QLoRA folding unavailable (%s)", err)
        return None
    if not torch.cuda.is_available():
        return None

    @triton_op("assistant::qlora_folded_weight", mutates_args=())
    def folded_weight_op(q: torch.Tensor, absmax: torch.Tensor, absmax2: torch.Tensor, code2: torch.Tensor,
                         offset: torch.Tensor, code: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor,
                         scale: float, n_out: int, n_in: int, blocksize: int, blocksize2: int, nested: bool,
                         dtype: torch.dtype) -> torch.Tensor:
        return _launch(wrap_triton(fold_kernel), (q, absmax, absmax2, code2, offset, code), lora_a, lora_b, scale,
                       (n_out, n_in, blocksize, blocksize2, nested, dtype))

    return folded_weight_op


def _launch(kernel, quant: tuple, lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float, meta: tuple,
            **tile) -> torch.Tensor:
    """``kernel`` (the fold kernel, or it wrapped for the custom op) run over the whole weight into a new tensor;
    ``tile`` (BM, BN, num_warps; ASM=False under Triton's interpreter) for the kernel without its autotuner."""
    import triton

    n_out, n_in, blocksize, blocksize2, nested, dtype = meta
    out = torch.empty((n_out, n_in), dtype=dtype, device=quant[0].device)
    rank = lora_a.shape[0]

    def grid(config):
        return triton.cdiv(n_out, config["BM"]), triton.cdiv(n_in, config["BN"])
    kernel[grid](*quant, lora_a, lora_b, out, scale, n_out, n_in, rank, BLOCKSIZE=blocksize, BLOCKSIZE2=blocksize2,
                 NESTED=nested, R=max(16, triton.next_power_of_2(rank)), **{"ASM": True, **tile})
    return out


def _quant_args(weight) -> tuple[tuple[torch.Tensor, ...], tuple]:
    """The tensors of a bitsandbytes Params4bit the kernel reads, and its sizes and flags."""
    qs = weight.quant_state
    q = weight.view(torch.uint8) if weight.dtype != torch.uint8 else weight
    if qs.nested:
        tensors = (q, qs.absmax, qs.state2.absmax, qs.state2.code, qs.offset, qs.code)
    else:
        tensors = (q, qs.absmax, qs.absmax, qs.absmax, qs.absmax, qs.code)
    return tensors, (qs.shape[0], qs.shape[1], qs.blocksize, qs.state2.blocksize if qs.nested else 1, qs.nested, qs.dtype)


def _folded(quant: tuple, meta: tuple, lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float) -> torch.Tensor:
    # through torch.ops, which torch.compile reads as one opaque op (``_op`` has registered it). The adapters go in as
    # the bf16 the kernel multiplies them in (the same rounding as its own cast): their fp32 master copies are read by
    # every tile, and in bf16 the fold of a 7B MLP weight takes 89 us instead of 134 (H200, benchmarks/fold_kernel.py)
    return torch.ops.assistant.qlora_folded_weight(*quant, lora_a.to(torch.bfloat16), lora_b.to(torch.bfloat16), scale,
                                                   *meta)


def folded_weight(weight, lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float) -> torch.Tensor:
    """``dequantize(weight) + scale * lora_b @ lora_a`` in the weight's compute dtype, in one kernel."""
    _op()
    return _folded(*_quant_args(weight), lora_a, lora_b, float(scale))


def folded_weight_launched(weight, lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float, **tile) -> torch.Tensor:
    """``folded_weight`` launched straight, not as the custom op, with one ``tile`` (BM, BN) instead of the autotuned
    ones: on a CPU too, under Triton's interpreter (tests)."""
    quant, meta = _quant_args(weight)
    return _launch(_kernel().fn, quant, lora_a, lora_b, float(scale), meta, **tile)


def folded_weight_reference(weight, lora_a: torch.Tensor, lora_b: torch.Tensor, scale: float) -> torch.Tensor:
    """``folded_weight`` before its one rounding, in fp32, from bitsandbytes' dequantisation (for tests)."""
    import bitsandbytes.functional as bnbf

    w = bnbf.dequantize_4bit(weight, weight.quant_state).float()
    return w + scale * (lora_b.to(torch.bfloat16).float() @ lora_a.to(torch.bfloat16).float())


# ----------------------------------------------------------------------------- the layer

class _FoldedLinear(torch.autograd.Function):
    """``x @ (W + s B A).T`` with gradients for x, A and B.

    ``keep``: W' is saved for backward (the layer runs under an activation checkpoint: its first forward
    saves nothing, and the W' its recompute builds serves the backward, which then builds none: two folds a
    step instead of three, for one layer's W' alive between its recompute and its backward). Without a
    checkpoint every layer's W' would stay alive until backward, so W' is rebuilt there instead.
    ``skip``: the recompute of a layer whose output nothing in backward reads (``recomputing``): what backward
    needs is saved, the product is not computed (its place is held by zeros that take no memory).
    """

    @staticmethod
    def forward(ctx, x, lora_a, lora_b, scale, meta, keep, skip, *quant):
        w = _folded(quant, meta, lora_a, lora_b, scale) if keep or not skip else None
        ctx.save_for_backward(x, lora_a, lora_b, *((w,) if keep else quant))
        ctx.scale, ctx.meta, ctx.keep, ctx.n_quant = scale, meta, keep, len(quant)
        if skip:
            return x.new_zeros((), dtype=meta[-1]).expand(*x.shape[:-1], meta[0])
        return F.linear(x.to(w.dtype), w)

    @staticmethod
    def backward(ctx, dy):
        x, lora_a, lora_b, *rest = ctx.saved_tensors
        w = rest[0] if ctx.keep else _folded(tuple(rest), ctx.meta, lora_a, lora_b, ctx.scale)
        dy = dy.to(w.dtype)
        dx = (dy @ w).to(x.dtype) if ctx.needs_input_grad[0] else None
        x2, dy2 = x.reshape(-1, x.shape[-1]).to(w.dtype), dy.reshape(-1, dy.shape[-1])
        dyb = (dy2 @ lora_b.to(w.dtype)) * ctx.scale  # [tokens, r]
        xa = (x2 @ lora_a.to(w.dtype).t()) * ctx.scale  # [tokens, r]
        grad_a = (dyb.t() @ x2).to(lora_a.dtype)
        grad_b = (dy2.t() @ xa).to(lora_b.dtype)
        return (dx, grad_a, grad_b, None, None, None, None) + (None,) * ctx.n_quant


_recomputing = False  # True while an activation checkpoint recomputes a layer (``recomputing``)


@contextlib.contextmanager
def recomputing():
    """The recompute of an activation checkpoint (``checkpoint(..., context_fn=...)``'s second context): folded
    layers marked ``skip_in_recompute`` (a decoder layer's last product, ``trainer.gpu.fast``) save what their
    backward needs and skip their product, whose output only the thrown-away layer output reads. Such a layer runs
    eagerly (``trainer.gpu.fast``), so it reads the flag at each call; inside a compiled graph it would be a constant
    with a graph of its own, and the two graphs around it would save different tensors, which the checkpoint refuses."""
    global _recomputing
    before, _recomputing = _recomputing, True
    try:
        yield
    finally:
        _recomputing = before


def keep_for_backward(module: torch.nn.Module, keep: bool) -> None:
    """Whether the folded layers inside ``module`` save W' for backward (only under an activation checkpoint,
    see ``_FoldedLinear``); ``trainer.gpu.fast`` sets it where it takes the checkpoint."""
    for m in module.modules():
        if hasattr(m, "_peft_forward"):
            m.keep_folded = keep


def foldable(module: torch.nn.Module) -> str | None:
    """Why a module cannot be folded, or None when it can (a peft LoRA Linear4bit of the simple kind)."""
    from peft.tuners.lora import bnb as peft_bnb

    if not isinstance(module, getattr(peft_bnb, "Linear4bit", ())):
        return "not a peft LoRA Linear4bit"
    names = [n for n in module.active_adapters if n in module.lora_A]
    if len(names) != 1:
        return f"{len(names)} active adapters"
    name = names[0]
    weight = module.get_base_layer().weight
    checks = [(not isinstance(module.lora_dropout[name], torch.nn.Identity), "LoRA dropout"),
              (name in getattr(module, "lora_variant", {}), "a LoRA variant (DoRA)"),
              (module.get_base_layer().bias is not None, "a bias"),
              (getattr(weight, "quant_state", None) is None, "no quant_state"),
              (weight.quant_state is not None and (weight.quant_state.blocksize > 128
                                                   or weight.quant_state.shape[1] % weight.quant_state.blocksize),
               "quantisation blocks that do not tile the rows"),
              (weight.quant_state is not None and weight.quant_state.dtype not in (torch.bfloat16, torch.float16),
               "compute dtype not bf16/fp16")]
    return next((why for failed, why in checks if failed), None)


def _forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    names = self.active_adapters
    if (not (self.training and torch.is_grad_enabled()) or self.disable_adapters or self.merged or args or kwargs
            or len(names) != 1 or names[0] not in self.lora_A):
        return self._peft_forward(x, *args, **kwargs)
    weight = self.get_base_layer().weight
    quant, meta = _quant_args(weight)
    skip = _recomputing and getattr(self, "skip_in_recompute", False)
    linear = _FoldedLinear
    if getattr(self, "fp8", False):
        linear, meta = qlora_fp8.Fp8Linear, meta + (weight.quant_state.quant_type,)
    return linear.apply(x, self.lora_A[names[0]].weight, self.lora_B[names[0]].weight, float(self.scaling[names[0]]),
                        meta, getattr(self, "keep_folded", False), skip, *quant)


def apply(model: torch.nn.Module, fp8: bool = False) -> int:
    """Fold the adapters of every eligible QLoRA layer of ``model`` in training; returns how many. ``fp8``: those
    whose sizes fit run their frozen products in fp8 instead (``qlora_fp8.Fp8Linear``), the others fold."""
    if not enabled():
        return 0
    if fp8:
        qlora_fp8.enabled()  # registers its kernel now, outside any compiled code
    n, skipped = 0, {}
    for name, module in model.named_modules():
        why = foldable(module)
        if why is None:
            qs = module.get_base_layer().weight.quant_state
            if qs.nested and (not torch.is_tensor(qs.offset) or qs.offset.device != qs.absmax.device):
                # a checkpoint saved pre-quantised gives the offset back as a float or a CPU tensor
                qs.offset = torch.as_tensor(qs.offset, dtype=torch.float32, device=qs.absmax.device)
            module._peft_forward = module.forward
            module.forward = types.MethodType(_forward, module)
            module.fp8 = fp8 and qlora_fp8.shapes_fit(*qs.shape)
            n += 1
        elif why != "not a peft LoRA Linear4bit":
            skipped[name] = why
    if skipped:
        log.info("QLoRA folding: %d layers keep peft's forward (%s)", len(skipped), next(iter(skipped.items())))
    return n
