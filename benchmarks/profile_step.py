"""Where the GPU time of a training step goes: kernel time by kind, one JSON line per case.

    python -m benchmarks.profile_step ours_qlora2_d0_graph_adam8_keep [...]   (SHAPE=1_8b | 7b)
    PEER_DIR=.cache/i21_peer python -m benchmarks.profile_step unsloth_qlora2   (on the peer's site-packages)

Ours: the case as benchmarks/train_gpu.py builds and times it, its timed steps under torch.profiler (the
kernels of a CUDA graph's replay are recorded one by one). The peer: gpu_unsloth_peer.py's own case, its
timed steps under the profiler (entered and left where it reads its clock). Each prints the case's row, then
a ``profile`` row: wall and summed kernel time a step (what a graph of the step cannot go below), kernels a
step, the GPU's idle time (``idle_table``), and the kernels that take most of it grouped by name (TOP=25 of
them: ms and launches a step). The case's row is printed with ``profiled_case`` for ``case`` (timed under the
profiler: ``train_gpu --report`` leaves it out of the ratios).
"""
from __future__ import annotations

import collections
import contextlib
import importlib.util
import io
import json
import os
import re
import sys
import time
from pathlib import Path

import torch

CUDA = torch.cuda.is_available()


def kind(name: str) -> str:
    """A kernel name shortened to what it does (templated names differ in their arguments only)."""
    name = re.sub(r"<.*", "", name)
    name = re.sub(r"\(.*", "", name)
    return re.sub(r"_\d+$", "", name)[:80]


def kernel_table(prof: torch.profiler.profile, steps: int) -> dict:
    by_kind, count, launches = collections.Counter(), collections.Counter(), 0
    for ev in prof.events():
        if ev.device_type == (torch.autograd.DeviceType.CUDA if CUDA else torch.autograd.DeviceType.CPU):
            by_kind[kind(ev.name)] += (ev.device_time_total if CUDA else ev.self_cpu_time_total) / 1e3 / steps
            count[kind(ev.name)] += 1
            launches += 1
    return dict(kernel_ms=round(sum(by_kind.values()), 1), kernels_per_step=launches // steps, **idle_table(prof, steps),
                top={k: [round(v, 2), count[k] // steps]
                     for k, v in by_kind.most_common(int(os.environ.get("TOP", 25)))})


def idle_table(prof: torch.profiler.profile, steps: int, long_us: float = 20.0) -> dict:
    """Where the GPU ran no kernel between two: ms a step in short gaps (a graph's launch to launch) and in gaps
    over ``long_us`` (the GPU waiting on the host: eager launches, syncs), and the longest few with their neighbours."""
    kernels = sorted((ev.time_range.start, ev.time_range.end, kind(ev.name)) for ev in prof.events()
                     if ev.device_type == torch.autograd.DeviceType.CUDA)
    short = long = 0.0
    gaps = []
    busy_until, last = kernels[0][1] if kernels else 0.0, kernels[0][2] if kernels else ""
    for start, end, name in kernels[1:]:  # against the latest end so far: copies and other streams overlap kernels
        gap = start - busy_until
        if gap > long_us:
            long += gap
            gaps.append((gap, last, name))
        elif gap > 0:
            short += gap
        if end > busy_until:
            busy_until, last = end, name
    return dict(idle_short_ms=round(short / 1e3 / steps, 1), idle_long_ms=round(long / 1e3 / steps, 1),
                idle_long_gaps=len(gaps) // steps,
                idle_longest=[[round(g), a, b] for g, a, b in sorted(gaps, reverse=True)[:int(os.environ.get("GAPS", 8))]])


def profiler() -> torch.profiler.profile:
    """GPU kernels; on a machine without one (a smoke run), the CPU's operators instead."""
    return torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA if CUDA
                                              else torch.profiler.ProfilerActivity.CPU])


def profile_ours(name: str, steps: int = 4) -> dict:
    from benchmarks import train_gpu as tg  # not at the top: it imports transformers, which Unsloth must precede

    prof = profiler()
    row = tg.train_case(name, steps=steps, profiler=prof)
    tg.emit(profiled(row))
    return dict(profile=name, shape=tg.SHAPE, wall_ms=round(row["step_s"] * 1e3, 1), **kernel_table(prof, steps))


def profiled(row: dict) -> dict:
    """A case's row timed under the profiler, its ``case`` key renamed: ``train_gpu --report`` pairs only the rows
    timed without one."""
    return {"profiled_case" if k == "case" else k: v for k, v in row.items()}


class _ClockThatProfiles:
    """The peer module's ``time``: its first perf_counter() (the timed steps begin) enters the profiler, its
    second (they ended, after a synchronize) leaves it."""

    def __init__(self, prof: torch.profiler.profile):
        self.prof, self.reads = prof, 0

    def perf_counter(self) -> float:
        now = time.perf_counter()
        self.reads += 1
        if self.reads == 1:
            self.prof.__enter__()
            now = time.perf_counter()
        elif self.reads == 2:
            self.prof.__exit__(None, None, None)
        return now


def profile_peer(name: str, steps: int = 4) -> dict:
    path = Path(os.environ.get("PEER_DIR", ".cache/i21_peer")) / "gpu_unsloth_peer.py"
    spec = importlib.util.spec_from_file_location("gpu_unsloth_peer", path)
    peer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peer)
    if peer.IMPORT_ERROR is not None:
        raise peer.IMPORT_ERROR
    peer.make()
    prof = profiler()
    clock = _ClockThatProfiles(prof)
    peer.time = clock
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        peer.train_case(name, steps=steps, **peer.CASES[name])  # prints its own row
    for line in printed.getvalue().splitlines():
        print(json.dumps(profiled(json.loads(line))) if line.startswith('{"case"') else line, flush=True)
    assert clock.reads >= 2, "the peer's loop no longer reads its clock twice"
    return dict(profile=name, shape=os.environ.get("SHAPE", "1_8b"), **kernel_table(prof, steps))


if __name__ == "__main__":
    for case in sys.argv[1:]:
        print(json.dumps(profile_peer(case) if case.startswith("unsloth_") else profile_ours(case)), flush=True)
