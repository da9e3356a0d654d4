"""Int8 linear layers for CPU decoding.

Decoding one token reads every weight once, so on a CPU it is bound by memory bandwidth, provided
the kernel keeps up: int8 weights read a quarter of fp32's bytes and half of bf16's. Three kernels:

- ``blocks`` (the default where it builds): `chat.int8_blocks`, our C kernel with a scale per 32
  weights and per 32 activations of a row (llama.cpp q8_0's granularity and bytes, each scale the best
  of a few): on the 1.8B shape its logits are closer to fp32's than q8_0's and it decodes faster
  (benchmarks/cpu_serving.py). It also runs int4 weights (``quantize="int4"``: q4_0's 4 bits and
  scale per 32, 0.5625 bytes a weight).
- ``dynamic`` (torch's fbgemm/x86 quantized engine, symmetric per-output-channel int8 weights):
  ``quantized.linear_dynamic``, which quantises each activation row to int8 on the fly (per token when
  decoding) and multiplies with VNNI int8 dot products. It streams weights at about the memory bandwidth (~13 GB/s on one
  core of this 2-core AVX-512 machine). One scale per token is coarse where a row has outliers (the
  down projection's input, SwiGLU's product): ``two_pass`` quantises what the first pass rounded away as a
  second row of the same matrix product (the weights are still read once), which brings the logits error
  of the 1.8B shape from 0.12 to 0.07 of fp32's (llama.cpp q8_0: 0.063) for ~8 % more decode time at
  one chat and ~1.9x the prefill time (benchmarks/cpu_serving.py).
- ``weight_only`` (the last resort): ``aten._weight_int8pack_mm`` (bf16 activations, weights
  dequantised in the kernel), exact in the activations but compute-bound at ~4-6 GB/s here.

Quantised tensors are deprecated in torch 2.13 (pytorch#184982) but work; `int8_kernel` takes the
first kernel that runs here and gives the right numbers.
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import warnings

import torch
from torch import nn

from myassistant.chat import int8_blocks

log = logging.getLogger(__name__)

GEMV_MAX_ROWS = 16  # weight_only: up to this many rows its kernel beats dequantise + bf16 matmul


class Int8Linear(nn.Module):
    """``nn.Linear`` with int8 weights (per-channel scales); returns its input's dtype.

    The weights live in plain attributes, not buffers: ``model.to(dtype)`` must not touch them.
    """

    def __init__(self, linear: nn.Linear, kernel: str = "dynamic", two_pass: bool = False, bits: int = 8) -> None:
        super().__init__()
        self.in_features, self.out_features, self.kernel = linear.in_features, linear.out_features, kernel
        self.bits = bits if kernel == "blocks" else 8  # int4 weights: the blocks kernel only
        self.two_pass = two_pass and kernel == "dynamic"  # the weight-only kernel keeps its activations in bf16
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        if kernel == "blocks":
            self.codes, self.scales = int8_blocks.pack(linear.weight.detach(), self.bits)
            self.bias = bias
            return
        weight = linear.weight.detach().float()
        # Scales rounded to bf16 before quantising: the weight_only kernel multiplies by bf16 scales.
        scale = (weight.abs().amax(dim=1) / 127).clamp(min=1e-12).to(torch.bfloat16)
        q = torch.round(weight / scale.float()[:, None]).clamp(-128, 127).to(torch.int8).contiguous()
        if kernel == "dynamic":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # the deprecation of quantised tensors
                qweight = torch._make_per_channel_quantized_tensor(
                    q, scale.double(), torch.zeros_like(scale, dtype=torch.long), 0)
                self.packed = torch.ops.quantized.linear_prepack(qweight, None)
            self.bias = bias
            self.range_row = torch.zeros(1, self.in_features)
            self.range_row[0, :2] = torch.tensor([-1.0, 1.0])
        else:
            self.weight, self.scale, self.bias = q, scale, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if self.kernel == "blocks":
            out = int8_blocks.linear(rows, self.codes, self.scales, self.out_features, self.bits)
            if self.bias is not None:
                out = out + self.bias
        elif self.kernel == "dynamic":
            # The kernel quantises its whole input with one scale and zero point (from its min and max).
            # Each row is scaled to peak 1 (and back after: the layer is linear), and a last row holding
            # -1 and 1 pins the range to [-1, 1]: every row (token) is quantised on its own, so a chat's
            # numbers do not depend on its other prompt tokens or the chats sharing a batched step.
            peak = rows.float().abs().amax(dim=-1, keepdim=True).clamp(min=1e-12)
            scaled = rows.float() / peak
            passes = [scaled]
            reduce = seven_bit_activations()
            if self.two_pass:  # what the first pass rounds away (steps of 2/255 in [-1, 1], 2/127 in 7 bits)
                half_levels = 63.5 if reduce else 127.5
                rest = scaled - torch.round(scaled * half_levels) / half_levels
                rest_peak = rest.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12)
                passes.append(rest / rest_peak)  # scaled to peak 1 itself
            both = torch.ops.quantized.linear_dynamic(torch.cat([*passes, self.range_row]), self.packed, reduce)
            n = rows.shape[0]
            out = both[:n] * peak
            if self.two_pass:
                out = out + both[n:2 * n] * (rest_peak * peak)
            if self.bias is not None:
                out = out + self.bias
        else:
            rows = rows.to(torch.bfloat16)
            if rows.shape[0] <= GEMV_MAX_ROWS:
                out = torch.ops.aten._weight_int8pack_mm(rows, self.weight, self.scale)
            else:
                out = nn.functional.linear(rows, self.weight.to(torch.bfloat16) * self.scale[:, None])
            if self.bias is not None:
                out = out + self.bias.to(out.dtype)
        return out.to(x.dtype).view(*x.shape[:-1], self.out_features)

    @classmethod
    def stacked(cls, parts: list[Int8Linear]) -> Int8Linear | None:
        """One blocks-kernel layer computing `parts` (q/k/v, or gate/up: the same input) as one product, so the
        input is quantised and the threads started once; the parts' weights become views into it (no extra
        memory). None where they cannot stack: another kernel, bias, mixed bits, or outputs not in whole
        groups of 16."""
        first = parts[0]
        if not all(p.kernel == "blocks" and p.bias is None and p.bits == first.bits and p.in_features == first.in_features
                   and p.out_features % int8_blocks.GROUP == 0 for p in parts):
            return None
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.in_features, layer.out_features, layer.kernel, layer.bits = (
            first.in_features, sum(p.out_features for p in parts), "blocks", first.bits)
        layer.two_pass, layer.bias = False, None
        layer.codes, layer.scales = torch.cat([p.codes for p in parts]), torch.cat([p.scales for p in parts])
        start = 0
        for part in parts:  # codes and scales are [group of 16 outputs, ...]
            groups = part.out_features // int8_blocks.GROUP
            part.codes, part.scales = layer.codes[start:start + groups], layer.scales[start:start + groups]
            start += groups
        return layer

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, int{self.bits} weights, "
                f"kernel={self.kernel}"
                + (", two-pass activations" if self.two_pass else ""))


@functools.cache
def seven_bit_activations() -> bool:
    """Whether the dynamic kernel must quantise activations to 7 bits (its reduce_range): on CPUs without VNNI
    (AVX2, e.g. AMD EPYC before Zen 4) fbgemm adds pairs of u8 x s8 products in 16 bits, which saturate at full
    range (measured: 64 full-range products gave 0.5 instead of 64). Asked of the kernel itself with products that
    saturate if it does; torch's own quantize_dynamic reduces the range on every x86 CPU."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the deprecation of quantised tensors
        codes = torch.full((16, 64), 127, dtype=torch.int8)
        weight = torch._make_per_channel_quantized_tensor(codes, torch.full((16,), 1 / 127, dtype=torch.double),
                                                          torch.zeros(16, dtype=torch.long), 0)
        rows = torch.ones(2, 64)
        rows[1] = -1.0
        got = torch.ops.quantized.linear_dynamic(rows, torch.ops.quantized.linear_prepack(weight, None), False)
    return not torch.allclose(got[:, 0], torch.tensor([64.0, -64.0]), rtol=0.02)


