"""Raw-text corpora for incremental pre-training: which files, what one document is, and bad input.

A source is a file, a folder (every ``.txt``/``.jsonl``/``.json``/``.parquet`` under it, sorted) or a glob.
What a document is:
- ``.txt``: ``text_unit`` ``paragraph`` (separated by blank lines, the default), ``line`` (one per line) or
  ``file`` (the whole file);
- ``.jsonl`` / ``.json``: the ``text_field`` of each record (default ``text``);
- ``.parquet`` (what corpora ship as): the ``text_field`` column, read one row group at a time.

Files are read as a stream, never whole, so a multi-GB corpus costs memory of one piece: a document
longer than ``PIECE_CHARS`` is yielded in pieces cut at line ends (a longer line after a sentence's end or before a
space: ``_cut``), ``last`` marking its final piece (``trainer.data.blocks`` puts eos only there). A binary file, a
file that is not in ``encoding`` (the message names encodings the bytes do decode as), a glob that matches nothing
and a document set with no text stop with one ``DataError`` before anything is tokenised; a ``.txt`` whose lines
are chat records is named in a warning.
"""
from __future__ import annotations

import functools
import glob
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .encodings import SNIFF_BYTES, check_encoding, decode_error, file_encoding, is_wide, with_bom
from .formats import DataError, broken_character, record_format
from .jsonfile import malformed_line, read_json_records, record_continues

log = logging.getLogger(__name__)

TEXT_UNITS = ("paragraph", "line", "file")
SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")
# Longer documents are tokenised in pieces of at most this many characters: a tokenised batch of pieces is Python
# lists of ~36 bytes a token, so a novel handed on whole, or in pieces of 1M characters, took ~100x its size in RAM.
PIECE_CHARS = 1 << 13
_BLANK = re.compile(r"[ \t\r\f\v]*\n?")
_SENTENCE_END = re.compile(r"[。！？；]|[.!?;](?=\s)")  # "3.14" and "e.g." are no cut


@dataclass(frozen=True)
class TextSpec:
    """How to read documents out of files (the ``data.text_*`` / ``data.encoding`` settings)."""

    text_unit: str = "paragraph"
    text_field: str = "text"
    encoding: str = "utf-8"


def find_files(path: str | Path) -> list[Path]:
    """The files of a source: a file, a folder (searched recursively for known suffixes) or a glob."""
    text = str(path)
    if glob.has_magic(text):
        files = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
        if not files:
            raise DataError(f"{text}: the pattern matches no file; check the path (globs are relative to "
                            "where you run the command) ")
        return files
    p = Path(text).expanduser()
    if p.is_dir():
        found = sorted(f for f in p.rglob("*") if f.is_file()
                       and not any(part.startswith(".") for part in f.relative_to(p).parts))
        files = [f for f in found if f.suffix.lower() in SUFFIXES]
        skipped = Counter(f.suffix.lower() or "(no suffix)" for f in found if f.suffix.lower() not in SUFFIXES)
        if not files:
            raise DataError(f"{p}: the folder holds no {', '.join(SUFFIXES)} file"
                            + (f" (it holds {_count(skipped)})" if skipped else ""))
        if skipped:
            _say_skipped(str(p), _count(skipped))
        return files
    if not p.is_file():
        raise DataError(f"{p}: no such data file or folder"  # a config's relative paths: from where the command runs
                        + ("" if p.is_absolute() else f" (read from the working folder {Path.cwd()})"))
    return [p]


def _count(suffixes: Counter) -> str:
    return ", ".join(f"{n} {suffix}" for suffix, n in suffixes.most_common())


@functools.cache  # once per folder and process: a source's files are listed by every stage that reads them
def _say_skipped(folder: str, what: str) -> None:
    log.warning("%s: skipping %s file(s): a folder source reads only %s files; to train on others as text, "
                "name them with a glob (e.g. '%s/**/*.md') and data.format: text", folder, what,
                "/".join(SUFFIXES), folder)


