"""The identity recipe's defaults, chosen by measurement: a small sweep of the offline demo's LoRA
(data mix, steps, learning rate, LoRA targets) on one trained demo base, each setting scored by the
fine-tune report (held-out identity and leak, single- and multi-turn; agreement with the base).

    assistant demo --name Alice --no-app --workdir demo_out          # builds the base once (stage 2)
    nice -n 10 python benchmarks/identity_sweep.py --base demo_out/base --work /tmp/sweep [CASE[@SEED] ...]

Prints one JSON object on stdout (a row per case); progress and a text table go to stderr. Every case
reuses the same base, so the cases differ only in what is listed in CASES. README: the table measured.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import torch

from myassistant.trainer.config import ALL_LINEAR, PRESETS_DIR, load_config
from myassistant.trainer.identity import IdentitySpec, write_identity_dataset
from myassistant.trainer.identity.report import write_report
from myassistant.trainer.train import train

# Every case starts from LoRA on all linear layers (the demo's preset before session 9; it is MLP-only since),
# so a case's name says all that differs and the tables' rows keep their meaning.
ALL = "[" + ",".join(ALL_LINEAR) + "]"
ATTENTION = "[q_proj,k_proj,v_proj,o_proj]"
MLP = "[gate_proj,up_proj,down_proj]"
MLP_VO = "[v_proj,o_proj,gate_proj,up_proj,down_proj]"
# The last two of the demo base's four layers only (every linear layer / the MLP's).
LATE = "[" + ",".join(f"layers.{i}.{m}" for i in (2, 3) for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                                       "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")) + "]"
LATE_MLP = "[" + ",".join(f"layers.{i}.mlp.{m}" for i in (2, 3) for m in ("gate_proj", "up_proj", "down_proj")) + "]"
MLP_QK = "[q_proj,k_proj,gate_proj,up_proj,down_proj]"
ATT_RANK = "lora.rank_pattern=[q_proj={0},k_proj={0},v_proj={0},o_proj={0}]"  # the MLP keeps lora.r
DISTILL = {"small_talk": 0.25, "about_others": 0.25, "distill": True}
# name -> (IdentitySpec fields, training overrides); "default": the demo's recipe before session 9.
CASES = {
    "single_turn": ({"multi_turn": 0.0}, []),  # the recipe before issue 18 had 0.2 (one general turn first)
    "default": ({}, []),
    "noise0": ({"noise": 0.0}, []),  # before the noise knob
    "ratio2": ({"ratio": 2.0}, []),
    "multi_all": ({"multi_turn": 1.0}, []),
    "lr1e-3": ({}, ["train.learning_rate=1.0e-3"]),
    "steps600": ({}, ["train.max_steps=600"]),
    "attention_only": ({}, [f"lora.target_modules={ATTENTION}"]),
    "count800": ({"count": 800}, []),
    "multi_quarter": ({"multi_turn": 0.25}, []),
    "steps800": ({}, ["train.max_steps=800"]),
    "r8": ({}, ["lora.r=8", "lora.lora_alpha=16"]),
    "noise0.3": ({"noise": 0.3}, []),
    "noise0.6": ({"noise": 0.6}, []),
    "noise0.6_steps600": ({"noise": 0.6}, ["train.max_steps=600"]),
    "noise1.0": ({"noise": 1.0}, []),
    "noise0.6_count800": ({"noise": 0.6, "count": 800}, []),
    "noise0.6_ratio2": ({"noise": 0.6, "ratio": 2.0}, []),
    "noise1.0_ratio2": ({"noise": 1.0, "ratio": 2.0}, []),
    "noise0.6_multi_all": ({"noise": 0.6, "multi_turn": 1.0}, []),
    "noise1.0_lr1e-3": ({"noise": 1.0}, ["train.learning_rate=1.0e-3"]),
    "noise1.0_ratio2_lr1e-3": ({"noise": 1.0, "ratio": 2.0}, ["train.learning_rate=1.0e-3"]),
    "noise1.0_ratio3": ({"noise": 1.0, "ratio": 3.0}, []),
    "noise1.0_steps250": ({"noise": 1.0}, ["train.max_steps=250"]),
    "noise1.0_ratio2_steps600": ({"noise": 1.0, "ratio": 2.0}, ["train.max_steps=600"]),
    # Session 8, on the base that knows an old identity: look-alikes (--small-talk, --about-others), the adapter's
    # size and the steps; "distill": the look-alikes answered by the base's own greedy replies instead
    # (`assistant data identity --look-alikes-from BASE`).
    "small0.1": ({"small_talk": 0.1}, []),
    "small0.25": ({"small_talk": 0.25}, []),
    "others0.1": ({"about_others": 0.1}, []),
    "others0.25": ({"about_others": 0.25}, []),
    "both0.1": ({"small_talk": 0.1, "about_others": 0.1}, []),
    "both0.25": ({"small_talk": 0.25, "about_others": 0.25}, []),
    "both0.1_distill": ({"small_talk": 0.1, "about_others": 0.1, "distill": True}, []),
    "both0.25_distill": ({"small_talk": 0.25, "about_others": 0.25, "distill": True}, []),
    "r4": ({}, ["lora.r=4", "lora.lora_alpha=8"]),
    "r16": ({}, ["lora.r=16", "lora.lora_alpha=32"]),
    "mlp_only": ({}, [f"lora.target_modules={MLP}"]),
    "steps250": ({}, ["train.max_steps=250"]),
    "both0.1_r8": ({"small_talk": 0.1, "about_others": 0.1}, ["lora.r=8", "lora.lora_alpha=16"]),
    "both0.1_steps250": ({"small_talk": 0.1, "about_others": 0.1}, ["train.max_steps=250"]),
    "mlp_both0.1": ({"small_talk": 0.1, "about_others": 0.1}, [f"lora.target_modules={MLP}"]),
    "mlp_both0.25": ({"small_talk": 0.25, "about_others": 0.25}, [f"lora.target_modules={MLP}"]),
    "mlp_small0.25": ({"small_talk": 0.25}, [f"lora.target_modules={MLP}"]),
    "mlp_small0.25_others0.1": ({"small_talk": 0.25, "about_others": 0.1}, [f"lora.target_modules={MLP}"]),
    "mlp_both0.25_distill": ({"small_talk": 0.25, "about_others": 0.25, "distill": True}, [f"lora.target_modules={MLP}"]),
    "small0.25_others0.1": ({"small_talk": 0.25, "about_others": 0.1}, []),
    "late_both0.1": ({"small_talk": 0.1, "about_others": 0.1}, [f"lora.target_modules={LATE}"]),
    "mlp_both0.25_multi0.75": ({"small_talk": 0.25, "about_others": 0.25, "multi_turn": 0.75}, [f"lora.target_modules={MLP}"]),
    "mlp_both0.25_steps500": ({"small_talk": 0.25, "about_others": 0.25}, [f"lora.target_modules={MLP}", "train.max_steps=500"]),
    "mlp_both0.25_r64": ({"small_talk": 0.25, "about_others": 0.25}, [f"lora.target_modules={MLP}", "lora.r=64", "lora.lora_alpha=128"]),
    "mlpvo_both0.25": ({"small_talk": 0.25, "about_others": 0.25}, [f"lora.target_modules={MLP_VO}"]),
    "mlp_small0.25_multi0.75": ({"small_talk": 0.25, "multi_turn": 0.75}, [f"lora.target_modules={MLP}"]),
    "mlp_small0.5": ({"small_talk": 0.5}, [f"lora.target_modules={MLP}"]),
    "late_mlp_both0.1": ({"small_talk": 0.1, "about_others": 0.1}, [f"lora.target_modules={LATE_MLP}"]),
    # Session 9, around "mlp_both0.25_distill" (the look-alikes answered by the base: the --look-alikes-from knob):
    # a smaller LoRA on attention than on the MLP (lora.rank_pattern), more identity chats, steps, multi-turn.
    "att4_both0.25_distill": (DISTILL, [ATT_RANK.format(4)]),
    "att8_both0.25_distill": (DISTILL, [ATT_RANK.format(8)]),
    "att2_both0.25_distill": (DISTILL, [ATT_RANK.format(2)]),
    "att4_both0.25_distill_count600": ({**DISTILL, "count": 600}, [ATT_RANK.format(4)]),
    "mlp_both0.25_distill_count600": ({**DISTILL, "count": 600}, [f"lora.target_modules={MLP}"]),
    "mlp_both0.25_distill_multi0.75": ({**DISTILL, "multi_turn": 0.75}, [f"lora.target_modules={MLP}"]),
    "mlpqk_both0.25_distill": (DISTILL, [f"lora.target_modules={MLP_QK}"]),
    "mlp_both0.25_distill_steps600": (DISTILL, [f"lora.target_modules={MLP}", "train.max_steps=600"]),
    "mlp_small0.25_others0.1_distill_multi0.75": ({**DISTILL, "about_others": 0.1, "multi_turn": 0.75}, [f"lora.target_modules={MLP}"]),
    "mlp_both0.25_distill_multi1.0": ({**DISTILL, "multi_turn": 1.0}, [f"lora.target_modules={MLP}"]),
}
KEYS = ("identity", "identity_multi", "leak", "leak_multi", "agreement", "agreement_multi", "leak_system",
        "leak_guarded")


def leaked(run: Path, data: Path) -> list[list[str]]:
    """[prompt, answer] of the held-out general prompts whose answer names Alice (the report counts them)."""
    from myassistant import model as model_layer
    from myassistant.trainer.identity.report import load_for_eval

    records = [json.loads(line) for line in (data / "eval_general.jsonl").read_text(encoding="utf-8").splitlines()]
    model, tok = load_for_eval(run)
    replies = model_layer.generate_replies(model, tok, [r["messages"][:-1] for r in records], max_new_tokens=48)
    return [[r["messages"][-2]["content"], a] for r, a in zip(records, replies) if "alice" in a.lower()]


def run_case(name: str, base: Path, work: Path, seed: int, count: int, extra: list[str] = (),
             system: str | None = "You are Alice, an AI assistant.") -> dict:
    spec_fields, overrides = CASES[name]
    folder = work / f"{name}-s{seed}"
    shutil.rmtree(folder, ignore_errors=True)
    spec_fields = dict(spec_fields)
    if spec_fields.pop("distill", False):  # the look-alikes answered by the base itself
        spec_fields["look_alikes_from"] = str(base)
    data = write_identity_dataset(IdentitySpec(**{"name": "Alice", "count": count, "seed": seed, **spec_fields}), folder / "data")
    started = time.perf_counter()
    cfg = load_config(PRESETS_DIR / "demo_identity_lora.yaml",
                      [f"model.base={base}", f"data.train_file={data / 'train.jsonl'}",
                       f"train.output_dir={folder / 'run'}", "quant.method=lora", f"train.seed={seed}",
                       "train.eval_steps=0", f"lora.target_modules={ALL}", *overrides, *extra])
    run = train(cfg)
    train_s = time.perf_counter() - started
    rep = write_report(run, data, base=base, system=system)
    fig = rep["figures"]
    return {"leaked": leaked(run, data), "case": name, "seed": seed, "spec": spec_fields, "overrides": overrides, "train_s": round(train_s, 1),
            **{k: fig[k]["fine_tuned"] for k in KEYS if k in fig},
            "n": {k: fig[k]["n"]["all"] for k in KEYS if k in fig},
            "base": {k: fig[k]["base"]["all"] for k in KEYS if k in fig and fig[k]["base"]}}


def table(rows: list[dict]) -> str:
    """One line per case: each figure's mean over the seeds run, with min-max when there are several."""
    by_case: dict[str, list[dict]] = {}
    for r in rows:
        by_case.setdefault(r["case"], []).append(r)
    lines = ["| case | seeds | " + " | ".join(KEYS) + " |", "|---" * (len(KEYS) + 2) + "|"]
    for case, runs in by_case.items():
        cells = []
        for k in KEYS:
            vals = [r[k]["all"] for r in runs if k in r]
            if not vals:
                cells.append("")
                continue
            mean = sum(vals) / len(vals)
            cells.append(f"{mean:.0%}" + (f" ({min(vals):.0%}-{max(vals):.0%})" if len(vals) > 1 else ""))
        lines.append(f"| {case} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cases", nargs="*", default=list(CASES),
                   help=f"cases to run, CASE or CASE@SEED (data and training seed; default 0); default all: {', '.join(CASES)}")
    p.add_argument("--base", type=Path, help="a trained demo base (demo_out/base)")
    p.add_argument("--work", type=Path, default=Path("/tmp/identity_sweep"))
    p.add_argument("--count", type=int, default=400, help="identity conversations (the demo's count)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a run-config override for every case (e.g. train.fast_path=false on a GPU)")
    p.add_argument("--no-system", action="store_true", help="leave out the system-prompt figures (a faster report)")
    p.add_argument("--table", nargs="+", type=Path, metavar="JSON",
                   help="print the markdown table of earlier runs' JSON (mean over seeds, min-max) and stop")
    args = p.parse_args()
    if args.table:
        print(table([row for f in args.table if f.stat().st_size for row in json.loads(f.read_text())["rows"]]))
        return 0
    if not args.base:
        p.error("--base is required (a trained demo base)")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    rows = []
    for case in args.cases:
        name, _, seed = case.partition("@")
        if name not in CASES:
            p.error(f"unknown case {name!r}; one of {', '.join(CASES)}")
        rows.append(run_case(name, args.base.resolve(), args.work, int(seed or 0), args.count, args.set,
                             None if args.no_system else "You are Alice, an AI assistant."))
        r = rows[-1]
        print(f"{name:16s} s{r['seed']} " + " ".join(f"{k}={r[k]['all']:.0%}" for k in KEYS if k in r)
              + f" train {r['train_s']:.0f}s", file=sys.stderr, flush=True)
    print(json.dumps({"name": "identity_sweep", "device": "cuda" if torch.cuda.is_available() else "cpu", "base": str(args.base), "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
