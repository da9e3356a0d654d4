"""Multi-turn conversations built from single exchanges: the identity question asked late, general
questions asked after identity turns.

A fine-tune that saw only single Q/A pairs learns "the first answer of a chat may be my name"; in a
real chat the name then spills into every later answer (issue 18: "一周有几天？" → "我是Alice，AI助手。"
once the user has asked who it is). The same builders make the training mix (``trainer.identity.generate``)
and the held-out multi-turn evaluation sets, so what is trained and what is measured are shaped alike
but never share a question. Records are OpenAI-style ``{"messages": [...]}``; an optional system
message stays first.
"""
from __future__ import annotations

import random
import re

MAX_BEFORE = 3  # exchanges before the final question: it is asked as turn 2 .. MAX_BEFORE + 1


def lang_of(text: str) -> str:
    return "zh" if re.search(r"[\u4e00-\u9fff]", text) else "en"


def exchange(record: dict) -> list[dict]:
    """The record's messages without its system message: one or more user/assistant turns."""
    return [m for m in record["messages"] if m["role"] != "system"]


def prompt_text(record: dict) -> str:
    """The user turns of a conversation, joined."""
    return " ".join(m["content"] for m in record["messages"] if m["role"] == "user")


def question(record: dict) -> str:
    """The last user message: what the record's final answer replies to."""
    return [m["content"] for m in record["messages"] if m["role"] == "user"][-1]


def after(record: dict, history: list[dict], **extra) -> dict:
    """``record`` asked after the exchanges of ``history`` (its own system message, if any, stays first)."""
    system = [m for m in record["messages"] if m["role"] == "system"]
    turns = [m for h in history for m in exchange(h)]
    fields = {k: v for k, v in record.items() if k != "messages"}
    return {**fields, "messages": system + turns + exchange(record), **extra}


def identity_late(identity: list[dict], general: list[dict], rng: random.Random, most: int = MAX_BEFORE) -> list[dict]:
    """Each identity conversation asked as turn 2..most+1, after general exchanges only."""
    if not general:
        return list(identity)
    return [after(r, rng.sample(general, min(rng.randint(1, most), len(general)))) for r in identity]


def general_after(general: list[dict], identity: list[dict], rng: random.Random,
                  most: int = MAX_BEFORE - 1) -> list[dict]:
    """Each general conversation asked after one or more identity exchanges, sometimes with a general
    exchange between (the name was said some turns ago, not only just now)."""
    if not identity:
        return list(general)
    out = []
    for record in general:
        history = rng.sample(identity, min(rng.randint(1, most), len(identity)))
        others = [g for g in general if g is not record]
        if others and rng.random() < 0.5:
            history.insert(rng.randint(1, len(history)), rng.choice(others))
        out.append(after(record, history))
    return out


def numbered(records: list[dict]) -> list[dict]:
    """Set each record's ``turn``: which user turn its final question is (1 = the first)."""
    return [{**r, "turn": sum(m["role"] == "user" for m in r["messages"])} for r in records]


def held_out_multi(eval_identity: list[dict], eval_general: list[dict], seed: int) -> tuple[list[dict], list[dict]]:
    """The held-out multi-turn sets from the held-out single-turn ones: every held-out identity question
    after 1-3 held-out general exchanges (with their reference answers), and every held-out general prompt
    after identity exchanges. Same seed, same sets; nothing in them was trained on."""
    rng = random.Random(f"multi-{seed}")
    identity = numbered(identity_late(eval_identity, eval_general, rng))
    general = numbered(general_after(eval_general, eval_identity, rng))
    return identity, general


def with_system(records: list[dict], system: str) -> list[dict]:
    """The records with ``system`` as their system message (replacing any they have)."""
    return [{**r, "messages": [{"role": "system", "content": system}] + exchange(r)} for r in records]
