"""Where the GPU time of one training step goes: kernel time by kind, one JSON line per case.

    python -m benchmarks.profile_step ours_qlora1_d0_compile [ours_qlora4_d0_compile ...]   (SHAPE=1_8b | 7b)

Runs the case's model as benchmarks/train_gpu.py builds it, 4 warm-up steps, then 2 steps under
torch.profiler; prints the wall time a step, the summed kernel time a step (what a CUDA graph of the
step cannot go below), the kernels that take most of it grouped by name prefix (TOP=25 of them:
ms and launches a step), and the memory: weights, + LoRA gradients and optimizer state (static), peak.
"""
from __future__ import annotations

import collections
import json
import os
import re
import sys
import time

import torch

from benchmarks import train_gpu as tg


def kind(name: str) -> str:
    """A kernel name shortened to what it does (templated names differ in their arguments only)."""
    name = re.sub(r"<.*", "", name)
    name = re.sub(r"\(.*", "", name)
    return re.sub(r"_\d+$", "", name)[:80]


def profile_case(name: str, steps: int = 2, warm: int = 4) -> dict:
    kind_, bs, variants = tg.parse_case(name)
    cfg = tg.run_config(tg.build_checkpoint(), "qlora", 0.0 if "d0" in variants else 0.1)
    model = tg.build(cfg, variants)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4, fused=True)
    data = tg.batches(kind_, bs, warm + steps, model.config.vocab_size, variants)

    def step(batch):
        batch = {k: v.cuda(non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    torch.cuda.reset_peak_memory_stats()
    weights = torch.cuda.memory_allocated()
    for batch, _, _ in data[:warm]:
        step(batch)
    torch.cuda.synchronize()
    static, peak = torch.cuda.memory_allocated(), torch.cuda.max_memory_allocated()  # + grads, optimizer state
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for batch, _, _ in data[warm:]:
            step(batch)
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) / steps
    by_kind, count, launches = collections.Counter(), collections.Counter(), 0
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            by_kind[kind(ev.name)] += ev.device_time_total / 1e3 / steps
            count[kind(ev.name)] += 1
            launches += 1
    total = sum(by_kind.values())
    return dict(case=name, shape=tg.SHAPE, wall_ms=round(wall * 1e3, 1), kernel_ms=round(total, 1),
                kernels_per_step=launches // steps, weights_gib=round(weights / 2**30, 3),
                static_gib=round(static / 2**30, 3), peak_gib=round(peak / 2**30, 3),
                top={k: [round(v, 2), count[k] // steps] for k, v in by_kind.most_common(int(os.environ.get("TOP", 25)))})


if __name__ == "__main__":
    for case in sys.argv[1:]:
        print(json.dumps(profile_case(case)), flush=True)