def _kernel_works(kernel: str) -> str | None:
    """None when `kernel` runs here and gives the right numbers, else why not."""
    try:
        linear = nn.Linear(64, 32)
        x = torch.randn(3, 64)
        got, want = Int8Linear(linear, kernel)(x), linear(x).detach()
    except (RuntimeError, AttributeError, NotImplementedError, OSError) as err:
        return f"{kernel}: {str(err).splitlines()[0]}"
    if not torch.allclose(got, want, rtol=0.05, atol=0.05 * want.abs().max().item()):
        return f"{kernel}: wrong results"
    return None


@functools.cache
def int8_kernel(prefer: str = "auto") -> str | None:
    """The int8 kernel this machine runs: 'blocks', 'dynamic', 'weight_only', or None.

    prefer: "auto" (blocks, else dynamic, else weight_only), or one of them (that one, else None)."""
    kernels = ["blocks", "dynamic", "weight_only"] if prefer == "auto" else [prefer]
    for kernel in kernels:
        if (problem := _kernel_works(kernel)) is None:
            return kernel
        log.info("int8 kernel %s", problem)
    return None


def resolve_quantize(quantize: str, device: torch.device, kernel: str = "auto") -> str:
    """'int8', 'int8_two_pass', 'int4' or 'none' for a request (one of them or 'auto' = int8 on the CPU). On a CUDA GPU
    'int8' / 'int4' (two_pass: 'int8') are weight-only layers (chat.weight_only)."""
    if quantize == "auto":
        quantize = "int8" if device.type == "cpu" else "none"
    if quantize == "int4" and device.type == "cpu" and (kernel not in ("auto", "blocks") or int8_kernel("blocks") is None):
        log.warning("int4 weights run on the blocks kernel only (chat.int8_blocks), not here: int8 weights instead")
        quantize = "int8"
    if quantize != "none" and device.type == "cuda":  # weight-only int8 / int4 layers (chat.weight_only)
        if importlib.util.find_spec("triton") is None:
            log.warning("int8 / int4 weights on %s need Triton: half-precision weights instead", device)
            return "none"
        return "int4" if quantize == "int4" else "int8"
    if quantize != "none" and device.type != "cpu":
        log.warning("int8 weights are a CPU / CUDA decode path; %s keeps its half-precision weights", device)
        return "none"
    if quantize != "none" and int8_kernel(kernel) is None:
        log.warning("int8 weights are off: no int8 kernel runs with torch %s here; decoding unquantised",
                    torch.__version__)
        return "none"
    return quantize


