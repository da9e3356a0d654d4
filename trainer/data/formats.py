"""Readers for the training data formats, each turning a file into validated records.

A record is ``{"messages": [{"role", "content"}, ...]}`` (a conversation) or ``{"text": ...}`` (raw text
for incremental pre-training). Every problem is reported as ``DataError`` naming ``file:line`` and the
field, before anything is tokenised or trained.

Formats:
- ``openai``: ``{"messages": [{"role": "system"|"user"|"assistant", "content": ...}]}`` (an assistant message with
  ``"weight": 0`` is context, not trained on)
- ``xtuner``: ``{"conversation": [{"system": ..., "input": ..., "output": ...}, ...]}`` (XTuner's own)
- ``alpaca``: ``{"instruction", "input", "output"}`` (+ optional ``"system"``, and ``"history"``: earlier
  ``[question, answer]`` turns, all trained on)
- ``sharegpt``: ``{"conversations": [{"from": "human"|"gpt"|"system", "value": ...}]}``
- ``text``: ``{"text": ...}`` records, or a ``.txt`` file whose documents are separated by blank lines

Files are a JSON array or JSON Lines (one record per line); ``.txt`` is plain text.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Callable

from .errors import DataError
from .jsonfile import read_json_records

FORMATS = ("openai", "xtuner", "alpaca", "sharegpt", "text")
ROLES = ("system", "user", "assistant")
# ShareGPT dumps name the speakers in several ways; these are the ones seen in the wild.
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "system": "system"}
_OTHER_ROLES = {"bot": "assistant", "model": "assistant", "ai": "assistant", "developer": "system"}
# The key that identifies each format in auto-detection, in the order they are tried.
_MARKERS = (("messages", "openai"), ("conversation", "xtuner"), ("conversations", "sharegpt"),
            ("instruction", "alpaca"), ("text", "text"))


def record_format(record: dict) -> str | None:
    """The format a record's keys mark (``_MARKERS``), or None."""
    return next((fmt for key, fmt in _MARKERS if key in record), None)


def detect_format(path: Path, first: object) -> str:
    """Name the format of a file from its extension or the keys of its first record."""
    if path.suffix == ".txt":
        return "text"
    if isinstance(first, dict):
        if fmt := record_format(first):
            return fmt
        found = ", ".join(sorted(first)) or "none"
        markers = [key for key, _ in _MARKERS]
        close = [m for key in map(str, first) for m in difflib.get_close_matches(key, markers, n=1, cutoff=0.8)]
        if close:  # "message", "conversions": a typo of a marker
            found += f"; did you mean '{close[0]}'?"
        if {"input", "output"} <= set(first):  # one XTuner turn, not wrapped
            found += ' (one turn of XTuner\'s format: wrap each record\'s turns as {"conversation": [...]})'
    else:
        found = f"a JSON {type(first).__name__}, not an object"
    raise DataError(
        f"{path}: cannot tell the data format (first record has keys: {found}); expected one of the keys "
        "messages (openai), conversation (xtuner), conversations (sharegpt), instruction (alpaca), text; "
        "or name the format: data.format=NAME for 'assistant train', --format NAME for 'assistant data check'"
    )


def broken_character(text: str) -> str | None:
    """What is wrong with a string JSON gave that no tokenizer takes: a lone surrogate (a ``\ud83d`` escape, half
    of an emoji cut off, as scraped text often has); None when it is whole."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return (f"holds a broken character ({text[err.start]!r}, half of an emoji or other character cut off) at "
                f"position {err.start}; remove it")
    return None


class _Where:
    """Builds error messages that point at one record."""

    def __init__(self, path: Path, line: str):
        self.prefix = f"{path}:{line}"

    def error(self, field: str, problem: str) -> DataError:
        return DataError(f"{self.prefix}: field '{field}' {problem}")

    def text(self, obj: dict, field: str, *, label: str | None = None, required: bool = True) -> str:
        label = label or field
        if field not in obj or obj[field] is None:
            if required:
                raise self.error(label, "is missing" if field not in obj else "is null")
            return ""
        value = obj[field]
        if not isinstance(value, str):
            raise self.error(label, f"must be a string, got {type(value).__name__}")
        if required and not value.strip():
            raise self.error(label, "is empty; remove the record or fill it in")
        if broken := broken_character(value):
            raise self.error(label, broken)
        return value

    def known(self, obj: dict, fields: tuple[str, ...], where: str = "", what: str = "record") -> None:
        """A key of ``obj`` that is a near miss of one of ``fields`` (``inptu``, ``wieght``) is an error: it would
        be left out silently. Other extra keys (``id``, ``source``, ...) are data sets' own and pass."""
        for key in obj:
            close = difflib.get_close_matches(str(key), fields, n=1, cutoff=0.8) if key not in fields else None
            if close:
                raise self.error(f"{where}{key}", f"is not a field of {what}s; did you mean '{close[0]}'?")

    def items(self, obj: object, field: str) -> list:
        if not isinstance(obj, dict):
            raise DataError(f"{self.prefix}: the record must be a JSON object, got {type(obj).__name__}")
        value = obj.get(field)
        if value is None:
            raise self.error(field, "is missing")
        if not isinstance(value, list) or not value:
            raise self.error(field, "must be a non-empty list")
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise self.error(f"{field}[{i}]", "must be an object")
        return value


