"""How one reply is scored by the fine-tune report, and how scores become figures (all, zh, en)."""
from __future__ import annotations

import re
from collections import Counter


def says_name(reply: str, name: str, old_names: list[str]) -> bool:
    """The reply states the new name and no old identity."""
    return mentions(reply, name) and not any(mentions(reply, old) for old in old_names)


def mentions(reply: str, name: str) -> bool:
    """The reply names `name`, case aside. A name's Latin letters and digits must not run on into others: "Ava" is not
    in "Java", "Max" not in "maximum", "AI" not in "said"; beside Chinese characters it counts ("我是Alice的助手"), and
    before digits ("InternLM2")."""
    edge = "A-Za-z0-9"
    pattern = re.escape(name.lower())
    if re.match(f"[{edge}]", name):
        pattern = f"(?<![{edge}])" + pattern
    if re.search(f"[{edge}]$", name):
        pattern += "(?![A-Za-z])"  # digits may follow: "InternLM2" names InternLM
    return re.search(pattern, reply.lower()) is not None


def words(text: str) -> list[str]:
    """Chinese characters one by one, other words and numbers lower-cased; punctuation dropped."""
    return re.findall(r"[\u4e00-\u9fff]|[^\W_]+", text.lower())


def overlap(reply: str, reference: str) -> float:
    """Word-overlap F1 of a reply against a reference answer (ROUGE-1 style; 1 = the same words)."""
    got, want = Counter(words(reply)), Counter(words(reference))
    common = sum((got & want).values())
    if not common:
        return 0.0
    precision, recall = common / sum(got.values()), common / sum(want.values())
    return 2 * precision * recall / (precision + recall)


def same_answer(a: str, b: str) -> bool:
    """Two replies say the same thing word for word (case, spacing and punctuation aside)."""
    return words(a) == words(b)


def figure(scores: list[float], langs: list[str]) -> tuple[dict, dict]:
    """(mean score, prompt count), each for all prompts and per language (zh, en)."""
    value, n = {}, {}
    for lang in ("all", "zh", "en"):
        picked = [s for s, l in zip(scores, langs) if lang in ("all", l)]
        value[lang] = round(sum(picked) / len(picked), 4) if picked else None
        n[lang] = len(picked)
    return value, n
