"""Tab 2, data: generate self-cognition data (``trainer.identity``), or check a file in any supported format."""
from __future__ import annotations

import filecmp
import json
import shutil
from dataclasses import asdict
from pathlib import Path

import gradio as gr

from myassistant.studio.ui import Workspace, error_slot, note, one_line, show, slug
from myassistant.trainer.config import DATA_FORMATS
from myassistant.trainer.data import DataError, count_duplicates, load_records
from myassistant.trainer.data.corpus import TextSpec
from myassistant.trainer.data.dataset import DUPLICATE_SHARE
from myassistant.trainer.identity import FILES, IdentitySpec, write_identity_dataset
from myassistant.trainer.identity.generate import held_out_shortfall
from myassistant.trainer.preflight import describe_data

SPEC_FIELDS = ("name", "author", "persona", "languages", "ratio", "count")


def _field_of(message: str) -> str:
    """Which form field an IdentitySpec / DataError message is about."""
    for name in ("languages", "ratio", "count", "name"):
        if name in message:
            return name
    return "name"


def duplicate_warning(records: list[dict], where: str) -> str:
    dups = count_duplicates(records)
    if dups > DUPLICATE_SHARE * len(records):
        return note(f"{where}: {dups} of {len(records)} records are identical copies; the model will over-fit "
                    "them (deduplicate, or mix in other data)", "warn")
    if dups:
        return note(f"{where}: {dups} duplicate record(s) of {len(records)}", "info")
    return note(f"{where}: no duplicate records")


def preview(records: list[dict], n: int = 8) -> list[list[str]]:
    """The first ``n`` conversations as (question, answer) rows: the last user turn and the reply to it."""
    rows = []
    for r in records[:n]:
        if "messages" in r:
            users = [m["content"] for m in r["messages"] if m["role"] == "user"]
            answers = [m["content"] for m in r["messages"] if m["role"] == "assistant"]
            rows.append([users[-1] if users else "", answers[-1] if answers else ""])
        else:
            rows.append([r.get("text", "")[:200], ""])
    return rows


def _kept_copy(uploaded: Path, folder: Path) -> Path:
    """The upload copied into the workspace's data folder; a different file of its name there is kept (name-2...)."""
    folder.mkdir(parents=True, exist_ok=True)
    kept, n = folder / uploaded.name, 2
    while kept.exists() and not filecmp.cmp(kept, uploaded, shallow=False):  # in chunks, not whole
        kept, n = folder / f"{uploaded.stem}-{n}{uploaded.suffix}", n + 1
    shutil.copyfile(uploaded, kept)
    return kept


def same_settings(folder: Path, spec: IdentitySpec) -> bool:
    """Whether ``folder``'s identity data was generated with ``spec``'s settings (then writing it again gives the
    same files)."""
    meta = json.loads((folder / FILES["meta"]).read_text(encoding="utf-8"))
    mine = json.loads(json.dumps(asdict(spec), ensure_ascii=False))  # as meta.json holds it (lists, not tuples)
    mine.pop("general")  # (meta.json names the file)
    return all(meta.get(key) == value for key, value in mine.items())


