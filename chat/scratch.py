"""Per-device scratch tensors of the decode kernels (split-K workspaces, arrival counters, dequantised matrices).

A CUDA graph reads the tensors it was captured with, so a scratch tensor is grown by replacing it, and the one it
replaces stays allocated for the graphs that use it. A scratch tensor is never grown inside a capture: what a
capture allocates comes from the memory pool its graph shares with the other decode graphs, where the memory a
capture frees is handed to the next capture's temporaries, so a buffer kept from one capture is overwritten by
other graphs' replays (a sampling counter was, and a row's draw read garbage). Every shape runs eagerly before
its graph is captured, so growing inside a capture is an error, which the capture's caller turns into decoding
without that graph.
"""
from __future__ import annotations

import torch

_current: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}
_kept: dict[str, list[torch.Tensor]] = {}  # every tensor made under a name, the replaced ones included


def scratch(name: str, device: torch.device, dtype: torch.dtype, numel: int, zeroed: bool = False) -> torch.Tensor:
    """At least `numel` elements of `dtype` on `device` kept under `name`: the same tensor while it is large enough,
    else a new one (`zeroed`: of zeros, as counters that every launch leaves at zero need)."""
    key = (name, device, dtype)
    tensor = _current.get(key)
    if tensor is None or tensor.numel() < numel:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(f"{name}: scratch buffer too small inside a CUDA graph capture (its shape did not "
                               "run before the capture)")
        tensor = _current[key] = (torch.zeros if zeroed else torch.empty)(numel, dtype=dtype, device=device)
        _kept.setdefault(name, []).append(tensor)
    return tensor


def release(name: str) -> None:
    """Drop every tensor kept under `name` (once no graph captured with them is left)."""
    for key in [key for key in _current if key[0] == name]:
        del _current[key]
    _kept.pop(name, None)
