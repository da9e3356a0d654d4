"""The run folder's files, named once: what ``train`` writes and what ``report``, ``merge`` and the model
card read back.

A run folder (``train.output_dir``)::

    run_config.yaml  the resolved config: base model, method, data file, every hyper-parameter
    run.json         what the config cannot say: the assistant's name, steps, final loss, tokens, time
    report.json / report.md   the fine-tune report (``assistant report``)
    data_summary.json  records, rows and tokens of the data the last session trained on (a resume compares)
    metrics.jsonl, eval_samples.jsonl, tensorboard/, checkpoint-N/, the adapter (or full weights)
    README.md        what the folder is and the commands that use it (``write_readme``)

A merged folder takes the run's config, run info and report along (``CARRIED``) and records the merge
in ``merge.json`` (source, name, base, method, steps, final loss), so it describes itself as the run did;
``hub.card`` reads these same names (``tests/test_hub_card.py`` checks they agree).
The base model's path is stored once, in ``run_config.yaml`` (peft also writes it in
``adapter_config.json``, where a bare adapter folder is read from).
"""
from __future__ import annotations

import json
import logging
import shlex
import shutil
from pathlib import Path
from typing import Any

from myassistant.model import ADAPTER_CONFIG, MERGE_INFO, PROJECTOR_WEIGHTS

log = logging.getLogger(__name__)

RUN_CONFIG_NAME = "run_config.yaml"
RUN_INFO_NAME = "run.json"
METRICS_NAME = "metrics.jsonl"
EVAL_SAMPLES_NAME = "eval_samples.jsonl"
DATA_SUMMARY_NAME = "data_summary.json"
REPORT_JSON, REPORT_MD = "report.json", "report.md"
MERGE_INFO_NAME = MERGE_INFO
CARRIED = (RUN_CONFIG_NAME, RUN_INFO_NAME, REPORT_JSON, REPORT_MD)  # copied from a run into its merged folder
IDENTITY_META = "meta.json"  # beside the training data written by `assistant data identity` (trainer.identity)


def write_json(path: Path, data: Any) -> Path:
    """``data`` as indented JSON, written to a temporary sibling and renamed into place."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def write_report(out: Path, report: dict, markdown: str) -> dict:
    """A report as ``report.json`` and ``report.md`` in ``out`` (each written whole, then renamed into place)."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / REPORT_JSON, report)
    tmp = out / (REPORT_MD + ".tmp")
    tmp.write_text(markdown, encoding="utf-8")
    tmp.replace(out / REPORT_MD)
    log.info("wrote %s and %s to %s", REPORT_JSON, REPORT_MD, out)
    return report


def read_json(path: Path) -> dict:
    """A JSON object from ``path``; {} when the file is not there."""
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def run_root(folder: str | Path) -> Path:
    """The folder that holds the run's own files: ``folder``, or the run above a ``checkpoint-N``."""
    folder = Path(folder)
    if folder.name.startswith("checkpoint-") and (folder.parent / RUN_CONFIG_NAME).is_file():
        return folder.parent
    return folder


def run_config(folder: str | Path):
    """The ``RunConfig`` a run (or a merged folder carrying it) was trained with; None for other folders."""
    from myassistant.trainer.config import load_config  # config imports the data formats; only readers pay

    path = run_root(folder) / RUN_CONFIG_NAME
    return load_config(path) if path.is_file() else None


def run_info(folder: str | Path) -> dict:
    """``run.json`` of a finished run or of a merged folder ({} while it runs, or for other folders)."""
    return read_json(run_root(folder) / RUN_INFO_NAME)


def base_model(folder: str | Path) -> str | None:
    """The base model a run, checkpoint, merged folder or adapter folder was trained on."""
    cfg = run_config(folder)
    if cfg is not None:
        return cfg.model.base
    return read_json(Path(folder) / "adapter_config.json").get("base_model_name_or_path") or None


def chat_parts(folder: str | Path) -> tuple[Path, Path | None]:
    """What chatting with ``folder`` loads: (model folder, adapter folder or None).

    A LoRA run is its base with its adapter, or, stopped or still training before it has one, with its newest
    complete checkpoint's. Anything else is itself with no adapter, for the loader to take or to say what it is
    (merged or full weights, a LLaVA run, which chats once merged, a file, nothing). A ValueError when the run's
    base is not where its config says."""
    from myassistant.trainer.resume import complete_checkpoints  # resume reads this module's names

    folder = Path(folder)
    if not folder.is_dir() or (folder / "config.json").exists() or (folder / PROJECTOR_WEIGHTS).is_file():
        return folder, None
    cfg = run_config(folder)
    if cfg is not None and cfg.vision.encoder:  # a LLaVA run still training: its base LLM reads no pictures
        return folder, None
    adapter = folder
    if not (folder / ADAPTER_CONFIG).is_file():
        checkpoints = [c for c in complete_checkpoints(folder) if (c / ADAPTER_CONFIG).is_file()]
        if not checkpoints:
            return folder, None
        adapter = checkpoints[-1]
    base = cfg.model.base if cfg is not None else base_model(folder)
    if base is None:
        return folder, None
    if not (Path(base).expanduser() / "config.json").is_file():
        raise ValueError(f"{folder}: its base model {base} is not there (moved or deleted?); chat with "
                         f"`assistant chat BASE --adapter {adapter}`, BASE where that model is now")
    return Path(base).expanduser(), adapter


