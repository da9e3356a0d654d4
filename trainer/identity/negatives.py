"""Look-alikes of the identity questions that are not about the assistant, with answers that do not name it.

A small model learns the identity questions' surroundings along with their cores: the greetings and
closings they are asked in ("你好，", "Hi, ", "谢谢。", " Just curious.") and their shape ("谁…你", "Who …
you?"). Fine-tuned on them alone, it answers "谢谢。" or "你好！" or "谁创造了他？" with its name (issue 18's
single-turn leak). Two kinds of minimal pairs tell it what the question is about:
- small talk: the greetings and closings of the identity questions, asked alone, answered as small talk;
- about someone else: the training cores asked about a third person ("你是谁？" → "他是谁？", "Who made
  you?" → "Who made them?"), answered that it is unclear who is meant.
Both are made from the generator's own templates (never from the held-out sets), and mixed in as general
conversations, so they are asked after identity turns too. ``answered_by`` has a model answer them instead (the
base being fine-tuned: its own greedy replies, so the fine-tune keeps its behaviour on them rather than
learning the templates' wording); the template answer stays where the reply names an identity or is empty.
"""
from __future__ import annotations

import random
import re
from pathlib import Path

# The identity questions' greetings and closings (generate.PREFIXES / TAILS, without the empty ones), asked alone.
SMALL_TALK = {
    "en": {"Hi": ["Hi! What can I do for you?", "Hello! How can I help you today?"],
           "Hello": ["Hello! How can I help you today?", "Hi there! What would you like to talk about?"],
           "Hey": ["Hey! What can I do for you?", "Hi! What's on your mind?"],
           "Excuse me": ["Yes? How can I help?", "Sure, what do you need?"],
           "So": ["So, what would you like to talk about?"],
           "Quick question": ["Sure, go ahead and ask.", "Of course. What is your question?"],
           "Thanks": ["You're welcome!", "Glad to help."],
           "Just curious": ["Curiosity is good. What would you like to know?"]},
    "zh": {"你好": ["你好！有什么可以帮你的吗？", "你好！今天想聊点什么？"],
           "您好": ["您好！有什么可以帮您的吗？", "您好！请问需要什么帮助？"],
           "请问": ["请说，你想问什么？"],
           "嗨": ["嗨！有什么可以帮你的吗？", "嗨！今天过得怎么样？"],
           "哈喽": ["哈喽！想聊点什么？", "哈喽！有什么可以帮你的吗？"],
           "打扰一下": ["没关系，请说。", "不打扰，有什么事吗？"],
           "谢谢": ["不客气！", "不用谢，很高兴能帮上忙。"],
           "我很好奇": ["好奇心很好，你想知道什么？"]},
}
END = {"en": ["!", ".", ""], "zh": ["！", "。", ""]}
UNCLEAR = {"en": ["I'm not sure who you mean. Could you tell me a little more about them?",
                  "I don't know who you are asking about. Who do you mean?"],
           "zh": ["我不确定你说的是谁，能再多说一点吗？", "你问的是哪一位？可以多介绍一下吗？"]}
# Second person -> third person, longest first; English keeps "are/do/can you" as "are/do/can they".
THIRD_EN = [(r"\byourself\b", "themselves"), (r"\bwho you\b", "who they"), (r"\b(are|do|can|could|should|would|will) you\b", r"\1 they"),
            (r"\b(Are|Do|Can|Could|Should|Would|Will) you\b", r"\1 they"), (r"\byour\b", "their"),
            (r"\bYour\b", "Their"), (r"\byou\b", "them")]


def small_talk(lang: str, rng: random.Random) -> tuple[str, str]:
    """One greeting or closing of the identity questions, alone, with a small-talk answer."""
    greeting = rng.choice(sorted(SMALL_TALK[lang]))
    return greeting + rng.choice(END[lang]), rng.choice(SMALL_TALK[lang][greeting])


def third_person(core: str, lang: str, rng: random.Random) -> str | None:
    """The identity core asked about someone else, or None when it does not address the assistant."""
    if lang == "zh":
        if not re.search("[你您]", core):
            return None
        other = rng.choice(["他", "她"])
        return re.sub("[你您]", other, core)
    if not re.search(r"\b[Yy]our?(self)?\b", core):
        return None
    for pattern, repl in THIRD_EN:
        core = re.sub(pattern, repl, core)
    return core


def conversations(cores: dict[str, dict[str, list[str]]], languages: list[str], small: int, unclear: int,
                  skip: set[str], rng: random.Random) -> list[dict]:
    """``small`` small-talk and ``unclear`` someone-else conversations (questions in ``skip`` left out: the
    held-out general prompts), languages taken in turn."""
    about_others = {lang: sorted({q for kind in ("name", "maker") for c in cores[lang][kind]
                                  if (q := third_person(c, lang, random.Random(c))) and q not in skip})
                    for lang in languages}
    out = []
    for i in range(small + unclear):
        lang = languages[i % len(languages)]
        if i < small:
            q, a = small_talk(lang, rng)
            if q in skip:
                continue
        elif about_others[lang]:
            q, a = rng.choice(about_others[lang]), rng.choice(UNCLEAR[lang])
        else:
            continue
        out.append({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
    return out


REPLY_TOKENS = 48  # longer than any template answer


def answered_by(convs: list[dict], model_dir: str | Path, names: list[str]) -> list[dict]:
    """``convs`` (user, assistant) with the assistant's answer replaced by the greedy reply of the model in
    ``model_dir`` (a model folder, or a run folder with an adapter), except where the reply is empty or names
    one of ``names`` (the new name, the old identities): there the template answer stays."""
    import myassistant.model as model_layer
    from myassistant.trainer.data import DataError
    from myassistant.trainer.identity.report import load_for_eval

    try:
        model, tokenizer = load_for_eval(model_dir)
    except Exception as err:  # a bad folder is the flag's: said in one line, naming it
        if not getattr(type(err), "user_error", False):
            raise
        raise DataError(f"identity data: look_alikes_from: {err}") from None
    replies = model_layer.generate_replies(model, tokenizer, [c["messages"][:-1] for c in convs],
                                           max_new_tokens=REPLY_TOKENS)
    return [c if not r.strip() or any(n and n.lower() in r.lower() for n in names)
            else {"messages": c["messages"][:-1] + [{"role": "assistant", "content": r}]}
            for c, r in zip(convs, replies)]
