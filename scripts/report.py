"""assistant report MODEL [--data DATA]: the report that fits the run, the trained model vs its base.

A run trained on chats (the identity recipe): identity (single- and multi-turn), leak and general ability
kept, zh and en apart (--system: also with a system prompt, unguarded and guarded); DATA is the folder written by
'assistant data identity', by default the one the run was trained on. A pre-training run (raw text, alone
or mixed with chats): perplexity on held-out domain text and on general chat data; DATA is the held-out
text (file, folder or glob). The kind is read from the run (run.json, also in a merged folder); --kind
overrides it.
A multimodal (LLaVA) run or merged folder: accuracy on held-out pictures vs the same parts before
training, every answer of a record scored after the turns before it; DATA is a folder with eval.jsonl
('assistant data shapes') or a LLaVA file with reference answers.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from myassistant.scripts.argtypes import at_least


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, prog="assistant report", description=__doc__)
    p.add_argument("model", help="training run folder (base + adapter), or a merged model folder")
    p.add_argument("--data", help="identity: folder written by 'assistant data identity' (default: the one the run "
                                  "was trained on); pre-training: held-out domain text (required); pictures: "
                                  "eval.jsonl's folder (required)")
    p.add_argument("--image-folder", help="pictures: the folder the eval file's picture paths are relative to "
                                          "(default: the eval file's folder)")
    p.add_argument("--kind", choices=("auto", "identity", "pretrain", "pictures"), default="auto",
                   help="which report (default: from the run; a --data folder with meta.json means identity)")
    p.add_argument("--base", help="base model folder to measure side by side (default: the run's base)")
    p.add_argument("--chat-data", help="pre-training: general chats to score (default: the shipped zh+en set)")
    p.add_argument("--out", help="where to write report.json / report.md (default: the model folder)")
    p.add_argument("--max-new-tokens", type=at_least(1, "the answers need at least 1 token"), default=48,
                   help="identity: longest greedy answer in tokens (default 48)")
    p.add_argument("--system", help="identity: also measure identity and leak with this system prompt (e.g. \"You are "
                                    "Alice.\"), without and with the identity guard (the app's APP_IDENTITY_GUARD=1)")
    args = p.parse_args(argv)
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():  # before minutes of answering
        p.error(f"--out {args.out}: is a file; the report writes report.json and report.md into a folder")

    from myassistant.trainer.run_folder import REPORT_MD
    from myassistant.trainer.multimodal import report as pictures

    kind, multimodal = args.kind, pictures.is_multimodal(args.model)
    if kind == "auto" and multimodal:
        kind = "pictures"
    if kind == "pictures" and not multimodal:
        p.error(f"--kind pictures: {args.model} reads no pictures; its report is --kind identity or pretrain")
    if kind in ("identity", "pretrain") and multimodal:
        p.error(f"--kind {kind}: {args.model} is a multimodal (LLaVA) model; its report is --kind pictures "
                "(held-out questions about pictures as --data)")
    if kind == "pictures":
        if args.data is None:
            p.error("--data: the picture report needs held-out questions about pictures (a folder with eval.jsonl)")
        pictures.write_picture_report(args.model, args.data, out_dir=args.out, max_new_tokens=args.max_new_tokens,
                                      image_folder=args.image_folder)
        print((Path(args.out or args.model) / REPORT_MD).read_text(encoding="utf-8"))
        return 0
    if kind == "auto":
        from myassistant.trainer.perplexity import run_kind

        recorded = run_kind(args.model)
        kind = ("pretrain" if recorded in ("pretrain", "mixed") else "identity" if recorded == "chat"
                else "identity" if args.data is None or (Path(args.data) / "meta.json").exists() else "pretrain")
    if kind == "pretrain":
        from myassistant.trainer.perplexity import write_pretrain_report

        if args.data is None:
            p.error("--data: the pre-training report needs held-out domain text (a file, folder or glob)")
        rep = write_pretrain_report(args.model, args.data, base=args.base, chat_data=args.chat_data, out_dir=args.out)
        print((Path(args.out or args.model) / REPORT_MD).read_text(encoding="utf-8"))
        return 0 if rep["trained"]["held_out"]["tokens"] > 0 else 1
    from myassistant.trainer.identity.report import summary, write_report

    rep = write_report(args.model, args.data, base=args.base, out_dir=args.out, max_new_tokens=args.max_new_tokens,
                       system=args.system)
    print(summary(rep))
    return 0