def check_file(path: Path, spec: TextSpec) -> None:
    """Refuse a binary file or text not in ``spec.encoding``, naming the file, the line and a fix."""
    if path.suffix.lower() == ".parquet":
        return _check_parquet(path, spec)
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    check_encoding(spec.encoding)
    encoding = file_encoding(path, spec.encoding, head)
    nul = -1 if is_wide(encoding) else head.find(b"\0")  # UTF-16 / 32 text holds NUL bytes
    if nul >= 0:  # NUL: not text
        raise DataError(f"{path}: a binary file (NUL byte at offset {nul}), not text; "
                        f"training reads text files ({', '.join(SUFFIXES)})")
    try:
        text = head.decode(with_bom(encoding))
    except UnicodeDecodeError as err:
        if not (len(head) == SNIFF_BYTES and err.start >= len(head) - 4):  # (a character cut at the sample's end)
            raise decode_error(path, head, err, encoding) from None
        text = head[:err.start].decode(with_bom(encoding))
    if path.suffix.lower() == ".txt":
        _say_if_chat_records(str(path), next((line for line in text.splitlines() if line.strip()), ""))


@functools.cache  # once per file and process
def _say_if_chat_records(path: str, first_line: str) -> None:
    """A warning when a .txt file's first line is a chat record (JSON Lines saved as .txt): raw text is trained on its
    braces and keys, and the run becomes a pre-training one."""
    try:
        record = json.loads(first_line)
    except json.JSONDecodeError:
        return
    if isinstance(record, dict) and record_format(record) not in ("text", None):
        log.warning("%s: its lines are chat records (%s), but a .txt file is read as raw text, braces and keys too: "
                    "name it .jsonl to train on its chats", path, ", ".join(sorted(record)))


def _check_parquet(path: Path, spec: TextSpec) -> None:
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except Exception as err:  # noqa: BLE001 - pyarrow raises several kinds for a file that is not Parquet
        raise DataError(f"{path}: not a readable Parquet file ({err})") from None
    if spec.text_field not in schema.names:
        raise DataError(f"{path}: no column '{spec.text_field}' (columns: {', '.join(schema.names)}); "
                        "set data.text_field (`data check`: --text-field) to the column that holds the text")


# ----------------------------------------------------------------------------- documents

def iter_pieces(files: list[Path], spec: TextSpec) -> Iterator[dict]:
    """``{"text", "last"}`` rows of every document of ``files`` in order; ``last``: the document ends here."""
    for path in files:
        suffix = path.suffix.lower()
        if suffix == ".parquet":
            yield from _parquet_pieces(path, spec)
        elif suffix in (".jsonl", ".json"):
            yield from _json_pieces(path, spec)
        else:
            yield from _txt_pieces(path, spec)


def _lines(path: Path, encoding: str) -> Iterator[str]:
    """The lines of a text file (ends kept), decoding errors as ``DataError`` with the line number."""
    lineno = 0
    if is_wide(encoding):  # a line ends in 2 or 4 bytes (b"\n\0" ...): Python's text reading finds them
        try:
            with open(path, encoding=encoding, newline="") as text:
                yield from text
        except UnicodeDecodeError as err:
            raise DataError(f"{path}: not {encoding} text ({err.reason}); save it as UTF-8") from None
        return
    with open(path, "rb") as f:
        for raw in f:
            lineno += 1
            try:
                yield raw.decode(with_bom(encoding) if lineno == 1 else encoding)
            except UnicodeDecodeError as err:
                raise decode_error(path, raw, err, encoding, lineno - 1) from None


def _cut(text: str, last: bool = True) -> Iterator[dict]:
    """``text`` as pieces of at most ``PIECE_CHARS``, ``last`` on its final one. Each cut is where tokenising the
    pieces gives the tokens of the whole: after a line end, else after a sentence's end, else before a space (a
    piece's first word keeps its leading space); only a run of that length with none of these is cut anywhere."""
    while len(text) > PIECE_CHARS:
        cut = _cut_at(text[:PIECE_CHARS])
        yield {"text": text[:cut], "last": False}
        text = text[cut:]
    yield {"text": text, "last": last}


