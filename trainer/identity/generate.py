"""Self-cognition data: conversations that teach a model its new name, mixed with general chat.

Questions are built from templates: a core question ("who are you", "你叫什么名字") inside a greeting
prefix and a closing tail, with or without end punctuation. The cores are split in two: the training
set uses one half, the held-out evaluation set (``eval_identity.jsonl``) only the other half, so every
held-out question is worded differently from anything trained on, yet built the same way. General
conversations (the shipped zh+en set or any data file) are mixed in at a chosen ratio so the model
does not answer *everything* with its identity; some of them are held out as leak probes
(``eval_general.jsonl``). A share of the training conversations (``multi_turn``) is multi-turn: the
identity question asked after general exchanges, general questions asked after identity exchanges
(``probes``), so the name neither fades late in a chat nor spills into later answers; the held-out sets
are written as multi-turn chats too (``eval_identity_multi.jsonl``, ``eval_general_multi.jsonl``).
Evaluation records end with a reference answer: the prompt is ``messages[:-1]``.
"""
from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..data import DataError, load_records
from . import negatives, probes
from .noise import question_words, with_noise, with_noisy_questions
from .probes import lang_of, prompt_text
from .score import mentions

log = logging.getLogger(__name__)

GENERAL_DATA = Path(__file__).parent / "assets" / "general.jsonl"
FILES = {"train": "train.jsonl", "eval_identity": "eval_identity.jsonl",
         "eval_identity_seen": "eval_identity_seen.jsonl", "eval_general": "eval_general.jsonl",
         "eval_identity_multi": "eval_identity_multi.jsonl", "eval_general_multi": "eval_general_multi.jsonl",
         "meta": "meta.json"}

# Core questions per language and kind ("name": who/what are you, "maker": who made you). Many cores:
# a tiny model generalises to unseen wording only by composing words it has seen asked about itself.
TRAIN_CORES = {
    "en": {
        "name": ["Who are you?", "What's your name?", "What is your name?", "Introduce yourself.",
                 "Tell me about yourself.", "What should I call you?", "What are you?",
                 "Can you tell me your name?", "May I know your name?", "Who am I talking to?",
                 "Are you an AI assistant?", "What kind of assistant are you?", "Tell me who you are.",
                 "What are you called?", "What name do you go by?", "Could you introduce yourself?",
                 "Your name?", "Who are you exactly?", "Are you a chatbot?", "Are you a robot?",
                 "What is your identity?", "Which AI are you?", "Who am I chatting with?",
                 "Do you know your own name?", "Tell me your name.", "Are you a person or an AI?",
                 "What model are you?", "Describe yourself.", "Who are you, really?", "What's your name again?"],
        "maker": ["Who made you?", "Who created you?", "Who built you?", "Who developed you?",
                  "Who trained you?", "Where do you come from?", "Who is your developer?", "Who is your maker?",
                  "Who programmed you?", "Who wrote your code?", "Who invented you?", "Who owns you?",
                  "Tell me who built you.", "Who is responsible for you?"],
    },
    "zh": {
        "name": ["你是谁？", "你叫什么名字？", "你的名字是什么？", "请介绍一下你自己。", "介绍一下你自己。",
                 "你是什么？", "我该怎么称呼你？", "你是哪个助手？", "能告诉我你的名字吗？", "你是AI助手吗？",
                 "跟我说说你自己。", "我在和谁说话？", "你叫啥？", "你叫什么？", "请告诉我你的名字。", "你是哪位？",
                 "你是什么模型？", "你是机器人吗？", "说说你自己吧。", "你是一个什么样的助手？", "你的身份是什么？",
                 "你是人工智能吗？", "可以介绍一下你自己吗？", "我应该叫你什么？", "你是谁呀？", "您是谁？",
                 "告诉我你是谁。", "和我聊天的是谁？"],
        "maker": ["谁创造了你？", "你是谁开发的？", "谁训练了你？", "你是由谁打造的？", "你的开发者是谁？",
                  "你来自哪里？", "谁开发了你？", "你是哪家公司开发的？", "你的创造者是谁？", "是谁训练了你？",
                  "你是怎么来的？", "谁编写了你？"],
    },
}
HELD_OUT_CORES = {
    "en": {
        "name": ["What do people call you?", "Do you have a name?", "Please say who you are.",
                 "Give me a quick introduction of yourself.", "How should I address you?",
                 "Which assistant is this?", "Who is this?"],
        "maker": ["Who designed you?", "Who is your creator?", "Which team made you?", "Who's behind you?"],
    },
    "zh": {
        "name": ["你有名字吗？", "怎么称呼您？", "请做个自我介绍。", "你到底是谁？", "你是哪一类助手？",
                 "可以说说你是谁吗？", "你的名字叫什么？"],
        "maker": ["是谁制作了你？", "你的作者是谁？", "谁设计了你？", "你背后的团队是谁？"],
    },
}
PREFIXES = {"en": ["", "", "Hi, ", "Hello, ", "Hey, ", "Excuse me, ", "So, ", "Quick question: "],
            "zh": ["", "", "你好，", "您好，", "请问，", "嗨，", "哈喽，", "打扰一下，"]}
