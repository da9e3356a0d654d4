"""JSON and JSON Lines files read as records, each malformed one named by file:line (and column), with a hint for
the mistakes people make (a trailing comma, a tab or line break inside a string, records written over several
lines)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterator

from .encodings import check_encoding, decode_error, file_encoding, with_bom
from .errors import DataError


def read_text(path: Path, encoding: str = "utf-8") -> str:
    """The whole file in ``encoding`` (UTF-8: a BOM dropped); otherwise one line naming file:line and the encoding the
    bytes do decode as (the same message as raw text's)."""
    check_encoding(encoding)
    data = path.read_bytes()
    encoding = file_encoding(path, encoding, data)
    try:
        return data.decode(with_bom(encoding))
    except UnicodeDecodeError as err:
        raise decode_error(path, data, err, encoding) from None


def read_json_records(path: Path, encoding: str = "utf-8") -> Iterator[tuple[str, object]]:
    """Yield ``(where, record)`` from a JSON array or a JSON Lines file, `where` the record's line (a one-line array:
    line:column and its number); malformed JSON names file:line and the column."""
    text = read_text(path, encoding)
    if not text.strip():
        raise DataError(f"{path}: the file is empty; it needs at least one record")
    start = len(text) - len(text.lstrip())
    if text[start] == "[":
        yield from _read_array(path, text, start + 1)
        return
    if text[start] == "{" and record_continues(text[start:].split("\n", 1)[0]):
        yield from _read_objects(path, text, start)  # records written over several lines each (indent=2)
        return
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield str(lineno), json.loads(line)
        except json.JSONDecodeError as err:
            raise malformed_line(path, lineno, line, err) from None


def malformed_line(path: str | Path, lineno: int, line: str, err: json.JSONDecodeError,
                   otherwise: str = "; each line must be one complete JSON record") -> DataError:
    """The error for a JSON Lines line that does not parse: file:line, the column, and what is likely wrong."""
    what = err.msg.removesuffix(" at")  # json's "Invalid control character at": the column follows here
    hint = _comma_hint(line, err.pos, err.msg) or (
        "; a tab or line break inside a string: write it as \\t or \\n" if what == "Invalid control character"
        else otherwise)
    return DataError(f"{path}:{lineno}: malformed JSON ({what} at column {err.colno}){hint}")


def _comma_hint(text: str, pos: int, msg: str) -> str:
    """'; a trailing comma before ']'' where the parser stopped at a closing bracket after a comma (JSON has none)."""
    if msg.startswith(("Expecting value", "Expecting property name")) and text[pos:pos + 1] in ("]", "}") and \
            text[:pos].rstrip().endswith(","):
        return f"; a trailing comma before '{text[pos]}': JSON allows none, delete it"
    return ""


def record_continues(line: str) -> bool:
    """Whether a first line is the start of a record that goes on over the next lines (the parser ran out of text,
    rather than finding something wrong in it)."""
    try:
        json.loads(line)
    except json.JSONDecodeError as err:
        return err.pos >= len(line.rstrip())
    return False


def _line_col(text: str, pos: int) -> tuple[int, int]:
    return text.count("\n", 0, pos) + 1, pos - text.rfind("\n", 0, pos)


def _malformed(path: Path, text: str, pos: int, msg: str) -> DataError:
    line, col = _line_col(text, pos)
    return DataError(f"{path}:{line}: malformed JSON ({msg} at column {col}){_comma_hint(text, pos, msg)}")


def _decode(path: Path, text: str, idx: int) -> tuple[object, int]:
    try:
        return _DECODER.raw_decode(text, idx)
    except json.JSONDecodeError as err:
        raise _malformed(path, text, err.pos, err.msg) from None


_DECODER, _SPACE = json.JSONDecoder(), re.compile(r"\s*")


def _read_objects(path: Path, text: str, idx: int) -> Iterator[tuple[str, object]]:
    """JSON objects one after another, each over several lines (a pretty-printed record, or JSON Lines written with
    an indent): each record named by the line it starts on."""
    while idx < len(text):
        record, end = _decode(path, text, idx)
        yield str(_line_col(text, idx)[0]), record
        idx = _SPACE.match(text, end).end()


def _read_array(path: Path, text: str, idx: int) -> Iterator[tuple[str, object]]:
    """Walk a JSON array element by element, so that each record knows the line it starts on (and, where the whole
    array is one line, as `json.dump` writes it by default, its column and number)."""
    one_line = "\n" not in text.strip()
    idx = _SPACE.match(text, idx).end()
    if text.startswith("]", idx):
        return
    number = 0
    while True:
        record, end = _decode(path, text, idx)
        number += 1
        line, col = _line_col(text, idx)
        yield (f"{line}:{col} (record {number})" if one_line else str(line)), record
        idx = _SPACE.match(text, end).end()
        if text.startswith("]", idx):
            if text[idx + 1:].strip():
                raise _malformed(path, text, idx + 1, "extra data after the closing ']'")
            return
        if not text.startswith(",", idx):
            raise _malformed(path, text, idx, "expected ',' or ']' between records")
        idx = _SPACE.match(text, idx + 1).end()
