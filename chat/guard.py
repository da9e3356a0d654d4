"""The identity guard: a system prompt that names the assistant is shown to the model only when the user
asks about the assistant.

A small fine-tuned model reads "You are Alice." in a system prompt as a cue to say its name, and then
answers "What is 2 plus 2?" with "I am Alice" (the fine-tune report measures it: leak with a system
prompt). With the guard on (``GenerationSettings(identity_guard=True)``, the app's ``APP_IDENTITY_GUARD=1``),
for a user turn that is not about the assistant the sentences of the system prompt that say who the
assistant is ("You are …", "Your name is …", "你是…", "你叫…") are left out of the prompt; the rest of
the system prompt stays. Turns that ask who it is, what it is called or who made it get the whole
prompt. Whether a turn asks that is decided by the patterns below (zh and en), not by a model.
"""
from __future__ import annotations

import re

NAMING = re.compile(r"\b(you are|you're|your name is|you are called|call yourself)\b|你(是|叫|的名字)|您是", re.I)
ABOUT_YOU = re.compile(
    r"\byour(self| name| creator| maker| developer| author| team| identity)\b|\bwho\b[^.?!]*\byour?\b"
    r"|\b(made|created|built|developed|trained|designed|programmed|wrote|invented|owns|behind)\s+you\b"
    r"|\bare you\s+(?!(ok|okay|sure|doing|going|feeling|well|able|free|busy|ready|there|good|fine)\b)[\w·]"
    r"|\bname\b[^.?!]*\byou\b|\byou\b[^.?!]*\bname\b"
    r"|\b(call|address|introduce) you\b|\bwho(?: is|'s) this\b|\bwhich (ai|assistant|model)\b"
    r"|\bwhat (model|kind of assistant|are you)\b|\bwhere do you come from\b|\bwho am i (talking|chatting)\b"
    r"|你.{0,3}是(谁|哪|.{0,4}什么)|叫你|你是.{0,12}吗|你叫|你.{0,4}名字|称呼|自我介绍|介绍.{0,3}自己|说说.{0,2}自己|你自己"
    r"|谁.{0,4}(创造|开发|训练|打造|设计|制作|编写|做)了?你|你是.{0,2}(谁|哪).{0,6}(开发|打造|训练|创造)"
    r"|你的(作者|开发者|创造者|团队|身份)|你来自|你是怎么来的|背后|您是|和我.{0,2}(聊天|说话)的是|我在和谁", re.I)


def asks_about_assistant(text: str) -> bool:
    """Whether a user message asks who the assistant is, what it is called or who made it."""
    return bool(ABOUT_YOU.search(text))


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?。！？\n])\s*", text) if s.strip()]


def guard_identity(messages: list[dict]) -> list[dict]:
    """The messages, with the naming sentences of the system message left out when the last user turn
    does not ask about the assistant (the whole system message when nothing else is left)."""
    if not messages or messages[0]["role"] != "system":
        return messages
    last = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    if asks_about_assistant(last):
        return messages
    kept = " ".join(s.strip() for s in _sentences(messages[0]["content"]) if not NAMING.search(s))
    rest = messages[1:]
    return ([{**messages[0], "content": kept}] if kept else []) + rest
