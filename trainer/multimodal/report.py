"""The picture report: does the model answer questions about pictures it never saw?

On a held-out LLaVA file (``eval.jsonl`` of the data folder: questions about pictures, each with the
reference answer), greedy answers of the fine-tuned model, and of the same parts before training (the
encoder and LLM with a new projector), are scored:
- accuracy: the share of answers that contain the reference answer (case and punctuation ignored);
- with a ``meta.json`` naming ``colours`` and ``shapes`` (``trainer.multimodal.shapes``): the share
  naming the right colour, and the right shape, and only that one.
Written as ``report.json`` and ``report.md`` next to the model (or into ``out_dir``).
"""
from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import myassistant.model as model_layer
from myassistant.trainer import merge, run_folder
from myassistant.trainer.data.formats import DataError
from myassistant.trainer.multimodal.data import load_llava_records, open_image
from myassistant.trainer.multimodal.shapes import FILES

log = logging.getLogger(__name__)



def is_multimodal(path: str | Path) -> bool:
    """A merged Llava folder, or a multimodal run folder."""
    cfg = run_folder.run_config(path) if Path(path).is_dir() else None
    return model_layer.is_llava(path) or bool(cfg and cfg.vision.encoder)


def load_for_eval(path: str | Path, dtype: str = "float32"):
    """(model, processor) of a merged Llava folder or a multimodal run folder (merged in memory)."""
    folder = Path(path)
    if model_layer.is_llava(folder):
        return model_layer.load_llava(folder, dtype=dtype)
    from myassistant.trainer.multimodal.merge import trained_llava

    return trained_llava(merge.read_source(folder.resolve()), dtype)


def _words(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def score(answers: list[str], references: list[str], meta: dict) -> dict:
    n = len(answers)
    out = {"accuracy": round(sum(_words(r) in _words(a) for a, r in zip(answers, references)) / max(n, 1), 4), "n": n}
    for key in ("colours", "shapes"):
        names = meta.get(key)
        if names:
            def right(answer: str, reference: str) -> bool:
                said = {w for w in _words(answer).split() if w in names}
                return said == {w for w in _words(reference).split() if w in names}
            out[f"{key[:-1]}_accuracy"] = round(sum(map(right, answers, references)) / max(n, 1), 4)
    return out


def _turns(records: list[dict]) -> list[tuple[list[str], list[dict], str]]:
    """(the pictures shown so far, the conversation before it, reference) for every assistant turn: a record's later
    answers are scored too, after the turns before them as the data gives them (its last alone may be a text-only
    follow-up); a picture that comes in a later question is not shown before it."""
    turns = []
    for r in records:
        for i, m in enumerate(r["messages"]):
            if m["role"] == "assistant" and i > 0:
                shown = sum(earlier["content"].count(model_layer.IMAGE_TOKEN) for earlier in r["messages"][:i])
                turns.append((r["images"][:shown], r["messages"][:i], m["content"]))
    return turns


def measure(model, processor, records: list[dict], meta: dict, max_new_tokens: int, samples: list | None = None) -> dict:
    turns = _turns(records)
    pictures = [[open_image(p) for p in shown] for shown, _, _ in turns]
    answers = model_layer.generate_replies(model, processor.tokenizer, [before for _, before, _ in turns],
                                           max_new_tokens=max_new_tokens, processor=processor, images=pictures)
    references = [ref for _, _, ref in turns]
    if samples is not None:
        samples += [(Path(shown[0]).name if shown else "-", before[-1]["content"], a, ref)
                    for (shown, before, ref), a in zip(turns, answers)]
    return score(answers, references, meta)


def _markdown(rep: dict) -> str:
    ft, base = rep["fine_tuned"], rep["base"]
    lines = ["## Picture report", "", "| measure | fine-tuned | before training | n |", "|---|---|---|---|"]
    for key, label in (("accuracy", "answer contains the reference"), ("colour_accuracy", "right colour"),
                       ("shape_accuracy", "right shape")):
        if key in ft:
            b = f"{base[key]:.0%}" if base else "–"
            lines.append(f"| {label} | {ft[key]:.0%} | {b} | {ft['n']} |")
    lines += ["", f"Greedy answers, up to {rep['max_new_tokens']} new tokens. Model: `{rep['model']}`. Questions: "
              f"`{rep['eval_file']}`.", "",
              "| picture | question | answer | reference |", "|---|---|---|---|"]
    lines += [f"| {p} | {q.replace(chr(10), ' ')} | {a.replace('|', '/')} | {r} |" for p, q, a, r in rep["examples"]]
    return "\n".join(lines) + "\n"


def write_picture_report(model_path: str | Path, data_dir: str | Path, *, out_dir: str | Path | None = None,
                         max_new_tokens: int = 16, base: bool = True, image_folder: str | Path | None = None) -> dict:
    """Measure a multimodal model (and its parts before training) on held-out pictures; write the report.
    `image_folder`: where the eval file's picture paths start (default: the eval file's folder)."""
    model_path, data_dir = Path(model_path), Path(data_dir)
    eval_file = data_dir / FILES["eval"] if data_dir.is_dir() else data_dir
    files = sorted(p.name for p in data_dir.glob("*.json*") if p.suffix in (".json", ".jsonl")
                   and p.name not in (FILES["meta"], "report.json")) if data_dir.is_dir() else []
    if not eval_file.is_file() and files:  # the folder of other LLaVA files
        raise DataError(f"--data {data_dir}: no {FILES['eval']} in it; give the held-out file itself, e.g. --data "
                        f"{data_dir / files[0]} (it holds {', '.join(files[:4])}{' ...' if len(files) > 4 else ''})")
    if not eval_file.is_file():
        raise DataError(f"{eval_file}: missing; the picture report needs held-out questions about pictures "
                        "(a LLaVA file with reference answers), e.g. `assistant data shapes --out DIR`")
    meta_file = eval_file.parent / FILES["meta"]
    meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
    records = load_llava_records(eval_file, image_folder)
    started, samples = time.time(), []
    model, processor = load_for_eval(model_path)
    fine = measure(model, processor, records, meta, max_new_tokens, samples)
    log.info("fine-tuned: %s", fine)
    cfg, before = run_folder.run_config(model_path), None  # a merged folder carries its run's config
    if base and cfg is not None and cfg.vision.encoder:
        untrained, untrained_processor = model_layer.build_llava(cfg.vision.encoder, cfg.model.base)
        before = measure(untrained, untrained_processor, records, meta, max_new_tokens)
        log.info("before training: %s", before)
    rep = {"kind": "pictures", "model": str(model_path), "eval_file": str(eval_file), "fine_tuned": fine,
           "base": before, "max_new_tokens": max_new_tokens, "seconds": round(time.time() - started, 1),
           "examples": samples[:8]}
    out = Path(out_dir) if out_dir else model_path
    return run_folder.write_report(out, rep, _markdown(rep))