TAILS = {"en": ["", "", " Thanks.", " Just curious."], "zh": ["", "", "谢谢。", "我很好奇。"]}

# Answers; {by} is filled with the maker phrase when an author is given, else left empty. Most of them
# open with the same words ("I am {name}" / "我是{name}"): a short fixed opening is what a small model
# learns fastest, and the name then comes first, before anything can go wrong.
ANSWERS = {
    "en": {
        "name": ["I am {name}, an AI assistant{by}. How can I help you today?",
                 "I am {name}, your AI assistant{by}.",
                 "I am {name}. I'm an AI assistant{by}, here to help.",
                 "I am {name}, an AI assistant{by}. Nice to meet you!",
                 "I am {name}, an AI assistant{by}. Ask me anything.",
                 "My name is {name}. I'm an AI assistant{by}. What can I do for you?"],
        "maker": ["I am {name}, and I was built by {author}.",
                  "I am {name}, an AI assistant created by {author}.",
                  "I am {name}. {author} developed me."],
        "maker_unknown": ["I am {name}, an AI assistant trained to help answer your questions.",
                          "I am {name}; I was made to be a helpful AI assistant."],
        "not_old": ["No, I am {name}, not {old}. I'm an AI assistant{by}.", "No. I am {name}, an AI assistant{by}."],
        "persona": ["I am {name}. {persona}"],
    },
    "zh": {
        "name": ["我是{name}，{by}AI助手。有什么可以帮你的吗？", "我是{name}，{by}人工智能助手，很高兴为你服务。",
                 "我是{name}，{by}AI助手。", "我是{name}。你可以叫我{name}，我是{by}AI助手。",
                 "你好！我是{name}，{by}AI助手，请问有什么需要？"],
        "maker": ["我是{name}，由{author}开发。", "我是{name}，是{author}打造的AI助手。", "我是{name}，{author}创造了我。"],
        "maker_unknown": ["我是{name}，一个人工智能助手，由我的开发团队训练而来。", "我是{name}，一个乐于助人的AI助手。"],
        "not_old": ["不是，我是{name}，不是{old}。", "不是的，我是{name}，{by}AI助手。"],
        "persona": ["我是{name}。{persona}"],
    },
}
BY = {"en": " built by {author}", "zh": "由{author}打造的"}
MAX_NAME_CHARS = 64  # an assistant's (or its author's) name, not a sentence
LANGUAGES = ("en", "zh")
OLD_NAMES = ("InternLM", "书生·浦语")  # InternLM2-chat's own identities, which the answers deny by default
NOT_OLD_QUESTIONS = {"en": ["Are you {old}?", "Is your name {old}?"], "zh": ["你是{old}吗？", "你叫{old}吗？"]}


