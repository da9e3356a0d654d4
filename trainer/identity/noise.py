"""Noise for the identity data's questions ("easy data augmentation"): one word added, dropped or
swapped for a word of the general questions, so a small model keys on the words that make a question
about itself rather than on whole wordings, and answers wordings it never saw."""
from __future__ import annotations

import random
import re

from .probes import lang_of, prompt_text


def tokens(text: str, lang: str = "zh") -> list[str]:
    """Words and punctuation of a question: in Chinese each character is a word, in English a run of
    Chinese characters is one (a name such as 书生·浦语 inside an English question stays whole)."""
    cjk = r"[\u4e00-\u9fff]" if lang == "zh" else r"[\u4e00-\u9fff][\u4e00-\u9fff·]*"
    return re.findall(cjk + r"|[^\W_]+(?:'[a-z]+)?|[^\w\s]", text)


def join(words: list[str], lang: str) -> str:
    if lang == "zh":
        return "".join(words)
    return re.sub(r" (?=[^\w\s])", "", " ".join(words))


def with_noise(question: str, lang: str, pool: list[str], rng: random.Random,
               ops: tuple[str, ...] = ("insert", "drop", "replace")) -> str:
    """The question with one word inserted, dropped or replaced (a word of ``pool``); punctuation stays."""
    words = tokens(question, lang)
    spots = [i for i, w in enumerate(words) if re.match(r"\w", w)]
    if not spots or not pool:
        return question
    op, at = rng.choice(ops), rng.choice(spots)
    if op == "drop" and len(spots) > 2:
        del words[at]
    elif op == "replace" and len(spots) > 2:
        words[at] = rng.choice(pool)
    else:
        words.insert(at + rng.randint(0, 1), rng.choice(pool))
    return join(words, lang)


def with_noisy_questions(record: dict, share: float, words: dict[str, list[str]], rng: random.Random) -> dict:
    """A general conversation whose user turns get a word inserted (``share`` of the time), so noise is not
    what tells an identity question from a general one. Only inserted: a dropped or swapped word would
    make the answer wrong ("18 plus 1" asked as "18 plus")."""
    if not share or rng.random() >= share:
        return record

    def noisy(text: str) -> str:
        lang = lang_of(text)
        return with_noise(text, lang, words.get(lang, []), rng, ("insert",))

    return {**record, "messages": [dict(m, content=noisy(m["content"])) if m["role"] == "user" else m
                                   for m in record["messages"]]}


def question_words(records: list[dict]) -> dict[str, list[str]]:
    """The distinct words of the user turns, per language (sorted: the same data for the same seed)."""
    found: dict[str, set[str]] = {}
    for r in records:
        text = prompt_text(r)
        lang = lang_of(text)
        found.setdefault(lang, set()).update(w for w in tokens(text, lang) if re.match(r"\w", w))
    return {lang: sorted(words) for lang, words in found.items()}
