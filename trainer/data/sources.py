"""The run's data section → one training set, each source by its own rule.

- ``text`` (incremental pre-training): every document tokenised, joined with eos and cut into
  ``max_length`` blocks (``trainer.data.blocks``): nothing is truncated, every token is in one block.
- ``chat`` (instruction data): chat template, loss on assistant turns, samples longer than
  ``max_length`` truncated and counted (``trainer.data.dataset``), packed when ``data.pack`` (always
  when mixed with text, so every row carries positions).

``data.train_file`` is one source; ``data.sources`` lists several (raw text mixed with some chat data
keeps a base's chat ability). A source's kind is ``auto`` unless named: ``.txt``/``.parquet``, a folder of
them, ``data.format: text`` and JSON records with a ``text`` field are text; the other formats are chat.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import dataset as chat_data
from .blocks import TextBlocks, tokenize_corpus
from .corpus import TextSpec, check_file, find_files
from .encodings import file_encoding, with_bom
from .formats import DataError, detect_format
from .jsonfile import malformed_line, read_json_records, record_continues

log = logging.getLogger(__name__)


@dataclass
class Source:
    """One resolved source: where, which rule, and how to read it."""

    path: str
    kind: str  # "text" | "chat"
    format: str
    spec: TextSpec


@dataclass
class TrainingData:
    dataset: torch.utils.data.Dataset  # rows of input_ids / labels (/ position_ids)
    records: int  # documents + conversations
    tokens: int  # tokens in the rows
    chat: bool  # every source is chat data (eval prompts are asked as chats)
    kind: str  # pretrain | mixed | chat (run_kind)
    rules: list[str] = field(default_factory=list)  # one line per source: what happened to it


def _first_record(path: Path, spec: TextSpec) -> object:
    """The first JSON record of a file: of JSON Lines without reading the rest; of a JSON array (whatever the file's
    suffix), or of records written over several lines each, from the whole file."""
    check_file(path, spec)
    with open(path, encoding=with_bom(file_encoding(path, spec.encoding))) as f:
        for lineno, line in enumerate(f, 1):
            if line.lstrip().startswith("[") or line.strip() and record_continues(line.strip()):
                for _, record in read_json_records(path, spec.encoding):
                    return record
                raise DataError(f"{path}: the file holds no records (an empty JSON array)")
            if line.strip():
                try:
                    return json.loads(line)
                except json.JSONDecodeError as err:
                    raise malformed_line(path, lineno, line, err, "; each line must be one complete JSON record, "
                                                                  "or the file one JSON array") from None
    raise DataError(f"{path}: the file is empty; it needs at least one record")


def source_kind(path: str, fmt: str, spec: TextSpec) -> str:
    """``text`` or ``chat`` for a source whose kind is ``auto``."""
    if fmt == "text":
        return "text"
    if fmt != "auto":
        return "chat"
    files = find_files(path)
    if any(f.suffix.lower() in (".txt", ".parquet") for f in files):
        return "text"
    first = _first_record(files[0], spec)
    if isinstance(first, dict) and spec.text_field in first and spec.text_field != "text":
        return "text"
    return "text" if detect_format(files[0], first) == "text" else "chat"


def resolve_sources(data) -> list[Source]:
    """``data.train_file`` or ``data.sources`` (a ``DataConfig``) as resolved sources, kinds decided."""
    entries = data.sources or [None]
    out = []
    for entry in entries:
        path = entry.path if entry else data.train_file
        fmt = (entry.format if entry else "") or data.format
        spec = TextSpec(text_unit=(entry.text_unit if entry else "") or data.text_unit,
                        text_field=(entry.text_field if entry else "") or data.text_field,
                        encoding=(entry.encoding if entry else "") or data.encoding)
        kind = entry.kind if entry and entry.kind != "auto" else source_kind(path, fmt, spec)
        out.append(Source(path=path, kind=kind, format="text" if kind == "text" else fmt, spec=spec))
    return out


def run_kind(sources: list[Source]) -> str:
    """``pretrain`` (raw text only), ``mixed`` or ``chat``: which report fits the run."""
    kinds = {s.kind for s in sources}
    return "chat" if kinds == {"chat"} else "pretrain" if kinds == {"text"} else "mixed"


def build_training_data(data, tokenizer) -> TrainingData:
    """Every source of ``data`` (a ``DataConfig``) tokenised by its rule, concatenated; the log says which rule."""
    sources = resolve_sources(data)
    parts, rules, records, tokens = [], [], 0, 0
    mixed = len({s.kind for s in sources}) > 1
    for src in sources:
        if src.kind == "text":
            stream = tokenize_corpus(src.path, tokenizer, src.spec, num_proc=data.num_proc)
            blocks = TextBlocks(stream, data.max_length)
            parts.append(blocks)
            records, tokens = records + stream.documents, tokens + len(stream.tokens)
            rules.append(f"{src.path}: raw text kept whole: {stream.documents:,} documents (.txt unit: "
                         f"{src.spec.text_unit}), {len(stream.tokens) - stream.documents:,} "
                         f"tokens + {stream.documents:,} eos -> {len(blocks):,} blocks of <= {data.max_length} "
                         "tokens, nothing truncated")
        else:
            recs = chat_data.load_records(src.path, src.format, src.spec.encoding)
            ds = chat_data.tokenize_records(recs, tokenizer, data.max_length)
            long = sum(len(ids) >= data.max_length for ids in ds["input_ids"])
            if data.pack or mixed:
                ds = chat_data.pack(ds, data.max_length)
            parts.append(ds)
            records, tokens = records + len(recs), tokens + sum(map(len, ds["input_ids"]))
            rules.append(f"{src.path}: instruction data, truncated to max_length={data.max_length} "
                         f"({long} of {len(recs)} at the limit){', packed' if data.pack or mixed else ''}")
    for rule in rules:
        log.info("data rule: %s", rule)
    dataset = parts[0] if len(parts) == 1 else torch.utils.data.ConcatDataset(parts)
    return TrainingData(dataset, records, tokens, chat=all(s.kind == "chat" for s in sources), kind=run_kind(sources),
                        rules=rules)


def describe_text(path: str, spec: TextSpec, tokenizer=None, max_length: int = 2048, num_proc: int = 0) -> dict:
    """Counts for ``assistant data check`` on raw text: documents, tokens and the blocks training will see."""
    files = find_files(path)
    stats: dict = {"kind": "text", "files": len(files), "text_unit": spec.text_unit}
    if tokenizer is None:
        from .corpus import iter_pieces

        for f in files:
            check_file(f, spec)
        docs = chars = 0
        for piece in iter_pieces(files, spec):
            docs, chars = docs + piece["last"], chars + len(piece["text"])
        if not docs:
            raise DataError(f"{path}: no text in {len(files)} file(s): the document set is empty")
        return {**stats, "documents": docs, "characters": chars}
    stream = tokenize_corpus(path, tokenizer, spec, num_proc=num_proc)
    return {**stats, "documents": stream.documents, "tokens": len(stream.tokens) - stream.documents,
            "eos": stream.documents, "max_length": max_length, "blocks": stream.blocks(max_length),
            "truncated_tokens": 0}
