"""Issue 21's lever left, measured before it is built: does a decode step's chain of weight reads run closer to the
bandwidth limit as ONE persistent kernel whose phases meet at grid barriers than as a kernel a phase in a CUDA graph?

A "step" here is the 1.8B (or 7B) shape's matrix-vector products only, layer after layer: qkv, o_proj, gate/up, down
(each reading the previous one's output, so every phase depends on the one before, as in a real step). Every
variant runs the same row-block code (``_row_block``: BLOCK_N weight rows against the whole input, fp32 sums), so
what differs is only how the phases meet:

- ``kernels``: one launch a phase (grid = the phase's row blocks), the whole step captured in one graph;
- ``persistent``: one launch; SMs x --per-sm programs walk every phase's row blocks, then wait at a grid barrier
  (an atomic counter, spin-waited with a time limit so that a grid that is not co-resident fails, not hangs);
- ``+preload``: before the barrier, each program loads its first weight tile of the next phase into registers
  (weights never depend on the step), and starts the next phase with it;
- ``+l2``: before the barrier, each program asks the first --l2-kib KiB of its next row block into L2.

Each case prints the step's time, its weight bytes over that time and the fraction of a device copy's bandwidth
measured in the same process, and whether its output equals the ``kernels`` output bit for bit (same code, same
summation order). ``cublas``: the same chain as torch.mv calls, for scale.

    python3 -m benchmarks.grid_barrier_gpu [--shape 1.8b|7b] [--per-sm 1 2 3] [--block-k 512]

(ptxas for sm_90, Triton 3.9: the persistent kernel takes 168 registers a thread at BLOCK_K 512, 4 warps, so 3
programs fit on a multiprocessor; 247 with the preloaded tile, 2. A grid that does not fit is reported as
``barrier_timed_out``, after ~20 ms a phase.)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from myassistant.benchmarks.l2_prefetch_gpu import _clock  # noqa: E402 - the GPU's nanosecond timer
from myassistant.chat import gemv_pick  # noqa: E402

# (hidden, q + 2 kv width, intermediate, layers) of the model shapes
SHAPES = {"1.8b": (2048, 4096, 8192, 24), "7b": (4096, 6144, 14336, 32)}
TIMEOUT_NS = tl.constexpr(20_000_000)  # a barrier waited longer than this: the grid was not co-resident (flagged, not hung)


def phases(shape: str, layers: int | None = None) -> list[tuple[int, int]]:
    """(rows N, columns K) of each product of a step, in order: qkv, o_proj, [gate; up], down per layer."""
    hidden, qkv, inter, n_layers = SHAPES[shape]
    return [(qkv, hidden), (hidden, hidden), (2 * inter, hidden), (hidden, inter)] * (layers or n_layers)


@triton.jit
def _row_block(w_ptr, x_ptr, y_ptr, n0, K, w_first, HAVE_FIRST: tl.constexpr, BLOCK_N: tl.constexpr,
               BLOCK_K: tl.constexpr):
    """y[n0 : n0 + BLOCK_N] = W[n0 : n0 + BLOCK_N, :K] @ x[:K] (fp32 sums, rounded to y's dtype); ``w_first``: the
    first (BLOCK_N, BLOCK_K) weight tile, already loaded, when HAVE_FIRST. x is read past L1 (.cg): in the persistent
    kernel other programs wrote it."""
    rows = n0 + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
    start = 0
    if HAVE_FIRST:
        acc += w_first.to(tl.float32) * tl.load(x_ptr + cols, cache_modifier=".cg").to(tl.float32)[None, :]
        start = BLOCK_K
    for k in range(start, K, BLOCK_K):
        w = tl.load(w_ptr + rows[:, None].to(tl.int64) * K + k + cols[None, :])
        acc += w.to(tl.float32) * tl.load(x_ptr + k + cols, cache_modifier=".cg").to(tl.float32)[None, :]
    tl.store(y_ptr + rows, tl.sum(acc, 1).to(y_ptr.dtype.element_ty))


@triton.jit
def _phase(table_ptr, p):
    """Phase p's rows, columns and weight offset (a row of the int64 table), told to be multiples of 256 so that
    weight loads are 16-byte vectors (every shape's sizes are)."""
    return (tl.multiple_of(tl.load(table_ptr + 3 * p), 256), tl.multiple_of(tl.load(table_ptr + 3 * p + 1), 256),
            tl.multiple_of(tl.load(table_ptr + 3 * p + 2), 256))


@triton.jit
def _phase_kernel(w_ptr, buf_ptr, table_ptr, p, MAXN, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """One phase, one row block a program: phase p reads buf half p % 2 and writes the other half."""
    _, K, w_off = _phase(table_ptr, p)
    dummy = tl.zeros([BLOCK_N, BLOCK_K], w_ptr.dtype.element_ty)
    _row_block(w_ptr + w_off, buf_ptr + (p % 2) * MAXN, buf_ptr + ((p + 1) % 2) * MAXN, tl.program_id(0) * BLOCK_N,
               K, dummy, False, BLOCK_N, BLOCK_K)


@triton.jit
def _grid_barrier(counter_ptr, target, failed_ptr, TIMED: tl.constexpr):
    """Every program's writes so far are seen by every program after it: arrive (release), spin until `target`
    programs arrived (acquire). TIMED: give up after TIMEOUT_NS and flag it (no inline PTX in the interpreter)."""
    tl.debug_barrier()  # all of this program's threads stored their rows
    tl.atomic_add(counter_ptr, 1, sem="release", scope="gpu")
    seen = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
    if TIMED:
        start = _clock(seen)
        now = start
        while (seen < target) & (now - start < TIMEOUT_NS):
            seen = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
            now = _clock(seen)
        if seen < target:
            tl.store(failed_ptr, 1)
    else:
        while seen < target:
            seen = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
    tl.debug_barrier()


@triton.jit
def _persistent_kernel(w_ptr, buf_ptr, table_ptr, counter_ptr, failed_ptr, P, MAXN, BLOCK_N: tl.constexpr,
                       BLOCK_K: tl.constexpr, PRELOAD: tl.constexpr, L2_LINES: tl.constexpr, TIMED: tl.constexpr):
    """Every phase of the step: program g takes row blocks g, g + G, ... of a phase, then all meet at a barrier."""
    g, G = tl.program_id(0), tl.num_programs(0)
    rows, cols = tl.arange(0, BLOCK_N), tl.arange(0, BLOCK_K)
    N, K, w_off = _phase(table_ptr, 0)
    w_first = tl.zeros([BLOCK_N, BLOCK_K], w_ptr.dtype.element_ty)
    if PRELOAD:
        w_first = tl.load(w_ptr + w_off + (g * BLOCK_N + rows[:, None]).to(tl.int64) * K + cols[None, :],
                          mask=g * BLOCK_N + rows[:, None] < N, other=0.0)
    for p in range(P):
        x_ptr, y_ptr = buf_ptr + (p % 2) * MAXN, buf_ptr + ((p + 1) % 2) * MAXN
        if g * BLOCK_N < N:  # the first row block: with the preloaded tile
            _row_block(w_ptr + w_off, x_ptr, y_ptr, g * BLOCK_N, K, w_first, PRELOAD, BLOCK_N, BLOCK_K)
        for n0 in range((g + G) * BLOCK_N, N, G * BLOCK_N):
            _row_block(w_ptr + w_off, x_ptr, y_ptr, n0, K, w_first, False, BLOCK_N, BLOCK_K)
        if p + 1 < P:  # the next phase's weights do not depend on this phase: ask for them before waiting
            N, K, w_off = _phase(table_ptr, p + 1)
            first = w_ptr + w_off + (g * BLOCK_N).to(tl.int64) * K
            if PRELOAD:
                w_first = tl.load(first + rows[:, None].to(tl.int64) * K + cols[None, :],
                                  mask=g * BLOCK_N + rows[:, None] < N, other=0.0)
            if L2_LINES > 0:  # (a constexpr test of its own: Triton 3.6 builds arange(0, 0) under a runtime `&`)
                if g * BLOCK_N < N:  # (a prefetch is only a hint, but not past the weights' end)
                    lines = tl.minimum(tl.arange(0, L2_LINES), (BLOCK_N * K * 2) // 128 - 1)
                    tl.inline_asm_elementwise("prefetch.global.L2 [$1]; mov.u32 $0, 0;", "=r,l",
                                              [first.to(tl.pointer_type(tl.uint8)) + lines.to(tl.int64) * 128],
                                              dtype=tl.int32, is_pure=False, pack=1)
        _grid_barrier(counter_ptr, (p + 1) * G, failed_ptr, TIMED)


def warps(block_k: int) -> int:
    """Warps a program: 64 fp32 sums a thread for BLOCK_N 16, whatever BLOCK_K (room for a preloaded tile)."""
    return max(4, block_k // 128)


class Step:
    """A step's weights (one bf16 buffer), its phase table and the two halves of the activation buffer."""

    def __init__(self, shape: list[tuple[int, int]], device: str, seed: int = 0):
        gen = torch.Generator(device=device).manual_seed(seed)
        sizes = [n * k for n, k in shape]
        self.weights = torch.empty(sum(sizes), dtype=torch.bfloat16, device=device)
        offsets, at = [], 0
        for (n, k), size in zip(shape, sizes):  # variance kept through the chain: N(0, 1/k) weights
            self.weights[at:at + size] = torch.randn(size, generator=gen, device=device) / k ** 0.5
            offsets.append(at)
            at += size
        self.table = torch.tensor([[n, k, o] for (n, k), o in zip(shape, offsets)], dtype=torch.int64, device=device)
        self.offsets = offsets  # host copy: a graph capture cannot read the device table
        self.shape, self.maxn = shape, max(max(n, k) for n, k in shape)
        self.buf = torch.zeros(2 * self.maxn, dtype=torch.bfloat16, device=device)
        self.x0 = torch.randn(self.maxn, generator=gen, device=device).to(torch.bfloat16)
        self.counter = torch.zeros(1, dtype=torch.int32, device=device)
        self.failed = torch.zeros(1, dtype=torch.int32, device=device)

    @property
    def bytes(self) -> int:
        return self.weights.numel() * 2

    def output(self) -> torch.Tensor:
        return self.buf[(len(self.shape) % 2) * self.maxn:][:self.shape[-1][0]].clone()

    def start(self) -> None:
        self.buf[:self.maxn].copy_(self.x0)

    def kernels(self, block_n: int, block_k: int) -> None:
        self.start()
        for p, (n, _) in enumerate(self.shape):
            _phase_kernel[(n // block_n,)](self.weights, self.buf, self.table, p, self.maxn, BLOCK_N=block_n,
                                           BLOCK_K=block_k, num_warps=warps(block_k))

    def persistent(self, programs: int, block_n: int, block_k: int, preload: bool = False, l2_kib: int = 0,
                   timed: bool = True):
        """Launch the step as one kernel; returns Triton's compiled kernel (its registers tell how many fit)."""
        self.start()
        self.counter.zero_()
        return _persistent_kernel[(programs,)](self.weights, self.buf, self.table, self.counter, self.failed, len(self.shape),
                                        self.maxn, BLOCK_N=block_n, BLOCK_K=block_k, PRELOAD=preload,
                                        L2_LINES=l2_kib * 8, TIMED=timed, num_warps=warps(block_k))

    def cublas(self) -> None:
        self.start()
        for p, (n, k) in enumerate(self.shape):
            at = self.offsets[p]
            x = self.buf[(p % 2) * self.maxn:][:k]
            torch.mv(self.weights[at:at + n * k].view(n, k), x, out=self.buf[((p + 1) % 2) * self.maxn:][:n])

    def reference(self) -> torch.Tensor:
        """The chain in float32 from the bf16 weights, each output rounded to bf16 as the kernels do."""
        x = self.x0.float()
        for p, (n, k) in enumerate(self.shape):
            at = self.offsets[p]
            x = (self.weights[at:at + n * k].view(n, k).float() @ x[:k]).to(torch.bfloat16).float()
        return x.to(torch.bfloat16)


def timed_case(step: Step, name: str, run, copy_bps: float, want: torch.Tensor | None) -> dict:
    kernel = run()  # compile
    torch.cuda.synchronize()
    regs = getattr(kernel, "n_regs", None)
    step.failed.zero_()
    run()
    torch.cuda.synchronize()
    out = step.output()
    if step.failed.item():  # not all programs fit on the GPU at once: every barrier waits out its time limit
        return {"case": name, "barrier_timed_out": True, "registers": regs}
    us = gemv_pick.graph_ms(run) / gemv_pick.REPEATS * 1e3  # a step's weights are ~60x the L2: no flush needed
    return {"case": name, "step_us": round(us, 1), "tb_per_s": round(step.bytes / us / 1e6, 3),
            "of_copy_bandwidth": round(step.bytes / us / 1e6 / (copy_bps / 1e12), 3),
            "same_as_kernels": None if want is None else bool(torch.equal(out, want)), "barrier_timed_out": False,
            "registers": regs}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="1.8b")
    parser.add_argument("--per-sm", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--block-n", type=int, default=16)
    parser.add_argument("--block-k", type=int, nargs="+", default=[512])
    parser.add_argument("--l2-kib", type=int, default=16)
    args = parser.parse_args(argv)
    from benchmarks.decode_gpu import copy_bandwidth

    copy_bps = copy_bandwidth()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    step = Step(phases(args.shape), "cuda")
    print(json.dumps({"case": "device", "name": torch.cuda.get_device_name(0), "triton": triton.__version__,
                      "copy_tb_per_s": round(copy_bps / 1e12, 3), "weights_gib": round(step.bytes / 2 ** 30, 3),
                      "phases": len(step.shape), "shape": args.shape}), flush=True)
    print(json.dumps(timed_case(step, "cublas", step.cublas, copy_bps, None)), flush=True)
    for block_k in args.block_k:
        cfg = {"block_n": args.block_n, "block_k": block_k}
        base = timed_case(step, "kernels", lambda: step.kernels(args.block_n, block_k), copy_bps, None)
        want = step.output()
        ref_err = float((want.float() - step.reference().float()).abs().max())
        print(json.dumps({**base, **cfg, "max_abs_err_vs_fp32_chain": ref_err}), flush=True)
        for per_sm in args.per_sm:
            for name, kw in (("persistent", {}), ("persistent+preload", {"preload": True}),
                             ("persistent+l2", {"l2_kib": args.l2_kib})):
                run = lambda kw=kw, per_sm=per_sm: step.persistent(  # noqa: E731
                    sms * per_sm, args.block_n, block_k, **kw)
                print(json.dumps({**timed_case(step, name, run, copy_bps, want), **cfg, "programs": sms * per_sm}),
                      flush=True)


if __name__ == "__main__":
    main()