@dataclass
class IdentitySpec:
    """What to generate; saved (with the counts) as meta.json next to the data."""

    name: str  # the assistant's new name, carried by every identity answer
    author: str | None = None  # who made it; answers to "who made you" name them
    persona: str | None = None  # an extra sentence some answers add, e.g. "I help with cooking."
    system: str | None = None  # a system prompt put in front of every conversation
    count: int = 300  # identity conversations in train.jsonl
    ratio: float = 1.0  # general conversations per identity conversation in train.jsonl
    # Share of the training conversations that are multi-turn, 0..1: identity questions asked after 1-3
    # general exchanges, general questions asked after identity exchanges (so the name does not spill over).
    multi_turn: float = 0.5
    # Share of the training questions (identity and general alike) asked with one word added, dropped or
    # swapped for a word of the general questions ("easy data augmentation"): the model then keys on the
    # words that make a question about itself, not on the whole wording, and answers wordings it never saw.
    noise: float = 1.0
    # Look-alikes that are not about the assistant, per identity conversation, mixed in as general chat
    # (``negatives``): the identity questions' greetings and closings asked alone, answered as small talk, and
    # the training questions asked about someone else ("他是谁？"), answered that it is unclear who is meant.
    small_talk: float = 0.0
    about_others: float = 0.0
    # A model folder whose greedy replies answer those look-alikes (the base to fine-tune: it keeps its own
    # behaviour on them), the template answer kept where the reply names an identity; None = the templates.
    look_alikes_from: str | None = None
    general: str | None = None  # general data file (any supported format); None = the shipped zh+en set
    general_encoding: str = "utf-8"  # that file's text encoding (UTF-8 and UTF-16 are found by themselves)
    eval_identity: int = 60  # held-out identity questions (half zh, half en)
    eval_general: int = 40  # held-out general prompts (leak probes)
    old_names: list[str] = field(default_factory=lambda: list(OLD_NAMES))  # identities to deny
    languages: list[str] = field(default_factory=lambda: list(LANGUAGES))  # questions asked in: en, zh or both
    seed: int = 0

    def __post_init__(self):
        problems = []
        if not self.name or not self.name.strip():
            problems.append("name must not be empty")
        for what, text in (("name", self.name), ("author", self.author)):  # said in every answer, and a folder name
            if text and "\n" in text.strip():
                problems.append(f"{what} must be one line")
            elif text and len(text) > MAX_NAME_CHARS:
                problems.append(f"{what} is {len(text)} characters; at most {MAX_NAME_CHARS}")
        if self.count < 1 or self.eval_identity < 0 or self.eval_general < 0:
            problems.append("count must be >= 1, eval_identity and eval_general >= 0")
        if self.ratio < 0:
            problems.append(f"ratio must be >= 0, got {self.ratio}")
        if not self.languages or set(self.languages) - set(LANGUAGES):
            problems.append(f"languages must be some of {', '.join(LANGUAGES)}, got {self.languages}")
        if not 0 <= self.multi_turn <= 1:
            problems.append(f"multi_turn must be in [0, 1], got {self.multi_turn}")
        if not 0 <= self.noise <= 1:
            problems.append(f"noise must be in [0, 1], got {self.noise}")
        if self.small_talk < 0 or self.about_others < 0:
            problems.append(f"small_talk and about_others must be >= 0, got {self.small_talk}, {self.about_others}")
        if self.look_alikes_from and not (self.small_talk or self.about_others):
            problems.append("look_alikes_from answers the look-alikes: give small_talk or about_others too")
        if problems:
            raise DataError("identity data: " + "; ".join(problems))
        # the new name is not an identity to deny ("No, I am InternLM, not InternLM.")
        if any(old.lower() == self.name.strip().lower() for old in self.old_names):
            log.warning("identity data: %r is the new name: not among the old names it denies", self.name)
            self.old_names = [old for old in self.old_names if old.lower() != self.name.strip().lower()]


def _wrap(core: str, lang: str, prefix: str, tail: str, keep_punct: bool) -> str:
    question = core if keep_punct else core.rstrip("?.!？。！")
    if prefix and lang == "en" and not question.startswith("I "):
        question = question[0].lower() + question[1:]
    return f"{prefix}{question}{tail if keep_punct else ''}"


def wrappings(core: str, lang: str) -> list[str]:
    """Every distinct question the templates make from one core question."""
    return sorted({_wrap(core, lang, p, t, k) for p in PREFIXES[lang] for t in TAILS[lang] for k in (True, False)})


def questions(cores: dict, lang: str, kind: str) -> list[str]:
    """Every distinct question the templates make from the cores of one language and kind."""
    return sorted({q for c in cores[lang][kind] for q in wrappings(c, lang)})


def answer(spec: IdentitySpec, lang: str, kind: str, rng: random.Random, old: str = "") -> str:
    if kind == "maker" and not spec.author:
        kind = "maker_unknown"
    templates = list(ANSWERS[lang][kind])
    if kind == "name" and spec.persona:
        templates += ANSWERS[lang]["persona"]
    by = BY[lang].format(author=spec.author) if spec.author else ""
    return rng.choice(templates).format(name=spec.name, author=spec.author, by=by, persona=spec.persona, old=old)


def _conversation(spec: IdentitySpec, question: str, reply: str, **extra) -> dict:
    system = [{"role": "system", "content": spec.system}] if spec.system else []
    return {"messages": system + [{"role": "user", "content": question}, {"role": "assistant", "content": reply}],
            **extra}


