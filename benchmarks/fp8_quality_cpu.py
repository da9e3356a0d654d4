"""Does ``train.qlora_fp8`` train as good an assistant? The demo's identity LoRA trained twice on a CPU, its
frozen products as the demo runs them and in e4m3 (``trainer.gpu.qlora_fp8.Fp8Linear``), then the identity report
of each (held-out identity questions, multi-turn, leaks, general answers kept).

    bash scripts/demo.sh --name Alice --no-app          # once: demo_out/ with the trained base and the run
    python -m benchmarks.fp8_quality_cpu demo_out [--steps 400] [--seed 0]

Prints one JSON line a run (final loss, the report's figures) and one comparing them. On a CPU the run's own
products are float32 (the GPU trains in bf16), so the difference is fp8's against more precision than bf16 has.
The LoRA layers take the fp8 path with their dense base weight (the NF4 dequantisation is not what is measured).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from transformers import TrainerCallback


def use_fp8_products(model) -> None:
    """Every LoRA layer's training forward becomes ``Fp8Linear`` over its dense base weight; evaluation and
    generation run as before."""
    from myassistant.trainer.gpu.qlora_fp8 import Fp8Linear

    for module in model.modules():
        if hasattr(module, "lora_A") and "default" in module.lora_A:
            def forward(x, *args, module=module, plain=module.forward, **kw):
                if not module.training:
                    return plain(x, *args, **kw)
                return Fp8Linear.apply(x, module.lora_A["default"].weight, module.lora_B["default"].weight,
                                       float(module.scaling["default"]), None, False, False,
                                       module.base_layer.weight.detach())
            module.forward = forward


class Fp8Products(TrainerCallback):
    """``use_fp8_products`` on the model at the start of training."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        use_fp8_products(model)


def run(demo: Path, out: Path, fp8: bool, steps: int, seed: int = 0) -> dict:
    from myassistant.trainer.config import load_config
    from myassistant.trainer.identity.report import write_report
    from myassistant.trainer.train import train

    cfg = load_config(demo / "run" / "run_config.yaml", [f"train.output_dir={out}", f"train.max_steps={steps}",
                                                        "train.eval_steps=0", f"train.seed={seed}"])
    train(cfg, overwrite=True, callbacks=(Fp8Products(),) if fp8 else ())
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line]
    rep = write_report(out, demo / "data", base=demo / "base")
    return {"products": "e4m3" if fp8 else "as the demo", "seed": seed, "first_loss": round(losses[0], 4),
            "final_loss": round(losses[-1], 4),
            **{name: fig["fine_tuned"]["all"] for name, fig in rep["figures"].items() if "fine_tuned" in fig}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("demo_out", type=Path, help="the demo's work folder (base/, run/, data/)")
    p.add_argument("--steps", type=int, default=400, help="training steps (the demo's: 400)")
    p.add_argument("--seed", type=int, default=0, help="train.seed of both runs (the demo's: 0)")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fp8 in (False, True):
            rows.append(run(args.demo_out.resolve(), Path(tmp) / f"run_fp8_{fp8}", fp8, args.steps, args.seed))
            print(json.dumps(rows[-1]), flush=True)
    plain, fp8 = rows
    print(json.dumps({"fp8_minus_plain": {k: round(fp8[k] - plain[k], 4) for k in plain
                                          if k not in ("products", "seed")}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
