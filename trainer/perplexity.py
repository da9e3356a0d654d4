"""The pre-training report: did the model learn the domain, and what did it forget?

Perplexity (exp of the mean next-token loss) of the trained model and of its base on
- held-out text of the domain (raw text, read and cut into ``max_length`` blocks exactly as training
  reads its corpus, every token of it scored once), which pre-training should lower;
- general chat data (loss on the assistant turns, as instruction tuning trains them; default: the
  shipped zh+en general chats), which shows what was lost.
Written as ``report.json`` and ``report.md`` next to the model, like the fine-tune report, so the hub
push puts it in the model card. ``assistant report`` picks this report for runs whose data was raw text.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch

from myassistant.trainer import run_folder
from myassistant.trainer.data import collate, load_records, tokenize_records
from myassistant.trainer.data.blocks import TextBlocks, tokenize_corpus
from myassistant.trainer.data.corpus import TextSpec
from myassistant.trainer.identity import GENERAL_DATA
from myassistant.trainer.identity.report import load_for_eval

log = logging.getLogger(__name__)


@torch.no_grad()
def perplexity(model, rows, *, batch_size: int = 4, pad_token_id: int = 0) -> dict:
    """Token-weighted perplexity of ``model`` over ``rows`` (``input_ids``/``labels`` [/``position_ids``])."""
    device = next(model.parameters()).device
    model.config.use_cache = False  # packed rows are told apart by positions only without a KV cache
    total, count = 0.0, 0
    rows = list(rows)
    for i in range(0, len(rows), batch_size):
        batch = {k: v.to(device) for k, v in collate(rows[i:i + batch_size], pad_token_id=pad_token_id).items()}
        labels = batch.pop("labels")
        logits = model(**batch).logits.float()
        targets = labels[:, 1:]
        n = int((targets != -100).sum())
        if n:
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten(), reduction="sum")
            total, count = total + loss.item(), count + n
    return {"perplexity": round(math.exp(total / count), 3) if count else None,
            "loss": round(total / count, 4) if count else None, "tokens": count}


def _run_settings(model_path: Path) -> tuple[dict, dict]:
    """(run.json, run_config.yaml as a dict) of a run folder, or of a merged folder (which carries both)."""
    cfg = run_folder.run_config(model_path)
    return run_folder.run_info(model_path), cfg.to_dict() if cfg is not None else {}


def run_kind(model_path: str | Path) -> str | None:
    """The kind ``trainer.train`` recorded for a run (pretrain | mixed | chat), also through a merged folder."""
    return _run_settings(Path(model_path))[0].get("kind")


def measure(model, tokenizer, held_out: str | Path, chat_file: str | Path, spec: TextSpec, max_length: int,
            max_blocks: int) -> dict:
    blocks = TextBlocks(tokenize_corpus(held_out, tokenizer, spec), max_length)
    rows = [blocks[i] for i in range(min(len(blocks), max_blocks))]
    chats = tokenize_records(load_records(chat_file), tokenizer, max_length)
    pad = tokenizer.pad_token_id or 0
    return {"held_out": perplexity(model, rows, pad_token_id=pad), "chat": perplexity(model, chats, pad_token_id=pad)}


def _markdown(rep: dict) -> str:
    ft, base = rep["trained"], rep["base"]

    def cell(figs: dict | None, key: str) -> str:
        return f"{figs[key]['perplexity']:.2f}" if figs and figs[key]["perplexity"] is not None else "–"

    lines = ["## Pre-training report", "", "| perplexity (lower is better) | trained | base | tokens |", "|---|---|---|---|",
             f"| held-out domain text `{Path(rep['held_out']).name}` | {cell(ft, 'held_out')} | {cell(base, 'held_out')} "
             f"| {ft['held_out']['tokens']} |",
             f"| general chat, assistant turns `{Path(rep['chat_data']).name}` | {cell(ft, 'chat')} | {cell(base, 'chat')} "
             f"| {ft['chat']['tokens']} |",
             "", f"Blocks of {rep['max_length']} tokens, as training reads text. Model: `{rep['model']}`; "
             f"base: `{rep['base_model'] or '–'}`."]
    return "\n".join(lines) + "\n"


def write_pretrain_report(model_path: str | Path, held_out: str | Path, *, base: str | Path | None = None,
                          chat_data: str | Path | None = None, out_dir: str | Path | None = None,
                          max_length: int | None = None, max_blocks: int = 256) -> dict:
    """Perplexity of the trained model (and its base, side by side); write report.json + report.md."""
    model_path = Path(model_path)
    info, cfg = _run_settings(model_path)
    data = cfg.get("data", {})
    spec = TextSpec(text_unit=data.get("text_unit", "paragraph"), text_field=data.get("text_field", "text"),
                    encoding=data.get("encoding", "utf-8"))
    max_length = max_length or data.get("max_length", 2048)
    base = base or run_folder.base_model(model_path)
    chat_data = Path(chat_data or GENERAL_DATA)
    dtype, device = ("bfloat16", "cuda") if torch.cuda.is_available() else ("float32", "cpu")

    started = time.time()
    figures = {}
    for role, path in (("trained", model_path), ("base", base)):
        if path is None:
            figures[role] = None
            continue
        model, tok = load_for_eval(path, dtype=dtype)
        figures[role] = measure(model.to(device).eval(), tok, held_out, chat_data, spec, max_length, max_blocks)
        log.info("%s: %s", role, figures[role])
        del model
    rep = {"kind": "pretrain", "model": str(model_path), "base_model": str(base) if base else None,
           "held_out": str(held_out), "chat_data": str(chat_data), "max_length": max_length, **figures,
           "seconds": round(time.time() - started, 1)}
    out = Path(out_dir) if out_dir else model_path
    return run_folder.write_report(out, rep, _markdown(rep))