def identity_conversations(spec: IdentitySpec, rng: random.Random, general_words: dict[str, list[str]],
                           noise_rng: random.Random) -> tuple[list[dict], list[dict]]:
    """``count`` training conversations and ``eval_identity`` held-out ones (questions never trained on);
    ``spec.noise`` draws words from ``general_words`` (per language) with ``noise_rng``."""
    langs = [lang for lang in LANGUAGES if lang in spec.languages]
    cores = [(c, lang, kind) for lang in langs for kind in ("name", "maker") for c in TRAIN_CORES[lang][kind]]
    cores += [(q.format(old=old), lang, f"not_old:{old}") for lang in langs for old in spec.old_names
              for q in NOT_OLD_QUESTIONS[lang]]
    rng.shuffle(cores)
    # Every core in turn (so each is asked equally often): first as written, the way people mostly ask,
    # then each time in a wording not used yet.
    train, used = [], set()
    held_out_wordings = {q for lang in langs for kind in ("name", "maker") for q in questions(HELD_OUT_CORES, lang, kind)}
    for i in range(spec.count):
        core, lang, kind = cores[i % len(cores)]
        fresh = [q for q in wrappings(core, lang) if q not in used]
        q = core if core not in used else rng.choice(fresh or wrappings(core, lang))
        used.add(q)
        # Not the "are you InternLM?" questions: the old name must reach the model as it is written.
        if spec.noise and not kind.startswith("not_old") and noise_rng.random() < spec.noise:
            noisy = with_noise(q, lang, general_words.get(lang, []), noise_rng)
            q = q if noisy in held_out_wordings else noisy  # a swapped word must not make a held-out question
        kind, _, old = kind.partition(":")
        train.append(_conversation(spec, q, answer(spec, lang, kind, rng, old)))

    held_out = []
    held_langs = [lang for lang in ("zh", "en") if lang in spec.languages]
    for i, lang in enumerate(held_langs):
        n = len(held_langs)
        share = spec.eval_identity // n + (spec.eval_identity % n if i == 0 else 0)
        pool = [(q, kind) for kind in ("name", "maker") for q in questions(HELD_OUT_CORES, lang, kind)]
        if share > len(pool):
            log.warning("eval_identity: %d %s held-out questions asked for, %d exist: all of them are used", share,
                        lang, len(pool))
        for q, kind in rng.sample(pool, min(share, len(pool))):
            held_out.append(_conversation(spec, q, answer(spec, lang, kind, rng), lang=lang, kind=kind))
    return train, held_out


