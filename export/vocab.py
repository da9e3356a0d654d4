"""The tokenizer as llama.cpp's sentencepiece ("llama") vocabulary: tokens, scores, types, special ids.

llama.cpp's SPM tokeniser merges, again and again, the adjacent pair whose concatenation is a token
with the highest score. Our tokenizer (`model.load_tokenizer`) is a BPE whose merges were generated from
the sentencepiece scores, so the score of a token here is minus the rank of the first merge that makes
it: the same order sentencepiece's own scores give, read from the one tokenizer we serve with (a merged
model folder has only its tokenizer.json, no tokenizer.model). Byte pieces (``<0x0A>``) are BYTE tokens
(byte fallback), special tokens CONTROL, so llama.cpp splits them out of text as our tokenizer does.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import gguf

from myassistant.model.templates import END_OF_TURN

log = logging.getLogger(__name__)

BYTE_PIECE = "<0x{:02X}>"
NUL_STANDIN = "🐉"  # llama.cpp reads a "\x00" token as an empty string; its own converter swaps it so


class VocabError(ValueError):
    user_error = True


@dataclass
class Vocab:
    tokens: list[str]
    scores: list[float]
    types: list[int]
    add_space_prefix: bool
    special: dict[str, int] = field(default_factory=dict)  # bos, eos, eot, unk, pad -> id
    add_bos: bool = True
    chat_template: str | None = None


def _normalizer_steps(backend: dict) -> list[dict]:
    norm = backend.get("normalizer") or {}
    return norm.get("normalizers", [norm]) if norm.get("type") == "Sequence" else [norm] if norm else []


def _space_prefix(backend: dict, where: str) -> bool:
    steps = _normalizer_steps(backend)
    kinds = {s.get("type") for s in steps}
    if kinds - {"Prepend", "Replace", None}:
        raise VocabError(f"{where}: the tokenizer's normaliser ({', '.join(sorted(k for k in kinds if k))}) "
                         "has steps llama.cpp's sentencepiece tokeniser does not apply; it cannot be exported exactly")
    extra_ws = [s for s in steps if s.get("type") == "Replace" and s.get("content") != "▁"]
    if extra_ws:
        raise VocabError(f"{where}: the tokenizer removes extra whitespace, which llama.cpp does not; "
                         "it cannot be exported exactly")
    return any(s.get("type") == "Prepend" and s.get("prepend") == "▁" for s in steps)


def vocab_from_tokenizer(tokenizer, vocab_size: int, where: str = "tokenizer") -> Vocab:
    """The GGUF vocabulary of a fast tokenizer whose backend is a byte-fallback BPE over ``▁`` pieces."""
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    model = backend.get("model", {})
    if model.get("type") != "BPE" or not model.get("byte_fallback"):
        raise VocabError(f"{where}: only sentencepiece-style tokenizers (BPE with byte fallback, as InternLM2 and "
                         f"Llama 2 ship) are exported; this one is {model.get('type')}")
    pieces: dict[str, int] = dict(model["vocab"])
    for added in backend.get("added_tokens", []):
        pieces[added["content"]] = added["id"]
    if max(pieces.values()) >= vocab_size:
        raise VocabError(f"{where}: the tokenizer has ids up to {max(pieces.values())} but the model's vocab_size "
                         f"is {vocab_size}")
    rank: dict[str, int] = {}
    for i, merge in enumerate(model.get("merges", [])):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        rank.setdefault(left + right, i)
    specials = {a["content"] for a in backend.get("added_tokens", []) if a.get("special")}
    unk = model.get("unk_token")
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]  # ids the tokenizer never produces (padded vocab)
    scores = [-1e9] * vocab_size
    types = [int(gguf.TokenType.UNUSED)] * vocab_size
    bytes_pieces = {BYTE_PIECE.format(b) for b in range(256)}
    for text, i in pieces.items():
        tokens[i] = NUL_STANDIN if text == "\x00" else text
        if text == unk:
            types[i], scores[i] = gguf.TokenType.UNKNOWN, 0.0
        elif text in specials:
            types[i], scores[i] = gguf.TokenType.CONTROL, -1000.0
        elif text in bytes_pieces:
            types[i], scores[i] = gguf.TokenType.BYTE, 0.0
        else:
            types[i], scores[i] = gguf.TokenType.NORMAL, -float(rank.get(text, -1) + 1)
    special = {"bos": tokenizer.bos_token_id, "unk": tokenizer.unk_token_id, "pad": tokenizer.pad_token_id,
               "eos": tokenizer.eos_token_id}
    end = pieces.get(END_OF_TURN)
    if end is not None:
        # A chat model's turn ends at <|im_end|>: as eos and end-of-turn, llama.cpp, Ollama and LM Studio
        # stop there (with eos = </s> InternLM2 GGUFs talked on forever).
        special["eos"] = special["eot"] = end
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    post = json.dumps(backend.get("post_processor") or {})
    add_bos = tokenizer.bos_token is not None and tokenizer.bos_token in post
    return Vocab(tokens=tokens, scores=scores, types=[int(t) for t in types],
                 add_space_prefix=_space_prefix(backend, where),
                 special={k: v for k, v in special.items() if v is not None}, add_bos=add_bos, chat_template=template)


def write_vocab(writer: gguf.GGUFWriter, vocab: Vocab) -> None:
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab.tokens)
    writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    writer.add_add_space_prefix(vocab.add_space_prefix)
    adders = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id, "eot": writer.add_eot_token_id,
              "unk": writer.add_unk_token_id, "pad": writer.add_pad_token_id}
    for name, token_id in vocab.special.items():
        adders[name](token_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(False)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)
