"""Chat history → prompt token ids that fit the context window.

Trimming never raises: the oldest turns go first (the system prompt stays), then the last user
message is cut from the left, and as a last resort the token ids themselves are cut from the left.
"""
from __future__ import annotations

import logging
from typing import Any

from transformers import PreTrainedTokenizerBase

from .errors import EngineError

log = logging.getLogger(__name__)

Message = dict[str, Any]


def utf8_text(text: str) -> str:
    """``text`` as the tokenizer can take it: the bytes a terminal in another encoding sent (Python keeps them as lone
    surrogates, which no tokenizer encodes) and lone surrogates of JSON escapes become U+FFFD."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        log.warning("a message held bytes that are not UTF-8 text (a terminal set to another encoding?); "
                    "they are read as \ufffd")
        return text.encode("utf-8", "surrogateescape" if _escaped_only(text) else "replace").decode("utf-8", "replace")
    return text


def _escaped_only(text: str) -> bool:
    """Whether every lone surrogate of ``text`` is a byte Python's surrogateescape kept (U+DC80-U+DCFF)."""
    return all(not 0xD800 <= ord(c) <= 0xDFFF or 0xDC80 <= ord(c) <= 0xDCFF for c in text)


def message_text(content: Any) -> str:
    """Plain text of a message's content: a string, or Gradio 6 / OpenAI content parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or "")
    if isinstance(content, (list, tuple)):
        return "".join(message_text(part) for part in content)
    return str(content)


def normalize_messages(messages: list[Message], system_prompt: str | None = None) -> list[Message]:
    """{'role', 'content': str} dicts; `system_prompt` is used when the messages bring none."""
    out = [{"role": m["role"], "content": utf8_text(message_text(m.get("content")))} for m in messages]
    out = [m for m in out if m["role"] in ("system", "user", "assistant")]
    if system_prompt and not (out and out[0]["role"] == "system"):
        out.insert(0, {"role": "system", "content": utf8_text(system_prompt)})
    return out


def encode_chat(tokenizer: PreTrainedTokenizerBase, messages: list[Message]) -> list[int]:
    """Token ids of the chat template with the generation prompt (ready for the assistant's reply)."""
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    return list(encoded["input_ids"])


def _cut_last_message(tokenizer: PreTrainedTokenizerBase, messages: list[Message], budget: int) -> list[int] | None:
    """Keep the right end of the last message so that the prompt fits; None if nothing can fit."""
    head, last = messages[:-1], messages[-1]
    overhead = len(encode_chat(tokenizer, head + [{**last, "content": ""}]))
    content_ids = tokenizer(last["content"], add_special_tokens=False)["input_ids"]
    keep = budget - overhead
    # Re-encoding the cut text can merge differently at the cut; a few tries settle it.
    for _ in range(4):
        if keep <= 0:
            return None
        text = tokenizer.decode(content_ids[-keep:], skip_special_tokens=True)
        ids = encode_chat(tokenizer, head + [{**last, "content": text}])
        if len(ids) <= budget:
            return ids
        keep -= len(ids) - budget
    return None


def build_prompt(tokenizer: PreTrainedTokenizerBase, messages: list[Message], budget: int) -> tuple[list[int], int]:
    """Prompt ids of at most `budget` tokens and how many messages were dropped or cut to get there.

    `messages` are normalized (see `normalize_messages`); the last one is the user's new message.
    """
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    turns = messages[len(system) :]
    if not turns:
        turns = [{"role": "user", "content": ""}]
    # Drop whole turns from the oldest; a kept conversation starts with a user message.
    for start, message in enumerate(turns):
        if message["role"] != "user" and start < len(turns) - 1:
            continue
        ids = encode_chat(tokenizer, system + turns[start:])
        if len(ids) <= budget:
            if start:
                log.info("history trimmed: dropped the %d oldest messages to fit %d tokens", start, budget)
            return ids, start
    ids = _cut_last_message(tokenizer, system + turns[-1:], budget)
    if ids is None and system and len(alone := encode_chat(tokenizer, system + [{"role": "user", "content": ""}])) \
            >= budget:  # cut from the left, the prompt lost its start (<s>, the system turn's marker) unsaid
        raise EngineError(f"the system prompt takes {len(alone):,} of the {budget:,} tokens a prompt may have here "
                          "(the model's context less the reply's room): no room for the message; shorten it")
    if ids is None:
        ids = encode_chat(tokenizer, system + turns[-1:])[-budget:]
        log.warning("the prompt did not fit %d tokens; cut from the left", budget)
    else:
        log.info("history trimmed: kept only the last message, cut from the left to fit %d tokens", budget)
    return ids, len(turns)
