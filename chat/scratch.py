"""Per-device scratch tensors of the decode kernels (split-K workspaces, arrival counters, dequantised matrices).

A CUDA graph reads the tensors it was captured with, so a scratch tensor is grown by replacing it, and the one it
replaces stays allocated for the graphs that use it. Every shape runs eagerly before its graph is captured, so a
capture finds its scratch large enough; one that does not gets a tensor of the graph's own memory (zeroed inside
the graph where `zeroed`), or an error where the caller says growing there is a mistake (`in_capture=False`).
"""
from __future__ import annotations

import torch

_current: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}
_kept: dict[str, list[torch.Tensor]] = {}  # every tensor made under a name, the replaced ones included


def scratch(name: str, device: torch.device, dtype: torch.dtype, numel: int, zeroed: bool = False,
            in_capture: bool = True) -> torch.Tensor:
    """At least `numel` elements of `dtype` on `device` kept under `name`: the same tensor while it is large enough,
    else a new one (`zeroed`: of zeros, as counters that every launch leaves at zero need)."""
    key = (name, device, dtype)
    tensor = _current.get(key)
    if tensor is None or tensor.numel() < numel:
        if not in_capture and device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(f"{name}: scratch too small inside a CUDA graph capture")
        tensor = _current[key] = (torch.zeros if zeroed else torch.empty)(numel, dtype=dtype, device=device)
        _kept.setdefault(name, []).append(tensor)
    return tensor


def release(name: str) -> None:
    """Drop every tensor kept under `name` (once no graph captured with them is left)."""
    for key in [key for key in _current if key[0] == name]:
        del _current[key]
    _kept.pop(name, None)
