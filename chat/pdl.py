"""Programmatic dependent launch (PDL, Hopper and later) for the decode step's Triton kernels: opt-in (`ENABLED`).

A decode step is ~120 dependent kernels (chat.gemv's products, chat.attention's one kernel a layer) replayed in a CUDA
graph; each pays a fixed ~4-5 us of launch, first-byte latency and tail besides its reads (benchmarks/README_decode.md).
Launched with PDL (the launch attribute "programmatic stream serialization"; stream capture keeps it as a
programmatic edge of the graph, CUDA 12.3+), a kernel may start while the one before it still runs. Its programs then:

1. `griddepcontrol.launch_dependents`: let the next kernel launch too (it starts once every program of this one has
   got here or exited; its own programs wait as this one's do, so at most the waiting programs take SM slots);
2. prefetch the first `PREFETCH_BYTES` of their weight slice into L2 (weights are never written by a decode step:
   reading them before the wait is safe), while the previous kernel's tail still runs;
3. `griddepcontrol.wait`: block until the previous kernel has finished and its writes are visible. Everything else
   (activations, norm input, the split-K workspace and counters, caches, outputs) is read and written after it.

The wait makes the chain safe transitively: a kernel finishes only after every one of its programs passed its wait,
so after the wait every earlier kernel has finished, and no write of this kernel can race a read of any earlier one
(the allocator may hand a graph's later kernel the memory of an earlier one's input). Kernels launched without PDL
(torch's) wait for the whole previous kernel as always; the instructions are no-ops in a kernel launched plainly.
Waiting programs cannot starve the kernel they wait on: the next kernel launches only once every program of this one
is running or done, and no program here waits on another of its kernel (split K and attention chunks are combined by
the last to arrive, chat.gemv / chat.attention).

Off by default: an earlier form (each product prefetching two K tiles into L2, the dependents released after the wait,
attention and rotary still separate plain kernels between the products) measured 1.618 ms a step against 1.592 ms
without (H200, 2026-12-01). This form (every kernel of a layer launched with PDL, released before the wait, a larger
prefetch) is not measured yet: benchmarks/README_decode.md says how. Triton's interpreter has no inline PTX: there the
kernels run the PDL path's address arithmetic without the instructions (`ASM`), so CPU tests still cover its code.
"""
from __future__ import annotations

import functools

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: nothing launches a Triton kernel
    triton = None

ENABLED = False  # launch the decode step's Triton kernels with PDL where the GPU has it (sm_90+)
PREFETCH_BYTES = 64 << 10  # of its weight slice a program asks into L2 before waiting (0: none)
EARLY_RELEASE = True  # release the next kernel before the wait (False: right after it, as the earlier form did)


def active(device: torch.device) -> bool:
    """Whether kernels on `device` launch with PDL: `ENABLED`, CUDA, compute capability 9.0 or later."""
    return ENABLED and device.type == "cuda" and _hopper_or_later(device.index)


@functools.lru_cache(maxsize=None)
def _hopper_or_later(index: int | None) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


def launch_options(device: torch.device) -> dict:
    """A kernel's PDL switches: the constexprs `PDL` (the prologue's code), `ASM` (its instructions: not under
    Triton's interpreter, which runs on the CPU and has no inline PTX) and `EARLY_RELEASE`, and on a GPU with PDL
    Triton's `launch_pdl`."""
    gpu = active(device)
    return {"PDL": gpu or (ENABLED and device.type == "cpu"), "ASM": gpu, "EARLY_RELEASE": EARLY_RELEASE,
            **({"launch_pdl": True} if gpu else {})}


def prefetch_columns(slice_columns: int, rows: int, element_bytes: int) -> int:
    """Columns of each of `rows` weight rows (of the `slice_columns` a program reads) that fit in PREFETCH_BYTES: a
    power of two (Triton's ranges) of at least a 128-byte line, else 0 (none)."""
    fit = min(slice_columns, PREFETCH_BYTES // max(rows * element_bytes, 1))
    columns = 1 << (fit.bit_length() - 1) if fit > 0 else 0
    return columns if columns * element_bytes >= 128 else 0


if triton is not None:
    @triton.jit
    def _prefetch_l2(ptrs, ASM: tl.constexpr):
        """Ask for the lines at `ptrs` to be loaded into L2 (a hint: nothing waits for it)."""
        if ASM:
            tl.inline_asm_elementwise("prefetch.global.L2 [$1]; mov.u32 $0, 0;", "=r,l", [ptrs], dtype=tl.int32,
                                      is_pure=False, pack=1)

    @triton.jit
    def _release(ASM: tl.constexpr):
        if ASM:
            tl.extra.cuda.gdc_launch_dependents()

    @triton.jit
    def _wait(ASM: tl.constexpr):
        if ASM:
            tl.extra.cuda.gdc_wait()

    @triton.jit
    def _prefetch(w_ptr, rows, stride_wn, first, ASM: tl.constexpr, COLUMNS: tl.constexpr):
        """The first COLUMNS elements from `first` of the weight `rows` into L2, a line at a time."""
        LINE: tl.constexpr = 1024 // w_ptr.dtype.element_ty.primitive_bitwidth  # elements a 128-byte line
        lines = tl.arange(0, COLUMNS // LINE) * LINE
        _prefetch_l2(w_ptr + rows[:, None] * stride_wn + first + lines[None, :], ASM)

    @triton.jit
    def prologue(w_ptr, rows, N, stride_wn, first, ASM: tl.constexpr, EARLY_RELEASE: tl.constexpr,
                 COLUMNS: tl.constexpr, GATED: tl.constexpr):
        """A kernel's PDL prologue (steps 1-3 of the module's text): COLUMNS of the weight `rows` from `first`
        prefetched (GATED: rows + N too; COLUMNS 0: none); without weights, `w_ptr` unread and COLUMNS 0."""
        if EARLY_RELEASE:
            _release(ASM)
        if COLUMNS > 0:
            _prefetch(w_ptr, rows, stride_wn, first, ASM, COLUMNS)
            if GATED:
                _prefetch(w_ptr, rows + N, stride_wn, first, ASM, COLUMNS)
        _wait(ASM)
        if not EARLY_RELEASE:
            _release(ASM)
