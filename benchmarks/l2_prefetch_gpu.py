"""Two questions under issue 21's decode step, answered on the GPU itself (H100 / H200, CUDA graphs as a step runs):

- ``pdl_overlap``: does a kernel launched with programmatic dependent launch (PDL) start before the kernel it
  follows has finished, in a captured graph and eagerly? Kernel A (one program) releases its dependents, then spins
  for --spin-us; kernel B (launched with PDL) stores the GPU clock when it starts, before its wait, and after it.
  ``b_started_before_a_ended_us`` > 0: B's programs ran while A still did (PDL active).
- ``l2_prefetch``: does asking a weight into L2 (``prefetch.global.L2``) make the next kernel's read of it faster?
  A read of --mib MiB (every line once, ~4 programs a multiprocessor) timed in graphs after a write that flushes the L2: cold; after the prefetch kernel and a spin that
  gives it time; right after the prefetch kernel; after a plain read of the same bytes and the spin (the L2 at its
  best). Each less the same graph without the timed read.

    python3 -m benchmarks.l2_prefetch_gpu            # prints one JSON line a case
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
from myassistant.chat import gemv_pick  # noqa: E402


@triton.jit
def _clock(dummy):
    return tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l,r", [dummy], dtype=tl.int64, is_pure=False,
                                     pack=1)


@triton.jit
def _spin(out_ptr, NS: tl.constexpr, RELEASE: tl.constexpr):
    """Program 0 spins NS ns of GPU clock and stores the time it ended (RELEASE: its dependents released first)."""
    if RELEASE:
        tl.extra.cuda.gdc_launch_dependents()
    start = _clock(tl.program_id(0))
    now = start
    while now - start < NS:
        now = _clock(tl.program_id(0))
    tl.store(out_ptr, now)


@triton.jit
def _stamp(out_ptr):
    """The GPU clock when the program starts (before its PDL wait) and after the wait."""
    tl.store(out_ptr + 1, _clock(tl.program_id(0)))
    tl.extra.cuda.gdc_wait()
    tl.store(out_ptr + 2, _clock(tl.program_id(0)))


@triton.jit
def _read(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    """Every element of x once (a grid-stride loop), summed: a plain streaming read."""
    acc = tl.zeros([BLOCK], tl.float32)
    for start in range(tl.program_id(0) * BLOCK, n, tl.num_programs(0) * BLOCK):
        acc += tl.load(x_ptr + start + tl.arange(0, BLOCK), mask=start + tl.arange(0, BLOCK) < n, other=0.0)
    tl.store(out_ptr + tl.program_id(0), tl.sum(acc, 0))


@triton.jit
def _prefetch(x_ptr, lines, LINES: tl.constexpr):
    """Program p asks lines p * LINES ... of x (128 bytes each) into L2."""
    base = x_ptr.to(tl.pointer_type(tl.uint8))
    for j in range(0, LINES, 128):
        line = tl.minimum(tl.program_id(0) * LINES + j + tl.arange(0, 128), lines - 1)
        tl.inline_asm_elementwise("prefetch.global.L2 [$1]; mov.u32 $0, 0;", "=r,l", [base + line.to(tl.int64) * 128],
                                  dtype=tl.int32, is_pure=False, pack=1)


def pdl_overlap(spin_us: float) -> dict:
    stamps = torch.zeros(3, dtype=torch.int64, device="cuda")

    def pair():
        _spin[(1,)](stamps, NS=int(spin_us * 1000), RELEASE=True)
        _stamp[(1,)](stamps, launch_pdl=True)

    pair()  # compile
    pair()
    torch.cuda.synchronize()
    eager = (stamps[0] - stamps[1]).item() / 1e3
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        pair()
    graph.replay()
    torch.cuda.synchronize()
    a_end, b_start, b_waited = stamps.tolist()
    return {"b_started_before_a_ended_us": round((a_end - b_start) / 1e3, 2), "b_waited_until_after_a_us":
            round((b_waited - a_end) / 1e3, 2), "eager_b_started_before_a_ended_us": round(eager, 2),
            "spin_us": spin_us}


def l2_prefetch(mib: int, spin_us: float) -> dict:
    x = torch.randn(mib << 18, device="cuda")  # fp32: mib MiB
    sums = torch.empty(4 * 132 * 4, device="cuda")
    flush = torch.empty(gemv_pick.FLUSH_BYTES, dtype=torch.uint8, device="cuda")
    end = torch.empty(1, dtype=torch.int64, device="cuda")
    lines = x.numel() * 4 // 128
    programs = 4 * torch.cuda.get_device_properties(0).multi_processor_count
    per_program = -(-(-(-lines // programs)) // 128) * 128  # lines a program asks for, whole rounds of 128

    def read():
        _read[(programs,)](x, sums, x.numel(), BLOCK=1024)

    def prefetch():
        _prefetch[(programs,)](x, lines, LINES=per_program)

    def spin():
        _spin[(1,)](end, NS=int(spin_us * 1000), RELEASE=False)

    def us(*before):
        """µs of `read` after the kernels `before` (the L2 flushed first), less the same graph without it."""
        def with_read():
            flush.zero_()
            for f in before:
                f()
            read()

        def without():
            flush.zero_()
            for f in before:
                f()
        return round((gemv_pick.graph_ms(with_read) - gemv_pick.graph_ms(without)) / gemv_pick.REPEATS * 1e3, 2)

    read(), prefetch(), spin()  # compile
    cold = us()
    return {"mib": mib, "read_cold_us": cold, "after_prefetch_and_spin_us": us(prefetch, spin),
            "right_after_prefetch_us": us(prefetch), "after_a_read_and_spin_us": us(read, spin),
            "cold_tb_per_s": round((mib << 20) / cold / 1e6, 3), "spin_us": spin_us}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spin-us", type=float, default=30.0)
    parser.add_argument("--mib", type=int, nargs="+", default=[8, 24])
    args = parser.parse_args(argv)
    print(json.dumps({"case": "device", "name": torch.cuda.get_device_name(0), "triton": triton.__version__}))
    print(json.dumps({"case": "pdl_overlap", **pdl_overlap(args.spin_us)}), flush=True)
    for mib in args.mib:
        print(json.dumps({"case": "l2_prefetch", **l2_prefetch(mib, args.spin_us)}), flush=True)


if __name__ == "__main__":
    main()
