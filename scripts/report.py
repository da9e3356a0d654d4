"""assistant report MODEL --data DIR: identity accuracy and leak of a fine-tuned model vs its base."""
from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="assistant report", description=__doc__)
    p.add_argument("model", help="merged model folder, or a training run folder (base + adapter)")
    p.add_argument("--data", required=True, help="folder written by `assistant data identity` (held-out sets + meta.json)")
    p.add_argument("--base", help="base model folder to measure side by side (default: the run's base)")
    p.add_argument("--out", help="where to write report.json / report.md (default: the model folder)")
    p.add_argument("--max-new-tokens", type=int, default=48)
    args = p.parse_args(argv)

    from myassistant.trainer.identity.report import REPORT_MD, write_report

    rep = write_report(args.model, args.data, base=args.base, out_dir=args.out, max_new_tokens=args.max_new_tokens)
    from pathlib import Path

    out = Path(args.out or args.model)
    print((out / REPORT_MD).read_text(encoding="utf-8"))
    return 0 if rep["fine_tuned"] else 1
