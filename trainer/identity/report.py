"""The fine-tune report: did the model learn its name, does it keep it to itself, and what did it forget?

On the held-out data of ``trainer.identity`` it measures the fine-tuned model and its base on the same
prompts, each figure for all prompts and for Chinese and English apart, with the number of prompts:
- identity: held-out identity questions (worded unlike anything trained on) answered with the new name
  and no old identity; asked first, and asked as the 2nd-4th turn after general turns; and the
  training questions asked again (what the model saw);
- leak: held-out general prompts whose answer names the assistant anyway; asked first, and asked after
  one or more identity turns (where a model trained on single Q/A pairs says its name to everything);
- general ability kept: how often the greedy answer to a held-out general prompt is word for word the
  base model's, and the word overlap of answers with the data's reference answers;
- with ``system``: identity and leak with that system prompt, and with the identity guard
  (``chat.guard``) on.
Written as ``report.json`` and ``report.md`` into the run (or model) folder; ``merge`` takes them along
and the pushed model card shows them. The data folder defaults to the one the run was trained on.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import myassistant.model as model_layer
from myassistant.chat.guard import guard_identity
from myassistant.trainer import run_folder
from myassistant.trainer.data.formats import DataError
from myassistant.trainer.identity import FILES, probes, score

log = logging.getLogger(__name__)

SETS = ("eval_identity", "eval_identity_seen", "eval_general", "eval_identity_multi", "eval_general_multi")


@dataclass(frozen=True)
class Measure:
    key: str  # the figure's key in report.json
    label: str
    prompts: str  # an evaluation set (FILES key), "+system" with the system prompt, "+guard" with it guarded
    score: str  # name: says the name | leak: mentions it | agree: same answer as the base | overlap: with reference


MEASURES = [
    Measure("identity", "identity, held-out questions", "eval_identity", "name"),
    Measure("identity_multi", "identity, held-out, asked as turn 2-4", "eval_identity_multi", "name"),
    Measure("identity_seen", "identity, training questions", "eval_identity_seen", "name"),
    Measure("leak", "leak, held-out general prompts", "eval_general", "leak"),
    Measure("leak_multi", "leak, general prompts after identity turns", "eval_general_multi", "leak"),
    Measure("agreement", "general answers word for word the base's", "eval_general", "agree"),
    Measure("agreement_multi", "the same, after identity turns", "eval_general_multi", "agree"),
    Measure("overlap", "general answers, word overlap with the reference", "eval_general", "overlap"),
    # With a system prompt (write_report's ``system``), as is and guarded.
    Measure("identity_system", "identity, with the system prompt", "eval_identity+system", "name"),
    Measure("leak_system", "leak, with the system prompt", "eval_general+system", "leak"),
    Measure("leak_multi_system", "leak after identity turns, with the system prompt", "eval_general_multi+system", "leak"),
    Measure("identity_guarded", "identity, system prompt + guard", "eval_identity+guard", "name"),
    Measure("leak_guarded", "leak, system prompt + guard", "eval_general+guard", "leak"),
    Measure("leak_multi_guarded", "leak after identity turns, system prompt + guard", "eval_general_multi+guard", "leak"),
]


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        raise DataError(f"{path}: missing; write the evaluation data with `assistant data identity --out {path.parent}`")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_sets(data_dir: Path, seed: int = 0) -> dict[str, list[dict]]:
    """The evaluation sets; the multi-turn ones are built from the single-turn ones for data folders
    written before they existed."""
    sets = {k: _read_jsonl(data_dir / FILES[k]) for k in SETS if "multi" not in k}
    multi = ("eval_identity_multi", "eval_general_multi")
    if all((data_dir / FILES[k]).exists() for k in multi):
        sets.update({k: _read_jsonl(data_dir / FILES[k]) for k in multi})
    else:
        sets.update(zip(multi, probes.held_out_multi(sets["eval_identity"], sets["eval_general"], seed)))
    return sets


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


def prompts(records: list[dict], variant: str, system: str | None) -> list[list[dict]]:
    """The conversations to answer: each record without its reference answer, as ``variant`` says."""
    if variant in ("system", "guard"):
        records = probes.with_system(records, system or "")
    convs = [r["messages"][:-1] for r in records]
    return [guard_identity(c) for c in convs] if variant == "guard" else convs


def answer(model, tokenizer, sets: dict[str, list[dict]], keys: list[str], system: str | None,
           max_new_tokens: int) -> dict[str, list[str]]:
    """Greedy replies to every prompt set in ``keys`` (one batched pass over all of them)."""
    convs, spans = [], {}
    for key in keys:
        name, _, variant = key.partition("+")
        batch = prompts(sets[name], variant, system)
        spans[key] = (len(convs), len(convs) + len(batch))
        convs += batch
    replies = model_layer.generate_replies(model, tokenizer, convs, max_new_tokens=max_new_tokens)
    return {key: replies[a:b] for key, (a, b) in spans.items()}


def _scores(m: Measure, records: list[dict], got: list[str], base: list[str] | None, name: str,
            old_names: list[str]) -> list[float] | None:
    if m.score == "name":
        return [float(score.says_name(a, name, old_names)) for a in got]
    if m.score == "leak":
        return [float(score.mentions(a, name)) for a in got]
    if m.score == "overlap":
        return [score.overlap(a, r["messages"][-1]["content"]) for a, r in zip(got, records)]
    return None if base is None else [float(score.same_answer(a, b)) for a, b in zip(got, base)]


def figures(measures: list[Measure], sets: dict, fine: dict, base: dict | None, name: str,
            old_names: list[str]) -> dict[str, dict]:
    out = {}
    for m in measures:
        records = sets[m.prompts.partition("+")[0]]
        langs = [r.get("lang") or probes.lang_of(probes.question(r)) for r in records]
        base_got = base[m.prompts] if base else None
        ft = _scores(m, records, fine[m.prompts], base_got, name, old_names)
        if ft is None:
            continue
        ft_value, n = score.figure(ft, langs)
        base_value = None
        if base_got is not None and m.score != "agree":
            base_value = score.figure(_scores(m, records, base_got, None, name, old_names), langs)[0]
        out[m.key] = {"label": m.label, "fine_tuned": ft_value, "base": base_value, "n": n}
    return out


# The report's first figures, under the names report.json had before the per-language figures (the studio reads them).
FLAT = {"identity": ("identity_accuracy", "identity_n"), "identity_seen": ("identity_seen_accuracy", "identity_seen_n"),
        "leak": ("identity_leak", "general_n")}


def flat(figs: dict, side: str) -> dict | None:
    """{identity_accuracy, identity_seen_accuracy, identity_leak, *_n} of one side (fine_tuned or base)."""
    if figs["identity"][side] is None:
        return None
    return {k: v for key, (value, n) in FLAT.items() for k, v in ((value, figs[key][side]["all"]), (n, figs[key]["n"]["all"]))}


def _examples(sets: dict, fine: dict, name: str, old_names: list[str]) -> list[list[str]]:
    """A few answers per set, failures first: [set, last question, answer]."""
    out = []
    for key, per_set in (("eval_identity", 3), ("eval_identity_multi", 2), ("eval_general", 2), ("eval_general_multi", 3)):
        rows = [(probes.question(r), a) for r, a in zip(sets[key], fine[key])]
        ok = (lambda a: score.says_name(a, name, old_names)) if "identity" in key else (lambda a: not score.mentions(a, name))
        out += [[key, q, a] for q, a in sorted(rows, key=lambda row: ok(row[1]))[:per_set]]
    return out


def cell(values: dict | None, percent: bool = True) -> str:
    """A figure as "all (zh / en)": percentages, or ratios with two decimals; "–" where there is none."""
    if not values or values["all"] is None:
        return "–"
    show = (lambda v: "–" if v is None else f"{v:.0%}") if percent else (lambda v: "–" if v is None else f"{v:.2f}")
    return f"{show(values['all'])} ({show(values['zh'])} / {show(values['en'])})"


def table(rep: dict, markdown: bool = False) -> str:
    """The figures as a table: measure, fine-tuned, base, prompts; each cell "all (zh / en)"."""
    head = ["measure", "fine-tuned", "base", "prompts"]
    rows = [[f["label"], cell(f["fine_tuned"], key != "overlap"), cell(f["base"], key != "overlap"),
             f"{f['n']['all']} ({f['n']['zh']} / {f['n']['en']})"] for key, f in rep["figures"].items()]
    if markdown:
        return "\n".join("| " + " | ".join(r) + " |" for r in [head, ["---"] * 4, *rows])
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *rows])


def summary(rep: dict) -> str:
    """What the terminal shows: a title and the text table."""
    return f"Fine-tune report: {rep['name']} (each cell: all prompts (zh / en))\n{table(rep)}"


def _markdown(rep: dict) -> str:
    lines = [f"## Fine-tune report: {rep['name']}", "", table(rep, markdown=True), "",
             f"Each cell: all prompts (Chinese / English). Greedy answers, up to {rep['max_new_tokens']} new tokens. "
             "Identity: the answer states the name; leak: an answer to a general prompt names the assistant; "
             "\"word for word the base's\": general ability kept (the base answers these prompts as it did before "
             f"the fine-tune). Model: `{rep['model']}`; base: `{rep['base_model'] or '–'}`."]
    if rep.get("system_prompt"):
        lines += ["", f"System prompt: `{rep['system_prompt']}`; the guard leaves its naming sentences out of turns "
                      "that do not ask about the assistant (`APP_IDENTITY_GUARD=1` in the app)."]
    if rep.get("examples"):
        lines += ["", "| set | last question | answer |", "|---|---|---|"]
        lines += [f"| {s} | {_md_cell(q)} | {_md_cell(a) or '(no text)'} |" for s, q, a in rep["examples"]]
    return "\n".join(lines) + "\n"


def _md_cell(text: str) -> str:
    """Text as one Markdown table cell: its | escaped and its lines joined."""
    return " ".join(text.replace("|", "\\|").split())


def write_report(model_path: str | Path, data_dir: str | Path | None = None, *, base: str | Path | None = None,
                 out_dir: str | Path | None = None, max_new_tokens: int = 48, system: str | None = None) -> dict:
    """Measure the fine-tuned model (and its base, on the same prompts); write report.json + report.md.
    ``system``: also measure identity and leak with this system prompt, unguarded and guarded.
    ``data_dir`` and ``base`` default to what the run (or the merged folder carrying its config) was trained on."""
    model_path = Path(model_path)
    if model_path.is_file():
        raise model_layer.CheckpointError(f"{model_path}: a file; the report measures a model: give the training run "
                                          "folder (train.output_dir) or a merged model folder")
    if not model_path.is_dir():
        raise model_layer.CheckpointError(f"{model_path}: no such model folder")
    if (model_path / FILES["meta"]).is_file() and not (model_path / "config.json").is_file():
        raise model_layer.CheckpointError(
            f"{model_path}: identity data (the folder `assistant data identity` wrote), not a model; give the "
            f"training run folder or a merged model folder first, and this folder as --data: assistant report RUN "
            f"--data {model_path}")
    out = Path(out_dir) if out_dir else model_path
    cfg = run_folder.run_config(model_path)  # read once: the data it was trained on gives --data's default
    train_file = Path(cfg.data.train_file) if cfg is not None and cfg.data.train_file else None
    trained_on = run_folder.identity_data(train_file) if train_file else None
    if data_dir is None and trained_on is None:
        raise DataError(f"{model_path}: the report needs the held-out sets of `assistant data identity --name NAME "
                        "--out DIR`, and this folder names no identity data it was trained on; pass --data DIR")
    data_dir = Path(data_dir) if data_dir else trained_on
    if not data_dir.is_dir():
        raise DataError(f"--data {data_dir}: " + ("a file; it is the folder `assistant data identity` wrote (its "
                        "held-out questions and meta.json)" if data_dir.exists() else "no such folder"))
    meta_file = data_dir / FILES["meta"]
    if not meta_file.exists():
        raise DataError(f"{meta_file}: missing; the report needs the folder written by `assistant data identity`")
    if train_file is not None and data_dir.resolve() not in train_file.resolve().parents:
        log.warning("%s was trained on %s, not on data from --data %s: its 'training questions' rows ask questions "
                    "this model never saw", model_path, train_file, data_dir)
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    if "name" not in meta:  # another generator's meta.json (`assistant data shapes` writes one too)
        raise DataError(f"{meta_file}: names no assistant; the identity report needs the folder written by "
                        "`assistant data identity`")
    name, old_names = meta["name"], meta.get("old_names", [])
    taught = run_folder.run_info(model_path).get("name")
    if taught and taught != name:  # the folder was written again since the run trained on it
        message = (f"{meta_file}: the data now teaches {name!r}, but {model_path} was trained to be {taught!r} "
                   "(run.json)")
        if data_dir == trained_on:
            raise DataError(message + "; the data was written again since: pass --data with data for that name")
        log.warning("%s: the report measures it against the other name", message)
    if base is None:
        base = run_folder.base_model(model_path)

    started = time.time()
    sets = load_sets(data_dir, meta.get("seed", 0))
    if not any(sets.get(key) for key in ("eval_identity", "eval_general")):
        raise DataError(f"--data {data_dir}: no held-out questions to measure (eval_identity.jsonl and "
                        "eval_general.jsonl are empty); write the data with --eval-identity N --eval-general N")
    measures = [m for m in MEASURES if system or "+" not in m.prompts]
    keys = sorted({m.prompts for m in measures})
    model, tok = load_for_eval(model_path)
    fine = answer(model, tok, sets, keys, system, max_new_tokens)
    base_replies = None
    if base:
        del model
        base_model, base_tok = load_for_eval(base)
        base_replies = answer(base_model, base_tok, sets, keys, system, max_new_tokens)
    figs = figures(measures, sets, fine, base_replies, name, old_names)
    rep = {"name": name, "model": str(model_path), "base_model": str(base) if base else None, "system_prompt": system,
           "figures": figs, "fine_tuned": flat(figs, "fine_tuned"), "base": flat(figs, "base"),
           "max_new_tokens": max_new_tokens, "seconds": round(time.time() - started, 1),
           "examples": _examples(sets, fine, name, old_names)}
    return run_folder.write_report(out, rep, _markdown(rep))