def _conversation(where: _Where, messages: list[dict], field: str = "messages") -> dict:
    """``field``: the record's own name for its turns, named in the error. An assistant turn that opens the
    conversation answers no prompt: it is context (trainer.data.render_conversation), not something to learn."""
    if not any(m["role"] == "assistant" for m in messages):
        raise where.error(field, "has no assistant message, so there is nothing to learn from it")
    if not any(m["role"] == "assistant" and m.get("weight", 1) for m in messages[1:]):
        what = "has weight 0 on every assistant message" if any("weight" in m for m in messages) else \
            "has no assistant reply after the opening assistant turn (context, not learned)"
        raise where.error(field, f"{what}, so there is nothing to learn from it")
    return {"messages": messages}


def _weight(where: _Where, turn: dict, label: str, role: str, message: dict) -> None:
    """OpenAI's fine-tuning ``weight`` (also on ShareGPT turns): 0 keeps an assistant turn as context only."""
    if "weight" in turn:
        if turn["weight"] not in (0, 1) or isinstance(turn["weight"], bool) or role != "assistant":
            raise where.error(label, f"is {turn['weight']!r}; it is 0 or 1, on assistant messages")
        message["weight"] = turn["weight"]


def _text_part(where: _Where, label: str, part: object) -> str:
    """One of OpenAI's content parts: its text, or one error for another kind (a picture)."""
    if isinstance(part, dict) and part.get("type") == "text":
        return where.text(part, "text", label=f"{label}.text")
    kind = part.get("type") if isinstance(part, dict) else type(part).__name__
    raise where.error(label, f"is a {kind!r} part; a chat file's messages are text (pictures: a LLaVA file)")


def parse_openai(where: _Where, obj: object) -> dict:
    messages = []
    for i, msg in enumerate(where.items(obj, "messages")):
        where.known(msg, ("role", "content", "weight"), f"messages[{i}].", "message")
        role = where.text(msg, "role", label=f"messages[{i}].role")
        if role not in ROLES:
            # ShareGPT's speakers (human, gpt) in an OpenAI file, and other APIs' names for the same roles
            meant = SHAREGPT_ROLES.get(role.lower()) or _OTHER_ROLES.get(role.lower())
            raise where.error(f"messages[{i}].role", f"is '{role}', not one of {', '.join(ROLES)}"
                                                     + (f"; did you mean '{meant}'?" if meant else ""))
        if isinstance(msg.get("content"), list):  # OpenAI's content parts: [{"type": "text", "text": ...}, ...]
            msg = {**msg, "content": "\n".join(_text_part(where, f"messages[{i}].content[{j}]", part)
                                               for j, part in enumerate(msg["content"]))}
        message = {"role": role, "content": where.text(msg, "content", label=f"messages[{i}].content")}
        _weight(where, msg, f"messages[{i}].weight", role, message)
        messages.append(message)
    return _conversation(where, messages)


def parse_xtuner(where: _Where, obj: object) -> dict:
    messages = []
    for i, turn in enumerate(where.items(obj, "conversation")):
        where.known(turn, ("system", "input", "output"), f"conversation[{i}].", "conversation turn")
        system = where.text(turn, "system", label=f"conversation[{i}].system", required=False)
        if system.strip():
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": where.text(turn, "input", label=f"conversation[{i}].input")})
        messages.append({"role": "assistant",
                         "content": where.text(turn, "output", label=f"conversation[{i}].output")})
    return _conversation(where, messages, "conversation")


def parse_alpaca(where: _Where, obj: object) -> dict:
    if not isinstance(obj, dict):
        raise DataError(f"{where.prefix}: the record must be a JSON object, got {type(obj).__name__}")
    where.known(obj, ("instruction", "input", "output", "system", "history"), what="Alpaca record")
    instruction = where.text(obj, "instruction")
    extra = where.text(obj, "input", required=False)
    system = where.text(obj, "system", required=False)
    messages = [{"role": "system", "content": system}] if system.strip() else []
    history = obj.get("history") or []  # LLaMA-Factory's earlier turns: [[instruction, answer], ...]
    if not isinstance(history, list):
        raise where.error("history", f"must be a list of [question, answer] pairs, got {type(history).__name__}")
    for i, pair in enumerate(history):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(t, str) and t.strip() for t in pair)):
            raise where.error(f"history[{i}]", "must be a [question, answer] pair of non-empty strings")
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    messages.append({"role": "user", "content": f"{instruction}\n{extra}" if extra.strip() else instruction})
    messages.append({"role": "assistant", "content": where.text(obj, "output")})
    return {"messages": messages}


