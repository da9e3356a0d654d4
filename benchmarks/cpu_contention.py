"""A CPU decode step beside another busy process: libgomp's default spin-wait against the package's GOMP_SPINCOUNT.

    python benchmarks/cpu_contention.py                  # 1.8B shape's layers, 2 threads, 2 rounds (~5 min)
    python benchmarks/cpu_contention.py --shape small --rounds 1    # a quick look

A shared 2-core host (a free Space, CI, a laptop with a browser open) always has some other process that wants
a core. libgomp's workers spin 300,000 times at each barrier before they sleep (GOMP_SPINCOUNT's default), so a
worker waiting for a descheduled sibling holds its core for milliseconds, and every parallel region of a step
pays for it. `import myassistant` sets GOMP_SPINCOUNT to 3000 unless it is set (package __init__).

Each case runs in its own process (libgomp reads the variable when it loads): the engine's decoder (int8 blocks
kernel, the app's CPU path) over the layers of the shape with the tiny tokenizer's vocabulary, time per step
for 1 and 8 rows at a 96-token cache, quiet and with one busy-looping process beside it. Rounds alternate the
cases, so a slow moment of the machine does not land on one case only. One JSON line per case and round.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling decode_cpu.py, run from anywhere
from decode_cpu import SHAPES  # noqa: E402

POLICIES = {"libgomp_default": {"GOMP_SPINCOUNT": "300000"}, "package_default": {"GOMP_SPINCOUNT": "3000"},
            "passive": {"OMP_WAIT_POLICY": "passive"}}
BUSY = [sys.executable, "-c", "while True: pass"]


def step_times(model_dir: str, threads: int, steps: int) -> dict:
    """ms per decode step for 1 and 8 rows (in this process: the policy is the environment it started with)."""
    import torch

    from myassistant.chat import ChatEngine

    torch.set_num_threads(threads)
    engine = ChatEngine.from_pretrained(model_dir, device="cpu")
    batch, out = engine.batch, {}
    with torch.inference_mode():
        for rows in (1, 8):
            tokens, positions = torch.full((rows,), 5), torch.arange(rows) + 80
            for _ in range(2):
                engine.decoder.decode(tokens, positions, batch.cache, 96, batch.key_index)
            start = time.perf_counter()
            for _ in range(steps):
                engine.decoder.decode(tokens, positions, batch.cache, 96, batch.key_index)
            out[f"step_ms_{rows}_row{'s' * (rows > 1)}"] = round((time.perf_counter() - start) / steps * 1e3, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=["small", "internlm2-1.8b"], default="internlm2-1.8b")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--policies", nargs="+", choices=POLICIES, default=list(POLICIES))
    parser.add_argument("--child", help=argparse.SUPPRESS)  # a model folder: measure in this process
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(step_times(args.child, args.threads, args.steps)), flush=True)
        return 0

    from myassistant.model import build_tiny_checkpoint

    with tempfile.TemporaryDirectory(prefix="cpu-contention-") as tmp:
        layers = {k: v for k, v in SHAPES[args.shape].items() if k != "vocab_size"}
        model_dir = build_tiny_checkpoint(Path(tmp) / args.shape, dtype="bfloat16", **layers)
        for round_ in range(args.rounds):
            for busy in (False, True):
                for policy in args.policies:
                    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
                    env.update(POLICIES[policy], OMP_NUM_THREADS=str(args.threads))
                    other = subprocess.Popen(BUSY) if busy else None
                    try:
                        done = subprocess.run([sys.executable, __file__, "--child", str(model_dir), "--threads",
                                               str(args.threads), "--steps", str(args.steps)],
                                              env=env, capture_output=True, text=True, timeout=1800)
                    finally:
                        if other is not None:
                            other.kill()
                            other.wait()
                    if done.returncode:
                        raise SystemExit(f"{policy}: {done.stderr.strip().splitlines()[-1:]}")
                    row = json.loads(done.stdout.strip().splitlines()[-1])
                    print(json.dumps({"shape": args.shape, "threads": args.threads, "round": round_, "policy": policy,
                                      **POLICIES[policy], "busy_process_beside": busy, **row}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