def _cut_at(head: str) -> int:
    if line := head.rfind("\n") + 1:
        return line
    if ends := [m.end() for m in _SENTENCE_END.finditer(head)]:
        return ends[-1]
    space = max(head.rfind(" "), head.rfind("\t"))
    return space if space > 0 else len(head)


def _txt_pieces(path: Path, spec: TextSpec) -> Iterator[dict]:
    if spec.text_unit == "line":
        for line in _lines(path, file_encoding(path, spec.encoding)):
            if line.strip():
                yield from _cut(line.rstrip("\r\n"))
        return
    buf: list[str] = []
    size, cut = 0, False  # cut: pieces of the current document were handed on already

    def end() -> Iterator[dict]:
        text = "".join(buf)
        if spec.text_unit == "paragraph":
            text = text.rstrip() if cut else text.strip()
        if text or cut:  # a cut document's last piece may be empty; it still ends the document
            yield from _cut(text)

    for line in _lines(path, file_encoding(path, spec.encoding)):
        if spec.text_unit == "paragraph" and _BLANK.fullmatch(line):
            yield from end()
            buf, size, cut = [], 0, False
            continue
        buf.append(line)
        size += len(line)
        if size >= PIECE_CHARS:  # one long document: hand it on in pieces cut at line ends
            head = "".join(buf)
            yield from _cut(head.lstrip() if spec.text_unit == "paragraph" and not cut else head, last=False)
            buf, size, cut = [], 0, True
    yield from end()


def _field(path: Path, where: str, record: object, spec: TextSpec) -> str:
    if not isinstance(record, dict):
        raise DataError(f"{path}:{where}: the record must be a JSON object with a '{spec.text_field}' field")
    value = record.get(spec.text_field)
    if not isinstance(value, str):
        found = ", ".join(sorted(record)) or "none"
        problem = ("is missing" if spec.text_field not in record else "is null" if value is None
                   else f"must be a string, got {type(value).__name__}")
        raise DataError(f"{path}:{where}: field '{spec.text_field}' {problem} (keys: {found}); "
                        "set data.text_field (`data check`: --text-field) to the field that holds the text")
    if broken := broken_character(value):
        raise DataError(f"{path}:{where}: field '{spec.text_field}' {broken}")
    return value


def _first_line(path: Path, encoding: str) -> str:
    """The file's first line that is not blank ("" for none), the rest unread."""
    lines = _lines(path, encoding)
    try:
        return next((line for line in lines if line.strip()), "")
    finally:
        lines.close()


def _json_pieces(path: Path, spec: TextSpec) -> Iterator[dict]:
    encoding = file_encoding(path, spec.encoding)
    # a JSON array, or records written over several lines each (indent=2): read whole, as chat data is; JSON Lines,
    # the format for big data, streams a line at a time
    if path.suffix.lower() == ".json" or record_continues(_first_line(path, encoding)):
        for line, record in read_json_records(path, encoding):
            text = _field(path, line, record, spec)
            if text.strip():
                yield from _cut(text)
        return
    for lineno, line in enumerate(_lines(path, encoding), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise malformed_line(path, lineno, line, err) from None
        text = _field(path, str(lineno), record, spec)
        if text.strip():  # an empty document adds nothing (not even its eos)
            yield from _cut(text)


def _parquet_pieces(path: Path, spec: TextSpec) -> Iterator[dict]:
    import pyarrow.parquet as pq

    _check_parquet(path, spec)
    with pq.ParquetFile(path) as f:
        row = 0
        for batch in f.iter_batches(batch_size=1024, columns=[spec.text_field]):
            for value in batch.column(0).to_pylist():
                row += 1
                if value is not None and not isinstance(value, str):
                    raise DataError(f"{path}: row {row}: column '{spec.text_field}' holds {type(value).__name__}, not text")
                if value and value.strip():
                    yield from _cut(value)


def fingerprint(files: list[Path]) -> list[tuple[str, int, int]]:
    """What identifies the files' contents for the token cache: path, size, modification time."""
    out = []
    for f in files:
        st = f.stat()
        out.append((str(f.resolve()), st.st_size, st.st_mtime_ns))
    return out
