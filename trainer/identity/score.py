"""How one reply is scored by the fine-tune report, and how scores become figures (all, zh, en)."""
from __future__ import annotations

import re
import unicodedata
from collections import Counter


# Between a name's parts a reply may write any of these, or nothing: "Dr. Li" / "Dr.Li" / "dr li", "书生·浦语" /
# "书生・浦语" / "书生浦语", "AI-助手 2号" / "AI助手2号".
_SEPARATORS = "\\s.\\-_·・•‧"
_EDGE = "a-z0-9"


def _normal(text: str) -> str:
    """Full-width letters, digits and signs as their ASCII forms (ＡＩ－助手 -> AI-助手), lower-cased."""
    return unicodedata.normalize("NFKC", text).lower()


def _name_pattern(name: str) -> str:
    """The regular expression of a name in a `_normal` reply: its parts in order with any separators (or none)
    between them; its Latin letters and digits must not run on into others: "Ava" is not in "Java", "Max" not in
    "maximum", "AI" not in "said"; beside Chinese characters it counts ("我是Alice的助手"), and before digits
    ("InternLM2")."""
    name = _normal(name).strip()
    parts = [part for part in re.split(f"[{_SEPARATORS}]+", name) if part] or [name]
    pattern = f"[{_SEPARATORS}]*".join(map(re.escape, parts))
    if re.match(f"[{_EDGE}]", parts[0]):
        pattern = f"(?<![{_EDGE}])" + pattern
    if re.search(f"[{_EDGE}]$", parts[-1]):
        pattern += "(?![a-z])"  # digits may follow: "InternLM2" names InternLM
    return pattern


def says_name(reply: str, name: str, old_names: list[str]) -> bool:
    """The reply states the new name and no old identity. An old name inside the new one ("InternLM-Alice",
    "书生·浦语小助手") is the new name's, not the old identity."""
    if not mentions(reply, name):
        return False
    rest = re.sub(_name_pattern(name), " ", _normal(reply))
    return not any(mentions(rest, old) for old in old_names)


def mentions(reply: str, name: str) -> bool:
    """The reply names `name`, case, full-width forms and the separators between its parts aside (`_name_pattern`)."""
    return re.search(_name_pattern(name), _normal(reply)) is not None


def words(text: str) -> list[str]:
    """Chinese characters one by one (never run on with a number or Latin word beside them: "2加9等于11"), other
    words and numbers lower-cased; punctuation dropped."""
    return re.findall(r"[\u4e00-\u9fff]|[^\W_\u4e00-\u9fff]+", text.lower())


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
