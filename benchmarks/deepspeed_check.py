"""DeepSpeed ZeRO through the documented launch command, checked against a plain run.

For each GPU count N in --gpus and each ZeRO preset, runs
    torchrun --nproc_per_node N -m scripts.cli train --config configs/tiny_lora_cpu.yaml ... --deepspeed zeroK
on the same data and the same global batch as a plain single-process run, then:
- interrupts it (drops the last checkpoint and the final files) and continues with --resume,
- merges the adapter with `assistant merge`,
and prints one JSON line per run: the loss curve against the plain run's (max relative difference), the
resumed losses against the uninterrupted ones, the merged model's logits against the plain run's merged
model, and tokens/s. Needs CUDA and deepspeed. Usage:
    python benchmarks/deepspeed_check.py --workdir /tmp/ds --gpus 1 [--presets zero2,zero3] [--hidden 512]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cli(*args: str, launcher: list[str] | None = None) -> None:
    cmd = (launcher or [sys.executable]) + ["-m", "myassistant.scripts.cli", *args]
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def tokens_per_s(run: Path) -> float | None:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    speeds = [r["tokens_per_s"] for r in rows if r.get("tokens_per_s")]
    return round(sum(speeds[1:]) / max(len(speeds) - 1, 1), 1) if speeds else None


def max_rel(a: dict[int, float], b: dict[int, float]) -> float:
    common = sorted(set(a) & set(b))
    return max(abs(a[s] - b[s]) / max(abs(b[s]), 1e-8) for s in common) if common else float("nan")


def merged_logits(folder: Path) -> torch.Tensor:
    from myassistant.model import load_model

    m = load_model(folder, dtype="float32")
    with torch.no_grad():
        return m(torch.arange(3, 67).unsqueeze(0)).logits


def interrupt(run: Path, steps: int) -> None:
    """Leave the folder as a run killed after its middle checkpoint would."""
    shutil.rmtree(run / f"checkpoint-{steps}", ignore_errors=True)
    for f in ("adapter_model.safetensors", "adapter_config.json", "run.json"):
        (run / f).unlink(missing_ok=True)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", default="/tmp/deepspeed_check")
    p.add_argument("--gpus", default="1", help="comma-separated GPU counts, e.g. 1,2")
    p.add_argument("--presets", default="zero2,zero3")
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch", type=int, default=8, help="global batch (sequences per optimizer step)")
    args = p.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    from myassistant.model import build_tiny_checkpoint
    from myassistant.trainer.identity import IdentitySpec, write_identity_dataset

    base = build_tiny_checkpoint(work / "base", hidden_size=args.hidden, num_hidden_layers=4, num_attention_heads=8,
                                 num_key_value_heads=4, intermediate_size=args.hidden * 2)
    data = write_identity_dataset(IdentitySpec(name="Alice", count=200), work / "data")
    half = args.steps // 2

    def common(out: Path, per_device: int) -> list[str]:
        return ["train", "--config", "configs/tiny_lora_cpu.yaml", f"model.base={base}",
                f"data.train_file={data / 'train.jsonl'}", f"train.output_dir={out}", f"train.max_steps={args.steps}",
                f"train.save_steps={half}", "train.eval_steps=0", "train.logging_steps=1",
                f"train.per_device_train_batch_size={per_device}", "model.dtype=float32"]

    plain = work / "plain"
    cli(*common(plain, args.batch))
    cli("merge", str(plain), "--out", str(work / "plain_merged"), "--dtype", "float32")
    ref_losses, ref_logits = losses(plain), merged_logits(work / "plain_merged")
    print(json.dumps({"case": "plain", "gpus": 1, "losses": ref_losses, "tokens_per_s": tokens_per_s(plain)}), flush=True)

    for n in [int(g) for g in args.gpus.split(",") if int(g) > 0]:  # 0: the plain run only
        for preset in args.presets.split(","):
            run = work / f"{preset}_{n}gpu"
            launcher = ["torchrun", "--standalone", f"--nproc_per_node={n}"]
            cli(*common(run, args.batch // n), "--deepspeed", preset, launcher=launcher)
            uninterrupted = losses(run)
            speed = tokens_per_s(run)
            interrupt(run, args.steps)
            cli(*common(run, args.batch // n), "--deepspeed", preset, "--resume", launcher=launcher)
            resumed = losses(run)
            cli("merge", str(run), "--out", str(work / f"{run.name}_merged"), "--dtype", "float32")
            logits = merged_logits(work / f"{run.name}_merged")
            print(json.dumps({
                "case": preset, "gpus": n, "losses": uninterrupted,
                "loss_max_rel_diff_vs_plain": round(max_rel(uninterrupted, ref_losses), 6),
                "resumed_loss_max_rel_diff": round(max_rel({s: resumed[s] for s in resumed if s > half}, uninterrupted), 6),
                "merged_logits_max_abs_diff_vs_plain": float((logits - ref_logits).abs().max()),
                "tokens_per_s": speed,
            }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
