"""Read and write sentencepiece ``tokenizer.model`` files without the sentencepiece library.

A ``tokenizer.model`` is a protobuf ``ModelProto``. We only need its pieces and a few normaliser and
trainer flags, and parsing the wire format ourselves keeps loading independent of sentencepiece:
the real InternLM2 file holds a piece with a NUL byte that sentencepiece 0.2.2 refuses to load
(google/sentencepiece#1308). Field numbers follow sentencepiece_model.proto.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

# SentencePiece.Type
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
# TrainerSpec.ModelType
UNIGRAM, BPE = 1, 2


class SpmFormatError(ValueError):
    user_error = True


@dataclass
class Piece:
    text: str
    score: float = 0.0
    type: int = NORMAL


@dataclass
class SpmModel:
    pieces: list[Piece]
    model_type: int = UNIGRAM
    byte_fallback: bool = False
    add_dummy_prefix: bool = True
    remove_extra_whitespaces: bool = True
    precompiled_charsmap: bytes = b""  # the normalisation rule (e.g. nmt_nfkc); empty = identity
    # Unparsed bytes of the trainer and normaliser specs, kept so that a rewrite preserves them.
    raw_trainer_spec: bytes = b""
    raw_normalizer_spec: bytes = b""

    def piece_to_id(self) -> dict[str, int]:
        return {p.text: i for i, p in enumerate(self.pieces)}


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise SpmFormatError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes):
    """Yield (field_number, wire_type, value) where value is int for varints, bytes otherwise."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise SpmFormatError(f"unsupported protobuf wire type {wire}")
        if pos > len(buf):
            raise SpmFormatError("truncated field")
        yield num, wire, value


def _parse_piece(buf: bytes) -> Piece:
    piece = Piece(text="")
    for num, wire, value in _fields(buf):
        if num == 1 and wire == 2:
            piece.text = value.decode("utf-8", errors="surrogateescape")
        elif num == 2 and wire == 5:
            piece.score = struct.unpack("<f", value)[0]
        elif num == 3 and wire == 0:
            piece.type = value
    return piece


def parse(data: bytes) -> SpmModel:
    model = SpmModel(pieces=[])
    for num, wire, value in _fields(data):
        if num == 1 and wire == 2:
            model.pieces.append(_parse_piece(value))
        elif num == 2 and wire == 2:
            model.raw_trainer_spec = value
            for n, w, v in _fields(value):
                if n == 3 and w == 0:
                    model.model_type = v
                elif n == 35 and w == 0:
                    model.byte_fallback = bool(v)
        elif num == 3 and wire == 2:
            model.raw_normalizer_spec = value
            for n, w, v in _fields(value):
                if n == 2 and w == 2:
                    model.precompiled_charsmap = v
                elif n == 3 and w == 0:
                    model.add_dummy_prefix = bool(v)
                elif n == 4 and w == 0:
                    model.remove_extra_whitespaces = bool(v)
    if not model.pieces:
        raise SpmFormatError("no pieces found")
    return model


def load(path: str | Path) -> SpmModel:
    path = Path(path)
    try:
        return parse(path.read_bytes())
    except SpmFormatError as err:
        raise SpmFormatError(f"{path}: not a sentencepiece model ({err})") from None


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _len_field(num: int, payload: bytes) -> bytes:
    return _encode_varint(num << 3 | 2) + _encode_varint(len(payload)) + payload


def serialize(model: SpmModel) -> bytes:
    """Write pieces plus the original trainer/normaliser specs back to protobuf bytes."""
    out = bytearray()
    for p in model.pieces:
        body = _len_field(1, p.text.encode("utf-8", errors="surrogateescape"))
        body += _encode_varint(2 << 3 | 5) + struct.pack("<f", p.score)
        body += _encode_varint(3 << 3 | 0) + _encode_varint(p.type)
        out += _len_field(1, body)
    if model.raw_trainer_spec:
        out += _len_field(2, model.raw_trainer_spec)
    if model.raw_normalizer_spec:
        out += _len_field(3, model.raw_normalizer_spec)
    return bytes(out)
