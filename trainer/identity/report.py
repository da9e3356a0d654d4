"""The fine-tune report: did the model learn its name, and does it keep it to itself?

On the held-out data of ``trainer.identity`` it measures, for the fine-tuned model and its base:
- identity accuracy: the share of held-out identity questions (zh and en, worded unlike anything
  trained on) whose greedy answer states the new name and not an old identity;
- identity on the training templates (what the model saw), as a sanity check;
- identity leak: the share of held-out general prompts whose answer mentions the name anyway.
Written as ``report.json`` and ``report.md`` into the run (or model) folder; ``merge`` takes them along
and the pushed model card shows them. The data folder defaults to the one the run was trained on.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import myassistant.model as model_layer
from myassistant.trainer import run_folder
from myassistant.trainer.data.formats import DataError
from myassistant.trainer.identity import FILES
from myassistant.trainer.run_folder import REPORT_JSON, REPORT_MD

log = logging.getLogger(__name__)


@dataclass
class Figures:
    identity_accuracy: float  # held-out identity questions answered with the name
    identity_seen_accuracy: float  # training-template questions answered with the name
    identity_leak: float  # held-out general prompts whose answer mentions the name
    identity_n: int
    identity_seen_n: int
    general_n: int


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        raise DataError(f"{path}: missing; write the evaluation data with `assistant data identity --out {path.parent}`")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_for_eval(path: str | Path, dtype: str = "float32"):
    """A merged model folder, or a run/adapter folder (base + LoRA adapter, merged in memory)."""
    folder = Path(path)
    if not (folder / model_layer.ADAPTER_CONFIG).exists():
        return model_layer.load_model(folder, dtype=dtype), model_layer.load_tokenizer(folder)
    base = run_folder.base_model(folder)
    if not base:
        raise DataError(f"{folder}: an adapter without a base model (no run_config.yaml, no base_model_name_or_path "
                        "in adapter_config.json); merge it first or report on the merged folder")
    model = model_layer.load_adapter(model_layer.load_model(base, dtype=dtype), folder).merge_and_unload()
    tok_dir = folder if (folder / "tokenizer_config.json").exists() else Path(base)
    return model, model_layer.load_tokenizer(tok_dir)


def says_name(reply: str, name: str, old_names: list[str]) -> bool:
    low = reply.lower()
    return name.lower() in low and not any(old.lower() in low for old in old_names)


def measure(model, tokenizer, data_dir: Path, name: str, old_names: list[str], max_new_tokens: int = 48,
            samples: list | None = None) -> Figures:
    """Greedy answers to the three evaluation sets; ``samples`` collects (set, prompt, reply) rows."""
    def replies(records: list[dict]) -> list[str]:
        prompts = [r["messages"][:-1] for r in records]  # evaluation records end with a reference answer
        return model_layer.generate_replies(model, tokenizer, prompts, max_new_tokens=max_new_tokens)

    sets = {k: _read_jsonl(data_dir / FILES[k]) for k in ("eval_identity", "eval_identity_seen", "eval_general")}
    answers = {k: replies(v) for k, v in sets.items()}
    if samples is not None:
        for k, recs in sets.items():
            samples += [(k, r["messages"][-2]["content"], a) for r, a in zip(recs, answers[k])]

    def share(key: str, hit) -> float:
        got = answers[key]
        return round(sum(map(hit, got)) / len(got), 4) if got else 0.0

    return Figures(
        identity_accuracy=share("eval_identity", lambda a: says_name(a, name, old_names)),
        identity_seen_accuracy=share("eval_identity_seen", lambda a: says_name(a, name, old_names)),
        identity_leak=share("eval_general", lambda a: name.lower() in a.lower()),
        identity_n=len(answers["eval_identity"]), identity_seen_n=len(answers["eval_identity_seen"]),
        general_n=len(answers["eval_general"]),
    )


def _markdown(rep: dict) -> str:
    ft, base = rep["fine_tuned"], rep["base"]
    rows = [
        ("identity accuracy, held-out questions", "identity_accuracy", "identity_n"),
        ("identity accuracy, training templates", "identity_seen_accuracy", "identity_seen_n"),
        ("identity leak, held-out general prompts", "identity_leak", "general_n"),
    ]
    lines = [f"## Fine-tune report: {rep['name']}", "", "| measure | fine-tuned | base | n |", "|---|---|---|---|"]
    for label, key, n in rows:
        b = f"{base[key]:.0%}" if base else "–"
        lines.append(f"| {label} | {ft[key]:.0%} | {b} | {ft[n]} |")
    lines += ["", f"Greedy answers, up to {rep['max_new_tokens']} new tokens. Model: `{rep['model']}`; "
              f"base: `{rep['base_model'] or '–'}`."]
    if rep.get("examples"):
        lines += ["", "| set | question | answer |", "|---|---|---|"]
        lines += [f"| {s} | {q} | {a.replace('|', '/').replace(chr(10), ' ')} |" for s, q, a in rep["examples"]]
    return "\n".join(lines) + "\n"


def write_report(model_path: str | Path, data_dir: str | Path | None = None, *, base: str | Path | None = None,
                 out_dir: str | Path | None = None, max_new_tokens: int = 48) -> dict:
    """Measure the fine-tuned model (and its base, side by side); write report.json + report.md.

    ``data_dir`` and ``base`` default to what the run (or the merged folder carrying its config) was trained on.
    """
    model_path = Path(model_path)
    data_dir = Path(data_dir) if data_dir else run_folder.data_dir(model_path)
    if data_dir is None:
        raise DataError(f"{model_path}: the report needs the held-out sets of `assistant data identity`, and this "
                        "folder names no identity data it was trained on; pass --data DIR")
    meta_file = data_dir / FILES["meta"]
    if not meta_file.exists():
        raise DataError(f"{meta_file}: missing; the report needs the folder written by `assistant data identity`")
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    name, old_names = meta["name"], meta.get("old_names", [])
    if base is None:
        base = run_folder.base_model(model_path)

    started = time.time()
    samples: list = []
    model, tok = load_for_eval(model_path)
    fine = measure(model, tok, data_dir, name, old_names, max_new_tokens, samples)
    log.info("fine-tuned: %s", fine)
    base_fig = None
    if base:
        base_model, base_tok = load_for_eval(base)
        base_fig = measure(base_model, base_tok, data_dir, name, old_names, max_new_tokens)
        log.info("base: %s", base_fig)
    examples = [s for s in samples if s[0] == "eval_identity"][:4] + [s for s in samples if s[0] == "eval_general"][:3]
    rep = {"name": name, "model": str(model_path), "base_model": str(base) if base else None,
           "fine_tuned": asdict(fine), "base": asdict(base_fig) if base_fig else None,
           "max_new_tokens": max_new_tokens, "seconds": round(time.time() - started, 1), "examples": examples}
    out = Path(out_dir) if out_dir else (model_path if model_path.is_dir() else Path("."))
    out.mkdir(parents=True, exist_ok=True)
    run_folder.write_json(out / REPORT_JSON, rep)
    tmp = out / (REPORT_MD + ".tmp")
    tmp.write_text(_markdown(rep), encoding="utf-8")
    tmp.replace(out / REPORT_MD)
    return rep
