"""Weight-only int8 / int4 decoder layers on a GPU: a model whose layers' bf16 weights are gone.

`to_device` moves a model (loaded on the CPU) to the GPU one decoder layer at a time, each layer's Linear weights
quantised there (`chat.int_weights.quantize`: int8 with a scale per row, or int4 with a scale per row and 128 columns)
and its bf16 copy dropped at once: the GPU never holds more than one layer in bf16 beside the quantised rest,
so a 7B model loads in int4 where its bf16 weights would not fit. Embeddings, norms and the lm_head stay as they
are. `QuantLinear` is the layer that replaces an ``nn.Linear``: a decode step's rows and a short prompt's (up to
`chat.gemv.PREFILL_ROWS`) go through the kernel of `chat.gemv` over the quantised weight; more rows (a long prefill)
through `dequantized_linear`, which writes the bf16 matrix into one scratch buffer per device (reused by every layer:
one matrix's memory, the largest, not a model's) and multiplies with cuBLAS. The fast decoder (`chat.fast`) stacks a
layer's q/k/v and gate/up `QuantLinear`s into one quantised matrix each, as it concatenates bf16 weights.
"""
from __future__ import annotations

import logging

import torch
from torch import nn
from torch.nn import functional as F

from myassistant.chat import gemv, int_weights
from myassistant.chat.int_weights import QuantWeight
from myassistant.chat.scratch import scratch

log = logging.getLogger(__name__)

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: torch's dequantisation
    triton = None

BITS = {"int8": 8, "int4": 4}  # ServeConfig.quantize -> bits of the layers' weights on a GPU


class QuantLinear(nn.Module):
    """A bias-free ``nn.Linear`` whose weight is weight-only int8 / int4 (buffers `q` and `scale`, see
    `chat.int_weights.QuantWeight`); it computes in the dtype its Linear had."""

    def __init__(self, linear: nn.Linear, bits: int) -> None:
        super().__init__()
        self.in_features, self.out_features, self.bits = linear.in_features, linear.out_features, bits
        self.dtype = linear.weight.dtype  # of the activations it multiplies (the dequantised matrix's)
        q, scale = int_weights.quantize(linear.weight.detach(), bits)
        self.register_buffer("q", q)
        self.register_buffer("scale", scale)

    @property
    def quant(self) -> QuantWeight:
        return QuantWeight(self.q, self.scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.quant)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}"


def linear(x: torch.Tensor, weight: QuantWeight) -> torch.Tensor:
    """x @ weight.T for x [..., K]: the fused kernel for a decode step's rows or a short prompt's on a GPU, else over
    the dequantised matrix."""
    rows = x.numel() // x.shape[-1]
    if gemv.usable(weight, rows) or gemv.prefill_usable(weight, rows):
        return gemv.product(x.reshape(rows, -1), weight).view(*x.shape[:-1], -1)
    return dequantized_linear(x, *weight)


def stack(modules: list[QuantLinear]) -> QuantWeight:
    """One quantised matrix of the modules' rows (q/k/v, gate/up); the modules' buffers become views into it. The
    scratch buffer is grown to hold it dequantised now, before any CUDA graph captures a prefill."""
    q = torch.cat([m.q for m in modules])
    scale = torch.cat([m.scale for m in modules])
    start = 0
    for m in modules:
        rows = m.q.shape[0]
        m.q, m.scale = q[start:start + rows], scale[start:start + rows]
        start += rows
    if q.is_cuda:
        scratch(SCRATCH, q.device, modules[0].dtype, q.shape[0] * modules[0].in_features)
    return QuantWeight(q, scale)


@torch.no_grad()
def quantize_layer(layer: nn.Module, bits: int) -> int:
    """Replace every bias-free ``nn.Linear`` inside `layer` by a `QuantLinear`; returns how many (int4 takes inputs in
    whole groups of 128 only: narrower layers keep their weights)."""
    targets = [(name, m) for name, m in layer.named_modules() if type(m) is nn.Linear and m.bias is None
               and (bits == 8 or m.in_features % int_weights.GROUP == 0)]
    for name, module in targets:
        parent, _, child = name.rpartition(".")
        setattr(layer.get_submodule(parent), child, QuantLinear(module, bits))
    return len(targets)


