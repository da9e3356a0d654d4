"""Issue 21's last lever for the 1.8B one-chat decode, measured before it is built: a step's chain of weight reads as
ONE launch whose work items wait only for the data they read (dataflow), not at grid barriers.

Session 15 (benchmarks/grid_barrier_gpu.py) found a persistent kernel with a grid barrier a phase 3-30 % slower than a
kernel a phase in one CUDA graph: every program waits for the slowest of the phase, then its own static share of the
next. The single-kernel decoders that reach ~78 % of the bandwidth schedule differently, which is what this measures:

- every row block of every phase is a work item, taken in order by whichever CTA starts next (``--order ticket``: an
  atomic ticket, so an item only ever waits on items that running CTAs hold: no deadlock whatever the hardware's
  launch order; ``launch``: the CTA's index, as the hardware launches them);
- an item loads its first weight tile before it waits (weights never depend on the step), then waits until the
  input it reads is written: the whole previous phase (``phase``), or each BLOCK_K columns of it as it is about to read
  them (``slice``: the next phase starts on the first rows the previous one finished);
- the same item code launched a kernel a phase in one graph (``kernels``) is the baseline (and the output every form
  must equal bit for bit: same code, same summation order).

A "step" is the shape's products only (qkv, o_proj, gate/up, down a layer, each reading the one before), as in
grid_barrier_gpu. Each case prints its time, the weights' bytes over that time and the fraction of the copy
bandwidth measured in the same process.

    python3 -m benchmarks.dataflow_gpu [--shape 1.8b|7b] [--block-n 8 16] [--sleep-ns 200]
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from myassistant.benchmarks.grid_barrier_gpu import SHAPES, TIMEOUT_NS, Step, phases  # noqa: E402
from myassistant.benchmarks.l2_prefetch_gpu import _clock  # noqa: E402
from myassistant.chat import gemv_pick  # noqa: E402

FORMS = ("phase", "slice")  # what an item waits for: the whole previous phase, or each slice of it it reads


@triton.jit
def _seen(ptr, sleep_ns, ASM: tl.constexpr):
    """The counter at `ptr`, read with acquire semantics by one thread of the CTA (Triton's scalar atomic; the value
    reaches the others through shared memory), on a GPU after sleeping `sleep_ns`: hundreds of waiting CTAs would
    otherwise poll one L2 line back to back."""
    if ASM:
        zero = tl.inline_asm_elementwise("nanosleep.u32 $1;\nmov.u32 $0, 0;", "=r,r", [sleep_ns], dtype=tl.int32,
                                         is_pure=False, pack=1)
        ptr += zero  # (the read after the sleep)
    return tl.atomic_add(ptr, 0, sem="acquire", scope="gpu")


@triton.jit
def _wait(ptr, target, failed_ptr, sleep_ns, ASM: tl.constexpr):
    """Until the counter at `ptr` reaches `target` (acquire: what the items counted in wrote is then visible); on a GPU
    at most TIMEOUT_NS, then flagged in failed_ptr (a form that deadlocks reports it, it does not hang)."""
    seen = _seen(ptr, 0, ASM)
    if ASM:
        start = _clock(seen)
        now = start
        while (seen < target) & (now - start < TIMEOUT_NS):
            seen = _seen(ptr, sleep_ns, ASM)
            now = _clock(seen)
        if seen < target:
            tl.store(failed_ptr, 1)
    else:
        while seen < target:
            seen = _seen(ptr, sleep_ns, ASM)


@triton.jit
def _trip(acc, w, w_rows, x_ptr, done_ptr, failed_ptr, sleep_ns, p, ready, k, K, SLICES, WAIT: tl.constexpr,
          BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ASM: tl.constexpr):
    """One BLOCK_K trip of an item's row block: `w` is this trip's weight tile, already loaded; the next is loaded
    before the sums (in flight during them). WAIT: for the BLOCK_K input columns it reads to be written."""
    if WAIT:
        if not ready:
            _wait(done_ptr + (p - 1) * SLICES + 1 + k // BLOCK_K, BLOCK_K // BLOCK_N, failed_ptr, sleep_ns, ASM)
    cols = tl.arange(0, BLOCK_K)
    x = tl.load(x_ptr + k + cols, cache_modifier=".cg")  # other CTAs wrote it: past L1
    w_next = tl.load(w_rows + k + BLOCK_K, mask=k + BLOCK_K < K, other=0.0)
    return acc + w.to(tl.float32) * x.to(tl.float32)[None, :], w_next


@triton.jit
def _of_product(j, a, b, c, d):
    """a, b, c or d for the layer's product j (0-3)."""
    return tl.where(j == 0, a, tl.where(j == 1, b, tl.where(j == 2, c, d)))


