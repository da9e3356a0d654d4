"""Weight-only int8 linear layers for CPU decoding.

Decoding one token reads every weight once, so on a CPU it is bound by memory bandwidth: int8
weights (one byte each, a bf16 scale per output channel) read a quarter of fp32's bytes and half
of bf16's. torch's own ``aten._weight_int8pack_mm`` (x in bf16, int8 weight [N, K], bf16 scales)
is the matrix-vector kernel; it is fast for a few rows only, so a prompt (prefill, many rows)
dequantises the weight and runs one bf16 matrix multiply instead.

Symmetric per-output-channel scales, rounded to bf16 *before* the weights are quantised against
them, so the scales the kernel multiplies by are exactly the ones used to quantise.
"""
from __future__ import annotations

import logging
import os

import torch
from torch import nn

log = logging.getLogger(__name__)

QUANTIZE_ENV = "ASSISTANT_QUANTIZE"  # "none" turns the CPU int8 path off; "int8" asks for it
QUANTIZE_CHOICES = ("auto", "int8", "none")
GEMV_MAX_ROWS = 16  # up to this many rows the int8 kernel beats dequantise + bf16 matmul (2-core AVX-512)


class Int8Linear(nn.Module):
    """``nn.Linear`` with int8 weights and bf16 per-channel scales; returns its input's dtype."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        scale = (weight.abs().amax(dim=1) / 127).clamp(min=1e-12).to(torch.bfloat16)
        q = torch.round(weight / scale.float()[:, None]).clamp(-128, 127).to(torch.int8)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight", q.contiguous())
        self.register_buffer("scale", scale)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def dequantized(self) -> torch.Tensor:
        return self.weight.to(torch.bfloat16) * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).to(torch.bfloat16)
        if rows.shape[0] <= GEMV_MAX_ROWS:
            out = torch.ops.aten._weight_int8pack_mm(rows, self.weight, self.scale)
        else:
            out = nn.functional.linear(rows, self.dequantized())
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out.to(x.dtype).view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weight, bf16 scales"


def int8_kernel_problem() -> str | None:
    """Why the int8 kernel cannot be used here (None when it works and gives the right numbers)."""
    if not hasattr(torch.ops.aten, "_weight_int8pack_mm"):
        return f"torch {torch.__version__} has no aten._weight_int8pack_mm"
    try:
        linear = nn.Linear(64, 32, bias=False)
        x = torch.randn(2, 64)
        got = Int8Linear(linear)(x)
        want = x @ linear.weight.detach().T
    except RuntimeError as err:  # e.g. a CPU build without the kernel for this dtype
        return f"aten._weight_int8pack_mm failed: {err}"
    if not torch.allclose(got, want, rtol=0.05, atol=0.05 * want.abs().max().item()):
        return "aten._weight_int8pack_mm gave wrong results"
    return None


def resolve_quantize(quantize: str, device: torch.device) -> str:
    """'int8' or 'none' for a request: 'auto' = int8 on the CPU, unless the environment turns it off."""
    env = os.environ.get(QUANTIZE_ENV, "").strip().lower()
    if quantize == "auto" and env:
        quantize = env
    if quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"quantize={quantize!r} (or {QUANTIZE_ENV}) must be one of {', '.join(QUANTIZE_CHOICES)}")
    if quantize == "auto":
        quantize = "int8" if device.type == "cpu" else "none"
    if quantize == "int8" and device.type != "cpu":
        log.warning("int8 weights are a CPU decode path; %s keeps its half-precision weights", device)
        return "none"
    if quantize == "int8" and (problem := int8_kernel_problem()):
        log.warning("int8 weights are off: %s; decoding with unquantised weights", problem)
        return "none"
    return quantize


@torch.no_grad()
def quantize_int8(model: nn.Module) -> int:
    """Replace every ``nn.Linear`` of `model` (lm_head included) in place; returns how many."""
    targets = [(name, module) for name, module in model.named_modules() if type(module) is nn.Linear]
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, Int8Linear(linear))
    log.info("int8 weights in %d linear layers", len(targets))
    return len(targets)
