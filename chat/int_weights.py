"""Weight-only int8 / int4 matrices: the formats chat.gemv's kernels read and chat.weight_only serves.

int8: one signed byte a weight, a float32 scale per output row. int4: two weights a byte, stored + 8, a float32
scale per row and GROUP columns; byte j of a group holds its column j in the low nibble and column GROUP/2 + j in
the high one, so a kernel's two nibble tiles meet contiguous columns of the input. Round to nearest, symmetric.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

GROUP = 128  # int4 columns sharing a scale


class QuantWeight(NamedTuple):
    """A weight-only quantised [N, K] matrix: int8 `q` [N, K] with a scale per row (`scale` [N]), or int4 packed two
    to a byte (`q` uint8 [N, K/2], stored + 8) with a scale per row and group of `GROUP` columns (`scale`
    [N, K/GROUP]): byte j of a group holds its column j in the low nibble and column GROUP/2 + j in the high one,
    so a kernel's two nibble tiles meet contiguous columns of x. Rows can be sliced like the matrix's."""

    q: torch.Tensor
    scale: torch.Tensor


def quantize(weight: torch.Tensor, bits: int) -> QuantWeight:
    """Symmetric round-to-nearest weight-only quantisation of `weight` [N, K] to 8 or 4 bits (scales in fp32)."""
    w = weight.float()
    if bits == 8:
        scale = w.abs().amax(1).clamp(min=1e-12) / 127
        return QuantWeight(torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8), scale)
    assert bits == 4 and w.shape[1] % GROUP == 0, "int4 needs K a multiple of the group size"
    groups = w.reshape(w.shape[0], -1, GROUP)
    scale = groups.abs().amax(2).clamp(min=1e-12) / 7
    q = (torch.round(groups / scale[..., None]).clamp(-8, 7) + 8).to(torch.uint8)
    return QuantWeight((q[..., :GROUP // 2] | (q[..., GROUP // 2:] << 4)).reshape(w.shape[0], -1), scale)


def dequantize(weight: QuantWeight, dtype: torch.dtype) -> torch.Tensor:
    """The [N, K] matrix `weight` stands for, in `dtype` (the references use it; chat.weight_only has the kernel)."""
    q, scale = weight
    if q.dtype == torch.int8:
        return (q.float() * scale[:, None]).to(dtype)
    groups = q.reshape(q.shape[0], -1, GROUP // 2)
    values = torch.cat([groups & 15, groups >> 4], -1).float() - 8
    return (values * scale[..., None]).reshape(q.shape[0], -1).to(dtype)