@torch.no_grad()
def quantize_int8(model: nn.Module, prefer: str = "auto", two_pass: bool = False, bits: int = 8) -> int:
    """Replace every ``nn.Linear`` of `model` (lm_head included) in place; returns how many.

    prefer: the int8 kernel, as for `int8_kernel`; two_pass: activations in two int8 passes (`Int8Linear`);
    bits: 4 = int4 weights (the blocks kernel; a layer it does not take keeps int8)."""
    kernel = int8_kernel(prefer)
    if kernel is None:
        raise RuntimeError(f"no int8 kernel runs with torch {torch.__version__} on this machine")
    if bits == 4 and kernel != "blocks":
        raise RuntimeError("int4 weights need the blocks kernel (chat.int8_blocks)")
    if two_pass and kernel != "dynamic":  # Int8Linear takes two passes on fbgemm's per-token scales only
        log.warning("two-pass activations apply to the dynamic kernel; the %s kernel quantises in one pass", kernel)
    targets = [(name, module) for name, module in model.named_modules() if type(module) is nn.Linear]
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        # a layer whose inputs do not come in whole blocks of 32 takes torch's per-channel kernel
        own = kernel if kernel != "blocks" or int8_blocks.fits(linear) else int8_kernel("dynamic") or "weight_only"
        setattr(model.get_submodule(parent_name), child, Int8Linear(linear, own, two_pass, bits))
    log.info("int%d weights (%s kernel) in %d linear layers", bits, kernel, len(targets))
    return len(targets)