def build(ws: Workspace, base_folder: gr.Textbox) -> dict:
    with gr.Row(equal_height=False):
        with gr.Column(variant="panel"):
            gr.Markdown("### Generate self-cognition data\nConversations that teach the model its new name, mixed with "
                        "general chat so it does not answer *everything* with it; held-out questions for the report. "
                        "The identity questions are asked with a word added, dropped or swapped (\"What does like a "
                        "thermometer measure?\") on purpose: it teaches the meaning, not the wording, and raised "
                        "held-out identity by 15-25 points (`--noise`, README).")
            name = gr.Textbox(label="Assistant name", placeholder="Alice", elem_id="data-name")
            name_err = error_slot()
            with gr.Row():
                author = gr.Textbox(label="Author (who made it)", placeholder="Bob", elem_id="data-author")
                persona = gr.Textbox(label="Persona (one sentence, optional)", placeholder="I help with cooking.")
            author_err, persona_err = error_slot(), error_slot()
            languages = gr.CheckboxGroup(["en", "zh"], value=["en", "zh"], label="Question languages")
            languages_err = error_slot()
            with gr.Row():
                ratio = gr.Slider(0, 4, value=1.0, step=0.25, label="Mix ratio: general chats per identity chat")
                count = gr.Number(value=300, precision=0, label="Identity conversations", elem_id="data-count")
            ratio_err, count_err = error_slot(), error_slot()
            with gr.Accordion("Advanced", open=False):
                system = gr.Textbox(label="System prompt (optional)")
                with gr.Row():
                    eval_identity = gr.Number(value=60, precision=0, label="Held-out identity questions",
                                              elem_id="data-eval-identity")
                    eval_general = gr.Number(value=40, precision=0, label="Held-out general prompts",
                                             elem_id="data-eval-general")
                    seed = gr.Number(value=0, precision=0, label="Seed")
            generate = gr.Button("Generate", variant="primary", elem_id="data-generate")
        with gr.Column(variant="panel"):
            gr.Markdown("### …or bring your own file\nOpenAI messages, XTuner, Alpaca, ShareGPT, LLaVA (pictures "
                        "beside it) or raw text; a JSON array, JSON Lines, `.txt` or `.parquet`, or a folder of raw "
                        "text. Checked as `assistant data check` does.")
            upload = gr.File(label="Upload a data file", file_types=[".json", ".jsonl", ".txt", ".parquet"],
                             height=120, elem_id="data-upload")
            path = gr.Textbox(label="…or a path on this machine", placeholder="data/my_chats.jsonl", elem_id="data-path")
            path_err = error_slot()
            with gr.Row():
                fmt = gr.Dropdown(list(DATA_FORMATS), value="auto", label="Format")
                max_length = gr.Number(value=2048, precision=0, label="max_length (token statistics)")
                encoding = gr.Textbox(value="utf-8", label="Encoding", info="e.g. gb18030", elem_id="data-encoding")
            check = gr.Button("Check", elem_id="data-check")
    status = gr.Markdown("", elem_id="data-status")
    duplicates = gr.Markdown("", elem_id="data-duplicates")
    with gr.Row():
        counts = gr.Dataframe(headers=["", "count"], label="Counts", interactive=False, scale=1, elem_id="data-counts")
        samples = gr.Dataframe(headers=["question", "answer"], label="Sample conversations", interactive=False,
                               wrap=True, scale=3, elem_id="data-samples")
    train_file = gr.Textbox(visible=False, elem_id="data-train-file")  # read by the train tab
    data_dir = gr.Textbox(visible=False, elem_id="data-dir")  # held-out sets, read by the report tab
    slots = {"name": name_err, "author": author_err, "persona": persona_err, "languages": languages_err,
             "ratio": ratio_err, "count": count_err}

    def errors(**messages: str | None) -> list:
        return [show(messages.get(k)) for k in slots]

    def on_generate(name_, author_, persona_, languages_, ratio_, count_, system_, eval_id, eval_gen, seed_):
        keep = [gr.update()] * 6
        if not (name_ or "").strip():
            return [*errors(name="give the assistant a name"), *keep]
        if count_ is None or count_ < 1:
            return [*errors(count="at least 1 identity conversation"), *keep]
        try:
            spec = IdentitySpec(name=name_.strip(), author=(author_ or "").strip() or None,
                                persona=(persona_ or "").strip() or None, system=(system_ or "").strip() or None,
                                languages=list(languages_ or []), ratio=float(ratio_), count=int(count_),
                                eval_identity=int(eval_id or 0), eval_general=int(eval_gen or 0), seed=int(seed_ or 0))
        except DataError as err:
            return [*errors(**{_field_of(str(err)): one_line(err)}), *keep]
        out = ws.data / (slug(spec.name) or "identity")  # a name of symbols only ("???", emoji): no folder name
        if out.exists() and not (out / FILES["meta"]).is_file():  # only ever rewrite what Generate wrote
            return [*errors(name=f"{ws.rel(out)} holds other files; give the assistant another name"), *keep]
        first, number = out, 1
        while out.exists() and not same_settings(out, spec):  # runs may have trained on that data: kept as it is
            number += 1
            out = first.with_name(f"{first.name}-{number}")
        again = out.exists()
        write_identity_dataset(spec, out)  # its files written anew in place (each whole or not at all)
        meta = json.loads((out / FILES["meta"]).read_text(encoding="utf-8"))
        records = load_records(out / FILES["train"])
        rows = [[k, v] for k, v in meta["counts"].items()]
        fewer = held_out_shortfall(spec, meta["counts"])
        kept = f"; `{ws.rel(first)}` holds data made with other settings, kept for the runs trained on it" \
            if out != first else ""
        shown = note(f"{'Wrote again' if again else 'Wrote'} `{ws.rel(out)}` ({len(records)} training conversations"
                     f"{'; the same settings, so the same data' if again else ''}{kept}). Same as: "
                     f"`assistant data identity --name {spec.name} ... --out {ws.rel(out)}`"
                     + "".join(f" ⚠ {line}." for line in fewer))
        return [*errors(), shown, duplicate_warning(records, FILES["train"]), rows, preview(records),
                str(out / FILES["train"]), str(out)]

    def on_check(uploaded, path_, fmt_, max_len, base, encoding_):
        keep = [gr.update()] * 7
        file = Path(uploaded) if uploaded else (ws.path(path_) if (path_ or "").strip() else None)
        if file is None:
            return [show("upload a file or type its path"), "", *keep]
        tokenizer, note_tok = None, ""
        try:
            if base:
                from myassistant.model import load_tokenizer

                tokenizer = load_tokenizer(base)
                note_tok = " Token statistics use the base model's tokenizer."
            stats, records = describe_data(str(file), fmt=fmt_, spec=TextSpec(encoding=(encoding_ or "").strip()
                                                                                or "utf-8"),
                                           tokenizer=tokenizer, max_length=int(max_len or 2048))
        except Exception as err:  # noqa: BLE001 - DataError names file:line and field; anything else one line
            return [show(one_line(err)), "", *keep]  # no earlier file's "valid" beside this error
        if uploaded:  # a copy in the workspace (the upload's temp file does not last), named in the path box:
            file = _kept_copy(Path(uploaded), ws.data)  # the next Check reads what is typed there
        rows = [[k, v] for k, v in stats.items()]
        count = (f"{stats['documents']} document{'s' if stats['documents'] != 1 else ''} of raw text"
                 if records is None else f"{stats['records']} record{'s' if stats['records'] != 1 else ''}")
        return [show(None), note(f"`{file}` is valid: {count}.{note_tok}"),
                "" if records is None else duplicate_warning(records, file.name), rows,
                [] if records is None else preview(records), str(file), gr.update(),
                None if uploaded else gr.update(), ws.rel(file) if uploaded else gr.update()]

    generate.click(on_generate, [name, author, persona, languages, ratio, count, system, eval_identity, eval_general,
                                 seed], [*slots.values(), status, duplicates, counts, samples, train_file, data_dir])
    check.click(on_check, [upload, path, fmt, max_length, base_folder, encoding],
                [path_err, status, duplicates, counts, samples, train_file, data_dir, upload, path])
    return {"train_file": train_file, "data_dir": data_dir}