def parse_sharegpt(where: _Where, obj: object) -> dict:
    turns = where.items(obj, "conversations")
    where.known(obj, ("conversations", "system"), what="ShareGPT record")
    system = where.text(obj, "system", required=False)  # LLaMA-Factory's record-wide system prompt
    messages = [{"role": "system", "content": system}] if system.strip() else []
    for i, turn in enumerate(turns):
        where.known(turn, ("from", "value", "weight"), f"conversations[{i}].", "ShareGPT turn")
        speaker = where.text(turn, "from", label=f"conversations[{i}].from")
        if speaker.lower() not in SHAREGPT_ROLES:
            raise where.error(f"conversations[{i}].from",
                              f"is '{speaker}', not one of {', '.join(SHAREGPT_ROLES)}")
        role = SHAREGPT_ROLES[speaker.lower()]
        message = {"role": role, "content": where.text(turn, "value", label=f"conversations[{i}].value")}
        _weight(where, turn, f"conversations[{i}].weight", role, message)
        messages.append(message)
    return _conversation(where, messages, "conversations")


def parse_text(where: _Where, obj: object) -> dict:
    if not isinstance(obj, dict):
        raise DataError(f"{where.prefix}: the record must be a JSON object, got {type(obj).__name__}")
    return {"text": where.text(obj, "text")}


PARSERS: dict[str, Callable[[_Where, object], dict]] = {
    "openai": parse_openai, "xtuner": parse_xtuner, "alpaca": parse_alpaca,
    "sharegpt": parse_sharegpt, "text": parse_text,
}


def read_text_documents(path: Path) -> list[dict]:
    """A ``.txt`` file in memory: documents are separated by one or more blank lines (``trainer.data.corpus``)."""
    from .corpus import TextSpec, check_file, iter_pieces

    check_file(path, TextSpec())
    docs, pieces = [], []
    for piece in iter_pieces([path], TextSpec()):
        pieces.append(piece["text"])
        if piece["last"]:
            docs.append({"text": "".join(pieces)})
            pieces = []
    if not docs:
        raise DataError(f"{path}: the file is empty; it needs at least one document")
    return docs


def read_records(path: str | Path, fmt: str = "auto", encoding: str = "utf-8") -> tuple[list[dict], str]:
    """Read and validate every record of one file (in ``encoding``); returns the records and the format used."""
    path = Path(path)
    if fmt not in ("auto",) + FORMATS:
        raise DataError(f"unknown data format '{fmt}'; choose auto or one of {', '.join(FORMATS)}")
    if not path.is_file():
        if path.is_dir() or any(c in str(path) for c in "*?["):
            raise DataError(f"{path}: chat data is one file; folders and globs are for raw text (or list each file "
                            "in data.sources)")
        raise DataError(f"{path}: no such data file")
    if path.suffix == ".txt" and fmt in ("auto", "text"):
        return read_text_documents(path), "text"
    from myassistant.model.llava import IMAGE_TOKEN

    records, parse, bad = [], None, []  # bad: (where, error) of each record with a problem, all said at once
    for line, obj in read_json_records(path, encoding):
        if parse is None:
            fmt = detect_format(path, obj) if fmt == "auto" else fmt
            parse = PARSERS[fmt]
        where = _Where(path, line)
        try:
            record = parse(where, obj)
            # a picture record read as text would train on the words "<image>", its picture dropped
            if picture := isinstance(obj, dict) and next((k for k in ("image", "images") if obj.get(k)), None):
                raise where.error(picture, "names a picture, and text data has none: a multimodal run reads it "
                                           "(vision.encoder set, see README \"Multimodal\")")
            if any(m["role"] == "user" and m["content"].startswith(IMAGE_TOKEN)
                   for m in record.get("messages", [])[:2]):
                raise where.error("image", f"is missing: the record opens with the {IMAGE_TOKEN} placeholder of a "
                                           "picture")
        except DataError as err:
            other = record_format(obj) if isinstance(obj, dict) else None
            if other not in (None, fmt):  # another format's record in the file: its own fields were not looked for
                err = DataError(f"{err}; this record is {other} data, and the file's format, {fmt}, was told from its "
                                "first record: one format a file")
            bad.append((line, err))
            continue
        records.append(record)
    if bad:  # the first problem, and where the others are: one run, not one a problem, to find them all
        more = (f" ({len(bad) - 1} more record(s) with problems: {', '.join(f'{path.name}:{w}' for w, _ in bad[1:6])}"
                f"{' ...' if len(bad) > 6 else ''})" if len(bad) > 1 else "")
        raise DataError(f"{bad[0][1]}{more}")
    if not records:
        raise DataError(f"{path}: the file holds no records (an empty JSON array)")
    return records, fmt
