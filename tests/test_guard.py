"""chat.guard: a system prompt that names the assistant reaches the model only on turns asking about it."""
from __future__ import annotations

import pytest

from myassistant.chat import ChatEngine, GenerationSettings
from myassistant.chat.guard import asks_about_assistant, guard_identity
from myassistant.model import build_tiny_checkpoint
from myassistant.trainer.data import load_records
from myassistant.trainer.identity.generate import GENERAL_DATA, HELD_OUT_CORES, NOT_OLD_QUESTIONS, TRAIN_CORES, questions

SYSTEM = {"role": "system", "content": "You are Alice, an AI assistant built by Bob. Answer briefly."}


def test_every_identity_question_the_data_makes_is_recognised_and_no_general_one():
    asked = [q for cores in (TRAIN_CORES, HELD_OUT_CORES) for lang in cores for kind in cores[lang]
             for q in questions(cores, lang, kind)]
    asked += [q.format(old=old) for lang in NOT_OLD_QUESTIONS for q in NOT_OLD_QUESTIONS[lang] for old in ("InternLM", "书生·浦语")]
    assert len(asked) > 1000
    assert [q for q in asked if not asks_about_assistant(q)] == []
    general = [m["content"] for r in load_records(GENERAL_DATA) for m in r["messages"] if m["role"] == "user"]
    general += ["How are you?", "你好吗？", "What do you think about cats?", "给我的小猫起个名字吧。"]
    assert [q for q in general if asks_about_assistant(q)] == []


def test_naming_sentences_leave_general_turns_and_stay_for_identity_turns():
    history = [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "I am Alice."}]
    general = guard_identity([SYSTEM, *history, {"role": "user", "content": "What is 2 plus 2?"}])
    assert general == [{"role": "system", "content": "Answer briefly."}, *history, {"role": "user", "content": "What is 2 plus 2?"}]
    identity = [SYSTEM, {"role": "user", "content": "你的开发者是谁？"}]
    assert guard_identity(identity) == identity
    # Nothing but a name in the system prompt: no system message at all on general turns.
    assert guard_identity([{"role": "system", "content": "你是Alice。"}, {"role": "user", "content": "一周有几天？"}]) == \
        [{"role": "user", "content": "一周有几天？"}]
    no_system = [{"role": "user", "content": "Hi"}]
    assert guard_identity(no_system) == no_system


@pytest.fixture(scope="module")
def engine(tmp_path_factory) -> ChatEngine:
    return ChatEngine.from_pretrained(build_tiny_checkpoint(tmp_path_factory.mktemp("guard") / "tiny"), device="cpu")


def test_engine_setting_builds_the_guarded_prompt(engine):
    plain = GenerationSettings(system_prompt=SYSTEM["content"], temperature=0, max_new_tokens=8)
    guarded = GenerationSettings(system_prompt=SYSTEM["content"], temperature=0, max_new_tokens=8, identity_guard=True)
    ask = [{"role": "user", "content": "What is 2 plus 2?"}]
    without = GenerationSettings(system_prompt="Answer briefly.", temperature=0, max_new_tokens=8)
    assert engine.prompt(ask, guarded)[0] == engine.prompt(ask, without)[0] != engine.prompt(ask, plain)[0]
    who = [{"role": "user", "content": "Who are you?"}]
    assert engine.prompt(who, guarded)[0] == engine.prompt(who, plain)[0]
    assert engine.generate(ask, guarded) == engine.generate(ask, without)
