"""A decode step's last kernel: the rows' next tokens become their inputs and reach the host; live rows advance.

The scheduler reads each step's tokens from pinned host memory. Copied there by ``Tensor.copy_`` after each graph
replay, the hand-over to the copy engine and back left an H200 idle ~17 us a token between two steps
(`benchmarks.decode_profile --gaps-only`, "idle_by_neighbours"), and the copy was one more host launch a step.
Here the step's graph ends in one kernel that stores the tokens as the next inputs, advances the live rows'
positions and stores the tokens straight into the pinned buffer (CUDA maps pinned memory into the GPU's address
space): slot ``count % 2`` of it, `count` a device counter the kernel advances, so the host reads step k's slot
(k % 2, its own count of launches) while step k + 1 writes the other. (A kernel of its own launched after each
replay measured no faster in session 19: the host's launch cost what the copy engine's hand-over had.)
Without Triton, or where its store does not arrive (`handoff_works`), the tokens are copied after the replay.
"""
from __future__ import annotations

import logging

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # a CPU-only install
    triton = None

log = logging.getLogger(__name__)

if triton is not None:
    @triton.jit
    def _tail_kernel(next_ptr, tokens_ptr, positions_ptr, live_ptr, host_ptr, count_ptr, b, rows,
                     BLOCK: tl.constexpr):
        i = tl.arange(0, BLOCK)
        ok = i < b
        token = tl.load(next_ptr + i, mask=ok)
        count = tl.load(count_ptr)
        tl.store(tokens_ptr + i, token, mask=ok)
        tl.store(host_ptr + (count % 2) * rows + i, token, mask=ok)
        tl.store(positions_ptr + i, tl.load(positions_ptr + i, mask=ok) + tl.load(live_ptr + i, mask=ok), mask=ok)
        tl.store(count_ptr, count + 1)


def finish_step(next_tokens: torch.Tensor, tokens: torch.Tensor, positions: torch.Tensor, live: torch.Tensor,
                host: torch.Tensor | None, count: torch.Tensor | None) -> None:
    """``tokens[:b] = next_tokens; positions[:b] += live[:b]`` for b = len(next_tokens) (all int64 on one device),
    and with `host` (pinned [2, rows]) and `count` (a device int64 [1]) also ``host[count % 2, :b] = next_tokens;
    count += 1``, all in one kernel (a CUDA graph holds it)."""
    b = next_tokens.shape[0]
    if host is None:
        tokens[:b].copy_(next_tokens)
        positions[:b].add_(live[:b])
        return
    _tail_kernel[(1,)](next_tokens, tokens, positions, live, host, count, b, host.shape[1],
                       BLOCK=triton.next_power_of_2(max(b, 16)))


def handoff_works(device: torch.device, rows: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A pinned host buffer [2, rows] and a device counter that `finish_step` stores into, or None where that
    cannot run (no Triton, a driver or Triton that cannot address host memory, stores that do not arrive)."""
    if triton is None or device.type != "cuda":
        return None
    host = torch.zeros(2, rows, dtype=torch.long, pin_memory=True)
    count = torch.zeros(1, dtype=torch.long, device=device)
    probe = torch.arange(1, rows + 1, device=device)
    scratch = [torch.zeros(rows, dtype=torch.long, device=device) for _ in range(3)]
    try:
        for _ in range(2):  # both slots
            finish_step(probe, *scratch, host, count)
        torch.cuda.synchronize(device)
    except Exception as err:  # noqa: BLE001 - a store into host memory refused: the copy
        log.info("decode tokens reach the host by copy (%s)", err)
        return None
    if host.tolist() != [probe.tolist()] * 2 or int(count) != 2:
        log.info("decode tokens reach the host by copy (the kernel's stores did not arrive)")
        return None
    host.zero_()
    count.zero_()
    return host, count
