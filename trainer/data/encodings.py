"""Text encodings of data files: which codec a file is read with, and the one-line error, with the encodings its
bytes do read as, when it is not in the one data.encoding names.

gb18030 and its like decode almost any bytes without an error, so "it decodes as X" alone misled (Big5 text read
as gb18030 trains on garbled characters): ``decode_error`` names the candidates whose decoding is made of that
encoding's common characters (``_plausible``), the likeliest first.
"""
from __future__ import annotations

import functools
import logging
import re
from pathlib import Path

from .errors import DataError

log = logging.getLogger(__name__)

SNIFF_BYTES = 1 << 20  # read up front to refuse binary and wrongly-encoded files before any work
# Encodings a non-UTF-8 text file commonly is, tried in order to name one in the error.
CANDIDATE_ENCODINGS = ("utf-8", "gb18030", "big5", "shift_jis", "euc-kr", "cp1252")


def is_wide(encoding: str) -> bool:
    """UTF-16 / UTF-32: a line ends in more than one byte, so such a file is read as text, not split at newline
    bytes."""
    import codecs

    return codecs.lookup(encoding).name.startswith(("utf-16", "utf-32"))


def with_bom(encoding: str) -> str:
    """The codec that reads ``encoding``: for UTF-8 the one that drops a byte-order mark (a BOM is no JSON or text)."""
    return "utf-8-sig" if _is_utf8(encoding) else encoding


def _is_utf8(encoding: str) -> bool:
    return encoding.lower().replace("_", "-") in ("utf-8", "utf8", "utf-8-sig")


def unknown_encoding(encoding: str, setting: str = "data.encoding") -> str | None:
    """The one line for an encoding name Python does not know, naming the setting; None for a known one."""
    import codecs

    try:
        codecs.lookup(encoding)
    except LookupError:
        return f"{setting}: {encoding!r} is not an encoding Python knows (e.g. utf-8, gb18030)"
    return None


def check_encoding(encoding: str) -> None:
    """Refuse an encoding name Python does not know, naming the setting."""
    if problem := unknown_encoding(encoding):
        raise DataError(problem)


def file_encoding(path: Path, encoding: str, head: bytes | None = None) -> str:
    """The codec ``path`` is read with: ``encoding``, except that a file whose bytes are UTF-8 text with non-ASCII
    characters is read as UTF-8 (and said once). gb18030 and the like decode UTF-8 bytes without an error, into other
    characters, so a UTF-8 file in a folder whose data.encoding names the others' encoding was trained on garbled.
    A UTF-16 byte-order mark (Windows Notepad's "Unicode" save) is read as UTF-16 whatever the setting says.
    ``head``: the file's first bytes (``SNIFF_BYTES``, or all of it); where those are ASCII the rest is looked through
    for its first other bytes (a UTF-8 file whose Chinese starts after its first MiB)."""
    if head is None:
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) and not head.startswith(b"\xff\xfe\0\0"):
        return "utf-16"  # the codec reads the mark and its byte order
    if _is_utf8(encoding):
        return encoding
    sample = _first_non_ascii(path, len(head)) if head.isascii() and len(head) >= SNIFF_BYTES else head
    if sample.isascii() or not _decodes(sample, "utf-8"):
        return encoding
    _say_utf8(str(path), encoding)
    return "utf-8"


def _first_non_ascii(path: Path, start: int) -> bytes:
    """The ``SNIFF_BYTES`` of ``path`` from its first non-ASCII byte after ``start`` (b"" for an ASCII file)."""
    with open(path, "rb") as f:
        f.seek(start)
        while chunk := f.read(SNIFF_BYTES):
            if not chunk.isascii():
                first = next(i for i, byte in enumerate(chunk) if byte >= 0x80)
                return chunk[first:] + f.read(first)
    return b""


@functools.cache  # once per file and process
def _say_utf8(path: str, encoding: str) -> None:
    log.warning("%s: read as UTF-8, not data.encoding %s: it is UTF-8 text, which %s would turn into other characters",
                path, encoding, encoding)


def decode_error(path: Path, data: bytes, err: UnicodeDecodeError, encoding: str, line_offset: int = 0) -> DataError:
    """One line: file:line, the byte, and the encodings the bytes read as, likeliest first (or what to do)."""
    line = line_offset + data[: err.start].count(b"\n") + 1
    scores = {e: _plausible(data, e) for e in CANDIDATE_ENCODINGS if e != encoding and _decodes(data, e)}
    likely = sorted((e for e, score in scores.items() if score >= 0.8), key=lambda e: -scores[e])
    flag = "`data check` / `data identity`: --encoding"
    hint = (f"it reads as {likely[0]}{' (or ' + ', '.join(likely[1:]) + ')' if likely[1:] else ''}: set "
            f"data.encoding={likely[0]} ({flag} {likely[0]}), or save the file as UTF-8" if likely else
            f"save it as UTF-8, or set data.encoding ({flag}) to the file's encoding")
    return DataError(f"{path}:{line}: not {encoding} text (byte 0x{data[err.start]:02x}: {err.reason}); {hint}")


def _decodes(data: bytes, encoding: str) -> bool:
    try:
        data.decode(encoding)
    except UnicodeDecodeError as err:
        return err.start >= len(data) - 4  # only a character cut at the end
    return True


# Where each candidate's common characters are (its byte ranges): a decoding made of them is likely the file's; Big5
# or Shift_JIS text read as gb18030 comes out as rare hanzi, kana and Cyrillic among them
_COMMON = {
    "gb18030": ("gb2312", lambda b: 0xA1 <= b[0] <= 0xA3 or 0xB0 <= b[0] <= 0xD7),  # symbols, level-1 hanzi
    "big5": ("big5", lambda b: 0xA1 <= b[0] <= 0xA3 or b"\xa4\x40" <= b <= b"\xc6\x7e"),  # symbols, 常用字
    "shift_jis": ("shift_jis", lambda b: 0x81 <= b[0] <= 0x84 or 0x88 <= b[0] <= 0x98),  # symbols, kana, level 1
    "euc-kr": ("euc-kr", lambda b: 0xA1 <= b[0] <= 0xA2 or 0xB0 <= b[0] <= 0xC8),  # symbols, common Hangul
    "cp1252": ("cp1252", lambda b: b[0] >= 0xC0 or b in (b"\x80", b"\x91", b"\x92", b"\x93", b"\x94", b"\x96",
                                                          b"\x97", b"\x85")),  # accented letters, quotes, dashes
}


def _plausible(data: bytes, encoding: str) -> float:
    """The share of ``data``'s non-ASCII characters, decoded as ``encoding``, that are common in it (UTF-8, whose
    multi-byte form other text rarely has by chance: 1)."""
    if encoding == "utf-8":
        return 1.0
    codec, common = _COMMON[encoding]
    text = data.decode(encoding, errors="ignore")
    wide = [c for c in text if ord(c) >= 0x80]
    share = sum(map(common, _encoded(wide, codec))) / max(len(wide), 1)
    if encoding != "euc-kr":  # Chinese and Japanese put no spaces between words; Korean (read as gb18030: hanzi) does
        spaced = len(re.findall(r"[^\x00-\x7f] [^\x00-\x7f]", text))
        share *= max(0.0, 1 - 3 * spaced / max(len(wide), 1))
    return share


def _encoded(chars: list[str], codec: str) -> list[bytes]:
    """Each of ``chars`` as ``codec`` writes it, those it has no bytes for left out."""
    out = []
    for char in chars:
        try:
            out.append(char.encode(codec))
        except UnicodeEncodeError:
            pass
    return out
