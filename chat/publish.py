"""A decode step's tokens to the host through a kernel, not the copy engine.

The scheduler reads each step's tokens from pinned host memory. Copied there by ``Tensor.copy_`` between two
graph replays, the hand-over to the copy engine and back left an H200 idle ~17 us a token (1.2 % of the
1.8B's step; `benchmarks.decode_profile --gaps-only`, "idle_by_neighbours"). A one-program kernel on the
compute stream stores them straight into the pinned buffer instead (CUDA maps pinned memory into the GPU's
address space), a couple of microseconds between the graphs. Without Triton, or where the store does not
arrive as written (checked on the first call), ``copy_`` stays.
"""
from __future__ import annotations

import logging

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # a CPU-only install: the copy
    triton = None

log = logging.getLogger(__name__)
_works: bool | None = None  # None: not tried yet

if triton is not None:
    @triton.jit
    def _store(src_ptr, dst_ptr, n, BLOCK: tl.constexpr):
        i = tl.arange(0, BLOCK)
        tl.store(dst_ptr + i, tl.load(src_ptr + i, mask=i < n), mask=i < n)


def to_host(tokens: torch.Tensor, host: torch.Tensor) -> None:
    """``host[:] = tokens`` queued on the current stream: `tokens` a contiguous CUDA tensor, `host` pinned, as long.
    Read `host` after an event recorded behind this call."""
    global _works
    if _works is False or triton is None:
        host.copy_(tokens, non_blocking=True)
        return
    try:
        _store[(1,)](tokens, host, tokens.numel(), BLOCK=triton.next_power_of_2(max(tokens.numel(), 16)))
    except Exception as err:  # noqa: BLE001 - a driver or Triton that cannot address host memory: the copy
        log.info("tokens to the host by copy (%s)", err)
        _works = False
        host.copy_(tokens, non_blocking=True)
        return
    if _works is None:  # the first call: the values must be there
        torch.cuda.current_stream().synchronize()
        _works = host.tolist() == tokens.tolist()
        if not _works:
            log.info("tokens to the host by copy (the kernel's store did not arrive)")
            host.copy_(tokens)
