"""Incremental detokenisation: token ids in, clean text deltas out.

Byte-fallback tokenizers (InternLM2, Llama) spell a Chinese character as up to four byte tokens
(``<0xE4><0xBD><0xA0>``); decoding after the first of them gives U+FFFD. The detokeniser holds
those tokens back until the character is complete, and decodes only a small window of recent
tokens each step (the window starts one emitted chunk back, so the space a sentencepiece token
carries in front of it is kept), never the whole reply: the cost per token stays flat.
The approach is the one of text-generation-inference / vLLM (prefix and read offsets).

`Pacer` says when a page should get the growing reply again.
"""
from __future__ import annotations

import time

from transformers import PreTrainedTokenizerBase

REPLACEMENT_CHAR = "\ufffd"


class IncrementalDetokenizer:
    """Feed generated ids one at a time with `push`; call `flush` once at the end.

    The joined deltas equal ``tokenizer.decode(ids, skip_special_tokens=True)`` of all pushed ids
    whenever that decode is valid text. With invalid byte sequences (a random or broken model) they
    may differ in the U+FFFD they show: tokenizers' ByteFallback turns a whole run of byte tokens
    into U+FFFD when any byte in it is invalid, even characters that were complete and already sent.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, *, max_pending: int = 8) -> None:
        self.tokenizer = tokenizer
        # A UTF-8 character has at most 4 bytes; a longer run that still ends in U+FFFD holds
        # invalid bytes (the full decode has U+FFFD too), so it is released rather than stalled.
        self.max_pending = max_pending
        self.ids: list[int] = []
        self._prefix_offset = 0  # start of the decode window (already emitted context)
        self._read_offset = 0  # ids before this were emitted

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def _delta(self, force: bool) -> str:
        prefix_text = self._decode(self.ids[self._prefix_offset : self._read_offset])
        new_text = self._decode(self.ids[self._prefix_offset :])
        complete = not new_text.endswith(REPLACEMENT_CHAR)
        if not (force or complete) or len(new_text) <= len(prefix_text):
            return ""
        self._prefix_offset, self._read_offset = self._read_offset, len(self.ids)
        return new_text[len(prefix_text) :]

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completes ('' while a character is incomplete)."""
        self.ids.append(token_id)
        return self._delta(force=len(self.ids) - self._read_offset > self.max_pending)

    def flush(self) -> str:
        """Release whatever is held back (an unfinished character decodes as U+FFFD, as in the full decode)."""
        if self._read_offset == len(self.ids):
            return ""
        return self._delta(force=True)


class Pacer:
    """`due()` is True at most every `every_s` seconds (the first time at once): a page re-renders the whole message
    at each update, so a decoder at hundreds of tokens/s sending every token left Chromium too busy to show the reply
    or its Stop button at ~20k characters. The caller sends the final state whether due or not."""

    def __init__(self, every_s: float = 0.05) -> None:
        self.every_s = every_s
        self.last = -float("inf")

    def due(self) -> bool:
        now = time.monotonic()
        if now - self.last < self.every_s:
            return False
        self.last = now
        return True