def identity_data(train_file: str | Path) -> Path | None:
    """The folder ``assistant data identity`` wrote, when ``train_file`` is its training file."""
    if not train_file:
        return None
    folder = Path(train_file).parent
    return folder if (folder / IDENTITY_META).is_file() else None


def assistant_name(train_file: str | Path) -> str | None:
    """The name the training data teaches (identity data only)."""
    folder = identity_data(train_file)
    return read_json(folder / IDENTITY_META).get("name") if folder else None


def data_dir(folder: str | Path) -> Path | None:
    """The identity data folder a run (or its merged folder) was trained on, for the report."""
    cfg = run_config(folder)
    return identity_data(cfg.data.train_file) if cfg is not None else None


def carry(run: Path, out_dir: Path) -> list[str]:
    """Copy the run's config, run info and report into ``out_dir`` (each only when changed); the names copied."""
    copied = []
    for name in CARRIED:
        src, dst = run / name, out_dir / name
        if not src.is_file():
            continue
        if not (dst.is_file() and dst.read_bytes() == src.read_bytes()):
            tmp = dst.with_name(name + ".tmp")
            shutil.copyfile(src, tmp)
            tmp.replace(dst)
        copied.append(name)
    return copied


def _what_it_is(base: str, method: str, info: dict) -> tuple[str, str]:
    """(the title's description of the run, its weights' row of the file table), from run.json's kind / stage."""
    tuned = "full-parameter" if method == "full" else method
    adapter = "| adapter_model.safetensors, adapter_config.json | the LoRA adapter (peft) |"
    weights = adapter if info.get("adapter") else "| model*.safetensors, config.json | the trained weights |"
    if info.get("kind") == "pictures":
        projector = "| projector.safetensors | the vision projector |"
        if info.get("stage") == "pretrain":
            return f"LLaVA stage 1 (the projector alone) on {base}", projector
        return f"LLaVA stage 2 ({tuned}) on {base}", projector + ("\n" + adapter if info.get("adapter") else "")
    if info.get("kind") in ("pretrain", "mixed"):
        return f"{tuned} incremental pre-training of {base}", weights
    return f"a {tuned} fine-tune of {base}", weights


def _next_commands(run_dir: Path, info: dict) -> list[str]:
    """The commands that use the folder, as they run for its kind (a report's data, merge before chat), its paths
    quoted for a shell."""
    run, merged = shlex.quote(str(run_dir)), shlex.quote(str(run_dir.parent / (run_dir.name + "-merged")))
    merge = f"assistant merge {run} --out {merged}"
    if info.get("kind") == "pictures":
        return [merge, f"assistant chat {merged} --image PICTURE",
                f"assistant report {run} --data EVAL_FOLDER_OR_LLAVA_FILE --image-folder PICTURES"]
    chat = f"assistant chat {run}"  # (a LoRA run: its base with its adapter)
    if info.get("kind") in ("pretrain", "mixed"):
        return [f"assistant report {run} --data HELD_OUT_TEXT", f'{chat} --complete "THE START OF A TEXT"', chat, merge]
    report = [f"assistant report {run}"] if data_dir(run_dir) else []  # (the report asks identity data's questions)
    return [*report, chat, merge]


def write_readme(run_dir: Path, base: str, method: str, info: dict) -> Path:
    """README.md of a finished run folder: what it holds and the commands that use it (peft's save writes its
    template card there, fields "[More Information Needed]"), with the front matter a hub reads for an adapter."""
    title = info.get("name") or run_dir.name
    loss = info.get("final_loss")
    what, weights = _what_it_is(base, method, info)
    logs = (f"| {METRICS_NAME}, {EVAL_SAMPLES_NAME} | the training log and the eval prompts' answers |"
            if (run_dir / EVAL_SAMPLES_NAME).exists() else f"| {METRICS_NAME} | the training log |")
    lines = ["---", f"base_model: {json.dumps(base)}", *(["library_name: peft"] if info.get("adapter") else []),
             f"tags: [myassistant, {method}]", "---", "",
             f"# {title}: {what}", "",
             f"Written by `assistant train`: {info.get('steps')} steps, final loss "
             f"{'-' if loss is None else f'{loss:.4f}'}, {info.get('tokens_seen') or '-'} tokens seen.", "",
             "| file | what it is |", "|---|---|",
             f"| {RUN_CONFIG_NAME} | the resolved config: base model, method, data, every hyper-parameter |",
             f"| {RUN_INFO_NAME} | the assistant's name, steps, loss, tokens, time |", weights,
             logs,
             f"| checkpoint-N/ | checkpoints (`assistant train --config {shlex.quote(str(run_dir / RUN_CONFIG_NAME))} "
             "--resume` continues from the newest) |", "",
             "Next:", "", *(f"    {command}" for command in _next_commands(run_dir, info)), ""]
    path = run_dir / "README.md"
    tmp = path.with_name("README.md.tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    tmp.replace(path)
    return path