@triton.jit
def _item(w_ptr, buf_ptr, done_ptr, failed_ptr, sleep_ns, t, MAXN, SLICES, N0: tl.constexpr, N1: tl.constexpr,
          N2: tl.constexpr, N3: tl.constexpr, K0: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr, K3: tl.constexpr,
          WAIT: tl.constexpr, SLICE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ASM: tl.constexpr):
    """Work item t of the step: BLOCK_N rows of one phase's product (layer t // items a layer, then qkv, o_proj,
    gate/up, down), y = W x in fp32 sums rounded to bf16; phase p reads buffer p and writes buffer p + 1. WAIT: for
    what it reads first (SLICE: each BLOCK_K columns as it gets to them); then it counts itself in."""
    C1: tl.constexpr = N0 // BLOCK_N
    C2: tl.constexpr = C1 + N1 // BLOCK_N
    C3: tl.constexpr = C2 + N2 // BLOCK_N
    ITEMS: tl.constexpr = C3 + N3 // BLOCK_N  # a layer's
    LAYER: tl.constexpr = N0 * K0 + N1 * K1 + N2 * K2 + N3 * K3  # a layer's weights
    layer = t // ITEMS
    r = t % ITEMS
    j = (r >= C1).to(tl.int32) + (r >= C2).to(tl.int32) + (r >= C3).to(tl.int32)  # which product of the layer
    n0 = (r - _of_product(j, 0, C1, C2, C3)) * BLOCK_N
    K = tl.multiple_of(_of_product(j, K0, K1, K2, K3), BLOCK_K)
    n_prev = _of_product(j, N3, N0, N1, N2)  # the rows the previous phase wrote
    offset = _of_product(j, 0, N0 * K0, N0 * K0 + N1 * K1, N0 * K0 + N1 * K1 + N2 * K2)  # its weights in the layer's
    p = layer * 4 + j
    rows = n0 + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_K)
    w_rows = w_ptr + (layer.to(tl.int64) * LAYER + offset) + rows[:, None].to(tl.int64) * K + cols[None, :]
    x_ptr = buf_ptr + p.to(tl.int64) * MAXN
    w = tl.load(w_rows)  # before any wait: weights never depend on the step
    # done[p]: [items of phase p done, then those of each BLOCK_K slice of its rows]; an acquire is an L2 round trip
    # that holds back the loads after it, so a slice item asks a slice only while the whole phase is not yet done
    ready = p == 0
    if WAIT:
        if p > 0:
            if SLICE:
                ready = _seen(done_ptr + (p - 1) * SLICES, 0, ASM) >= n_prev // BLOCK_N
            else:
                _wait(done_ptr + (p - 1) * SLICES, n_prev // BLOCK_N, failed_ptr, sleep_ns, ASM)
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    for k in range(0, K, BLOCK_K):
        acc, w = _trip(acc, w, w_rows, x_ptr, done_ptr, failed_ptr, sleep_ns, p, ready, k, K, SLICES, WAIT and SLICE,
                       BLOCK_N, BLOCK_K, ASM)
    tl.store(x_ptr + MAXN + rows, tl.sum(acc, 1).to(buf_ptr.dtype.element_ty))
    if WAIT:
        tl.debug_barrier()  # every thread's rows stored before the count says so
        if SLICE:  # (release each: a reader may take either)
            tl.atomic_add(done_ptr + p * SLICES + 1 + n0 // BLOCK_K, 1, sem="release", scope="gpu")
        tl.atomic_add(done_ptr + p * SLICES, 1, sem="release", scope="gpu")


@triton.jit
def _phase_kernel(w_ptr, buf_ptr, done_ptr, failed_ptr, first, MAXN, SLICES, N0: tl.constexpr, N1: tl.constexpr,
                  N2: tl.constexpr, N3: tl.constexpr, K0: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr,
                  K3: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ASM: tl.constexpr):
    """One phase's items (from `first`), one a program: the kernel-a-phase baseline."""
    _item(w_ptr, buf_ptr, done_ptr, failed_ptr, 0, first + tl.program_id(0), MAXN, SLICES, N0, N1, N2, N3, K0, K1, K2,
          K3, False, False, BLOCK_N, BLOCK_K, ASM)


@triton.jit
def _dataflow_kernel(w_ptr, buf_ptr, done_ptr, ticket_ptr, failed_ptr, sleep_ns, MAXN, SLICES, N0: tl.constexpr,
                     N1: tl.constexpr, N2: tl.constexpr, N3: tl.constexpr, K0: tl.constexpr, K1: tl.constexpr,
                     K2: tl.constexpr, K3: tl.constexpr, SLICE: tl.constexpr, TICKET: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, ASM: tl.constexpr):
    """Every item of the step in one launch, each CTA one item: the next ticket's, or its own index's."""
    if TICKET:
        t = tl.atomic_add(ticket_ptr, 1, sem="relaxed")
    else:
        t = tl.program_id(0)
    _item(w_ptr, buf_ptr, done_ptr, failed_ptr, sleep_ns, t, MAXN, SLICES, N0, N1, N2, N3, K0, K1, K2, K3, True, SLICE,
          BLOCK_N, BLOCK_K, ASM)


class Dataflow:
    """A Step's weights (grid_barrier_gpu's layout: phase after phase) with a buffer a phase, counters a phase and
    slice, and the launches of each form."""

    def __init__(self, step: Step, block_n: int, block_k: int) -> None:
        shape = step.shape
        assert len(shape) % 4 == 0 and shape == shape[:4] * (len(shape) // 4), "a layer's four products, repeated"
        assert all(n % block_n == 0 and k % block_k == 0 for n, k in shape)
        self.step, self.block_n, self.block_k = step, block_n, block_k
        self.sizes = dict(N0=shape[0][0], N1=shape[1][0], N2=shape[2][0], N3=shape[3][0], K0=shape[0][1],
                          K1=shape[1][1], K2=shape[2][1], K3=shape[3][1])
        self.items = [n // block_n for n, _ in shape]
        self.maxn, self.slices = step.maxn, 1 - (-step.maxn // block_k)  # a total, then the slices
        device = step.weights.device
        self.buf = torch.zeros((len(shape) + 1) * self.maxn, dtype=step.weights.dtype, device=device)
        self.buf[:self.maxn].copy_(step.x0)
        # the counters and the ticket, zeroed by one memset before each launch
        self.state = torch.zeros(len(shape) * self.slices + 1, dtype=torch.int32, device=device)
        self.failed = torch.zeros(1, dtype=torch.int32, device=device)
        self.asm = device.type == "cuda"

    def output(self) -> torch.Tensor:
        return self.buf[len(self.step.shape) * self.maxn:][:self.step.shape[-1][0]].clone()

    def kernels(self) -> None:
        first = 0
        for items in self.items:
            _phase_kernel[(items,)](self.step.weights, self.buf, self.state, self.failed, first, self.maxn,
                                    self.slices, BLOCK_N=self.block_n, BLOCK_K=self.block_k, ASM=self.asm,
                                    num_warps=4, **self.sizes)
            first += items

    def dataflow(self, slice_: bool, ticket: bool, sleep_ns: int = 200):
        self.state.zero_()
        return _dataflow_kernel[(sum(self.items),)](
            self.step.weights, self.buf, self.state, self.state[-1:], self.failed, sleep_ns, self.maxn, self.slices,
            SLICE=slice_, TICKET=ticket, BLOCK_N=self.block_n, BLOCK_K=self.block_k, ASM=self.asm, num_warps=4,
            **self.sizes)


def timed(flow: Dataflow, name: str, run, copy_bps: float, want: torch.Tensor | None) -> dict:
    """A form's step time in a graph of gemv_pick.REPEATS launches, and whether its output equals `want`."""
    kernel = run()  # compile
    torch.cuda.synchronize()
    flow.failed.zero_()
    flow.buf[flow.maxn:].zero_()
    run()
    torch.cuda.synchronize()
    out = flow.output()
    if flow.failed.item():
        return {"case": name, "wait_timed_out": True}
    us = gemv_pick.graph_ms(run) / gemv_pick.REPEATS * 1e3  # a step's weights are ~60x the L2: no flush needed
    tb = flow.step.bytes / us / 1e6
    return {"case": name, "step_us": round(us, 1), "tb_per_s": round(tb, 3),
            "of_copy_bandwidth": round(tb / (copy_bps / 1e12), 3), "wait_timed_out": False,
            "same_as_kernels": None if want is None else bool(torch.equal(out, want)),
            "registers": getattr(kernel, "n_regs", None)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="1.8b")
    parser.add_argument("--block-n", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--block-k", type=int, default=512)
    parser.add_argument("--order", choices=("ticket", "launch"), nargs="+", default=["ticket", "launch"])
    parser.add_argument("--sleep-ns", type=int, nargs="+", default=[200], help="a waiting CTA's sleep between polls")
    args = parser.parse_args(argv)
    from benchmarks.decode_gpu import copy_bandwidth

    copy_bps = copy_bandwidth()
    step = Step(phases(args.shape), "cuda")
    print(json.dumps({"case": "device", "name": torch.cuda.get_device_name(0), "triton": triton.__version__,
                      "copy_tb_per_s": round(copy_bps / 1e12, 3), "weights_gib": round(step.bytes / 2 ** 30, 3),
                      "phases": len(step.shape), "shape": args.shape}), flush=True)
    for block_n in args.block_n:
        flow = Dataflow(step, block_n, args.block_k)
        cfg = {"block_n": block_n, "block_k": args.block_k, "items": sum(flow.items)}
        base = timed(flow, "kernels", flow.kernels, copy_bps, None)
        want = flow.output()
        err = float((want.float() - step.reference().float()).abs().max())
        print(json.dumps({**base, **cfg, "max_abs_err_vs_fp32_chain": err}), flush=True)
        for form, order, sleep_ns in itertools.product(FORMS, args.order, args.sleep_ns):
            run = lambda form=form, order=order, ns=sleep_ns: flow.dataflow(  # noqa: E731
                form == "slice", order == "ticket", ns)
            print(json.dumps({**timed(flow, f"dataflow_{form}_{order}", run, copy_bps, want), **cfg,
                              "sleep_ns": sleep_ns}), flush=True)


if __name__ == "__main__":
    main()