@torch.no_grad()
def to_device(model: nn.Module, device: torch.device, bits: int, layers: nn.ModuleList) -> nn.Module:
    """`model` on `device` with the decoder `layers` (a ModuleList inside it) quantised to `bits`, one layer at a
    time: the bf16 weights of a layer are freed as soon as its quantised ones exist."""
    assert bits in (8, 4), "weight bits: 8 or 4"
    owner = next(m for m in model.modules() if any(child is layers for child in m.children()))
    name = next(n for n, child in owner.named_children() if child is layers)
    setattr(owner, name, nn.ModuleList())  # everything but the layers first
    model.to(device)
    setattr(owner, name, layers)
    count = 0
    for i, layer in enumerate(layers):
        layers[i] = layer.to(device)
        count += quantize_layer(layers[i], bits)
    log.info("int%d weights in %d linear layers of %d decoder layers (on %s)", bits, count, len(layers), device)
    return model


if triton is not None:
    @triton.jit
    def _dequantize_kernel(q_ptr, s_ptr, out_ptr, N, stride_q, stride_s, stride_o, K: tl.constexpr,
                           QUANT: tl.constexpr, GROUP: tl.constexpr, BLOCK_N: tl.constexpr):
        """out[n, k] = q * scale rounded to out's dtype (as chat.int_weights.dequantize): int8 rows, or int4 groups whose
        byte j holds column j (low nibble) and GROUP / 2 + j (high), stored + 8."""
        n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        col = tl.program_id(1) * GROUP
        n_ok = n[:, None] < N
        half = tl.arange(0, GROUP // 2)
        out = out_ptr + n[:, None] * stride_o + col + half[None, :]
        if QUANT == 8:
            scale = tl.load(s_ptr + n * stride_s, mask=n < N, other=0.0)[:, None]
            for part in tl.static_range(2):
                w = tl.load(q_ptr + n[:, None] * stride_q + col + part * GROUP // 2 + half[None, :], mask=n_ok, other=0)
                tl.store(out + part * GROUP // 2, (w.to(tl.float32) * scale).to(out_ptr.dtype.element_ty), mask=n_ok)
        else:
            scale = tl.load(s_ptr + n * stride_s + col // GROUP, mask=n < N, other=0.0)[:, None]
            packed = tl.load(q_ptr + n[:, None] * stride_q + col // 2 + half[None, :], mask=n_ok, other=0)
            low = ((packed & 15).to(tl.float32) - 8.0) * scale
            high = ((packed >> 4).to(tl.float32) - 8.0) * scale
            tl.store(out, low.to(out_ptr.dtype.element_ty), mask=n_ok)
            tl.store(out + GROUP // 2, high.to(out_ptr.dtype.element_ty), mask=n_ok)


SCRATCH = "dequantised matrix"  # chat.scratch's name of the buffer a prefill's matrices are dequantised into


def _matrix(weight: QuantWeight, dtype: torch.dtype) -> torch.Tensor:
    """The dequantised [N, K] matrix in the device's scratch buffer (valid until the next call: a stream runs one
    product after the other). Grown outside CUDA graph captures only: every shape runs eagerly first."""
    q, scale = weight
    n, k = q.shape[0], q.shape[1] * (2 if q.dtype == torch.uint8 else 1)
    if triton is None or not q.is_cuda or k % int_weights.GROUP:
        return int_weights.dequantize(weight, dtype)
    out = scratch(SCRATCH, q.device, dtype, n * k)[:n * k].view(n, k)
    block_n = 32
    _dequantize_kernel[(triton.cdiv(n, block_n), k // int_weights.GROUP)](
        q, scale, out, n, q.stride(0), scale.stride(0), out.stride(0), K=k, QUANT=4 if q.dtype == torch.uint8 else 8,
        GROUP=int_weights.GROUP, BLOCK_N=block_n)
    return out


@torch.library.custom_op("myassistant::dequantized_linear", mutates_args=())
def dequantized_linear(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x @ W.T with W the matrix of `QuantWeight(q, scale)`, dequantised into the scratch buffer first."""
    return F.linear(x, _matrix(QuantWeight(q, scale), x.dtype))


@dequantized_linear.register_fake
def _(x, q, scale):
    return x.new_empty(*x.shape[:-1], q.shape[0])