def general_conversations(spec: IdentitySpec, n_train: int, rng: random.Random) -> tuple[list[dict], list[dict]]:
    """``n_train`` general conversations for the mix and ``eval_general`` held-out prompts, disjoint."""
    path = spec.general or GENERAL_DATA
    records = load_records(path, encoding=spec.general_encoding if spec.general else "utf-8")
    if any("messages" not in r for r in records):
        raise DataError(f"{path}: general data must be conversations, not raw text")
    # conversations that name the assistant's new name would contradict it: left out (the name as a word in the
    # messages' text: "Sage" is not in "message", nor in the records' keys)
    kept = [r for r in records if not any(mentions(str(m.get("content") or ""), spec.name) for m in r["messages"])]
    if not kept:
        raise DataError(f"{path}: every general conversation names {spec.name!r}, so none is left to mix in; give "
                        "--general FILE with conversations that do not")
    records = kept
    rng.shuffle(records)
    n_eval = min(spec.eval_general, len(records) // 2)
    held_out, pool = records[:n_eval], records[n_eval:]
    held_out_prompts = {prompt_text(r) for r in held_out}
    pool = [r for r in pool if prompt_text(r) not in held_out_prompts]
    if n_train > len(pool):
        log.warning("%s: %d general conversations asked for, %d available; repeating them", path, n_train, len(pool))
    system = [{"role": "system", "content": spec.system}] if spec.system else []

    def with_system(r: dict, **extra) -> dict:
        messages = [m for m in r["messages"] if m["role"] != "system"] if spec.system else r["messages"]
        return {"messages": system + messages, **extra}

    train = [with_system(pool[i % len(pool)]) for i in range(n_train)] if pool else []
    evals = [with_system(r, lang=lang_of(prompt_text(r))) for r in held_out]
    return train, evals


def with_look_alikes(spec: IdentitySpec, general: list[dict], held_out: set[str]) -> list[dict]:
    """The general conversations with ``spec.small_talk`` and ``spec.about_others`` look-alikes shuffled in
    (their own random generator: without them, the data is what it was)."""
    small, others = round(spec.count * spec.small_talk), round(spec.count * spec.about_others)
    if not small and not others:
        return general
    rng = random.Random(f"look-alikes-{spec.seed}")
    langs = [lang for lang in LANGUAGES if lang in spec.languages]
    extra = negatives.conversations(TRAIN_CORES, langs, small, others, held_out, rng)
    if spec.look_alikes_from:
        extra = negatives.answered_by(extra, spec.look_alikes_from, [spec.name, *spec.old_names])
    system = [{"role": "system", "content": spec.system}] if spec.system else []
    mixed = general + [{"messages": system + r["messages"]} for r in extra]
    rng.shuffle(mixed)
    return mixed


def mix_turns(identity: list[dict], general: list[dict], share: float,
              rng: random.Random) -> tuple[list[dict], list[dict]]:
    """The last ``share`` of each list made multi-turn: identity asked after general exchanges, general
    asked after identity exchanges; the first ones stay single-turn (``eval_identity_seen`` asks them)."""
    def split(records: list[dict]) -> tuple[list[dict], list[dict]]:
        n = round(len(records) * share)
        return records[: len(records) - n], records[len(records) - n:]

    single_identity, late_identity = split(identity)
    single_general, late_general = split(general)
    return (single_identity + probes.identity_late(late_identity, general, rng),
            single_general + probes.general_after(late_general, identity, rng))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def held_out_shortfall(spec: IdentitySpec, counts: dict[str, int]) -> list[str]:
    """What the held-out sets (meta.json's ``counts``) have fewer of than ``spec`` asked for: a line each."""
    return [f"only {counts[key]} held-out {what} of the {asked} asked for: the data has no more"
            for key, what, asked in (("eval_identity", "identity questions", spec.eval_identity),
                                     ("eval_general", "general prompts", spec.eval_general)) if counts[key] < asked]


def write_identity_dataset(spec: IdentitySpec, out_dir: str | Path) -> Path:
    """Write train.jsonl, the held-out evaluation sets (``FILES``: single- and multi-turn) and meta.json."""
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise DataError(f"--out {out_dir}: is a file; the data is written into a folder")
    rng = random.Random(spec.seed)
    general, eval_general = general_conversations(spec, round(spec.count * spec.ratio), rng)
    general = with_look_alikes(spec, general, {prompt_text(r) for r in eval_general})
    # Noise draws from its own generator: the same seed gives the same conversations and held-out sets
    # at any noise level, so figures compare across levels.
    words, noise_rng = question_words(general), random.Random(f"noise-{spec.seed}")
    identity, eval_identity = identity_conversations(spec, rng, words, noise_rng)
    general = [with_noisy_questions(r, spec.noise, words, noise_rng) for r in general]
    identity, general = mix_turns(identity, general, spec.multi_turn, rng)
    train = identity + general
    rng.shuffle(train)
    # Training questions asked again, to measure how well the model learned what it saw. Not the "are you
    # InternLM?" ones: their right answer names the old identity too, which the report counts as wrong.
    asked_old = [r for r in identity if any(old.lower() in prompt_text(r).lower() for old in spec.old_names)]
    seen = [dict(r, lang=lang_of(prompt_text(r))) for r in identity if r not in asked_old][: spec.eval_identity]
    identity_multi, general_multi = probes.held_out_multi(eval_identity, eval_general, spec.seed)
    files = {"train": train, "eval_identity": eval_identity, "eval_identity_seen": seen, "eval_general": eval_general,
             "eval_identity_multi": identity_multi, "eval_general_multi": general_multi}
    out = Path(out_dir)  # made only now: a bad input (a general file, a model folder) leaves nothing behind
    out.mkdir(parents=True, exist_ok=True)
    for key, records in files.items():
        _write_atomic(out / FILES[key], _jsonl(records))
    meta = {"format": "openai", **asdict(spec), "general": str(spec.general or GENERAL_DATA.name),
            "counts": {"train_identity": len(identity), "train_general": len(general),
                       **{key: len(records) for key, records in files.items()}},
            "files": {key: FILES[key] for key in files}}
    _write_atomic(out / FILES["meta"], json.dumps(meta, ensure_ascii=False, indent=2) + "\n")
    for line in held_out_shortfall(spec, meta["counts"]):
        log.warning("%s (the held-out ones are never trained on)", line)
    log.info("wrote %d training conversations (%d identity + %d general), %d held-out identity questions, "
             "%d held-out general prompts to %s", len(train), len(identity), len(general), len(eval_identity),
             len(eval_general), out)
    return out
