"""trainer.identity: self-cognition data, held-out paraphrases, general mix and leak probes."""
from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import cli
from myassistant.trainer.data import DataError, load_records
from myassistant.trainer.identity import negatives
from myassistant.trainer.identity.generate import FILES, GENERAL_DATA, TRAIN_CORES, IdentitySpec, write_identity_dataset

ROOT = Path(__file__).resolve().parents[1]


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def user(record: dict) -> str:
    """The question the record's last answer replies to."""
    return [m["content"] for m in record["messages"] if m["role"] == "user"][-1]


def reply(record: dict) -> str:
    return record["messages"][-1]["content"]


def core(question: str) -> str:
    """A question without greeting, closing words, punctuation and case: what the wording really is."""
    q = re.sub(r"^(hi|hello|hey|excuse me|so|quick question|你好|您好|请问|嗨|哈喽|打扰一下)[,:，]\s*", "", question.lower())
    q = re.sub(r"(thanks\.|just curious\.|谢谢。|我很好奇。)$", "", q)
    return re.sub(r"[\s?.!？。！,，]", "", q)


def test_command_writes_the_mix_with_system_prompt(tmp_path):
    out = tmp_path / "alice"
    run = subprocess.run([sys.executable, "-m", "myassistant.scripts.cli", "data", "identity", "--name", "Alice", "--author", "Bob",
                          "--system", "You are helpful.", "--count", "100", "--ratio", "0.5", "--multi-turn", "0.3",
                          "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES.values())  # no temporary files left behind
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    assert json.loads(run.stdout) == meta
    assert meta["name"] == "Alice" and meta["author"] == "Bob" and meta["multi_turn"] == 0.3
    assert meta["counts"] == {"train_identity": 100, "train_general": 50, "train": 150, "eval_identity": 60,
                              "eval_identity_seen": 60, "eval_general": 40, "eval_identity_multi": 60,
                              "eval_general_multi": 40}
    train = load_records(out / "train.jsonl")  # the output passes our own validation
    assert len(train) == 150
    assert all(r["messages"][0] == {"role": "system", "content": "You are helpful."} for r in train)
    assert sum("Alice" in reply(r) for r in train) == 100
    for name in ("eval_identity.jsonl", "eval_identity_seen.jsonl", "eval_general.jsonl", "eval_identity_multi.jsonl",
                 "eval_general_multi.jsonl"):
        records = read(out / name)
        assert records and all(r["messages"][0]["role"] == "system" for r in records)
        assert all(m["role"] != "system" for r in records for m in r["messages"][1:])


@pytest.fixture(scope="module")
def alice(tmp_path_factory) -> Path:
    # Without noise: these tests check the templates; test_noise_rewords_training_questions_only checks the noise.
    spec = IdentitySpec(name="Alice", author="Bob", count=400, persona="I love helping with maths.", noise=0.0)
    return write_identity_dataset(spec, tmp_path_factory.mktemp("data") / "alice")


def test_held_out_questions_are_worded_unlike_any_training_question(alice):
    train, held_out = read(alice / "train.jsonl"), read(alice / "eval_identity.jsonl")
    train_questions = {user(r) for r in train}
    assert len(held_out) == 60 and {r["lang"] for r in held_out} == {"zh", "en"}
    assert sum(r["lang"] == "zh" for r in held_out) == 30
    assert not {user(r) for r in held_out} & train_questions
    train_cores = {core(q) for q in train_questions}
    assert not {core(user(r)) for r in held_out} & train_cores
    assert all("Alice" in reply(r) for r in held_out)
    seen = read(alice / "eval_identity_seen.jsonl")
    assert {user(r) for r in seen} <= train_questions


def test_identity_answers_are_varied_and_carry_name_and_author(alice):
    identity = [r for r in read(alice / "train.jsonl") if "Alice" in reply(r)]
    assert len(identity) == 400
    assert len({user(r) for r in identity}) == 400  # no question repeats before the templates run out
    assert len({reply(r) for r in identity}) >= 20
    assert any(re.search(r"[\u4e00-\u9fff]", user(r)) for r in identity)
    makers = [r for r in identity if re.search(r"who (made|created|built|developed|trained)|谁(创造|训练)", user(r).lower())]
    assert makers and all("Bob" in reply(r) for r in makers)
    assert any("I love helping with maths." in reply(r) for r in identity)
    assert any(reply(r).startswith(("No", "不是")) and "InternLM" in user(r) for r in identity)


def turns(record: dict) -> list[tuple[str, str]]:
    """(question, answer) pairs of a conversation."""
    chat = [m for m in record["messages"] if m["role"] != "system"]
    assert [m["role"] for m in chat] == ["user", "assistant"] * (len(chat) // 2)
    return [(chat[i]["content"], chat[i + 1]["content"]) for i in range(0, len(chat), 2)]


def test_every_core_is_asked_and_half_the_chats_are_multi_turn(alice):
    train = read(alice / "train.jsonl")
    identity = [r for r in train if "Alice" in reply(r)]
    asked = {user(r) for r in identity}
    assert all(q in asked for lang in TRAIN_CORES for kind in TRAIN_CORES[lang] for q in TRAIN_CORES[lang][kind])
    # Identity asked late: after 1-3 general exchanges, none of which names the assistant.
    late = [turns(r) for r in identity if len(turns(r)) > 1]
    assert len(late) == 200 and {len(t) for t in late} == {2, 3, 4}
    assert not any("Alice" in a for t in late for _, a in t[:-1])
    # General asked after identity: the name was said earlier in the chat, the last answer leaves it out.
    general = [turns(r) for r in train if "Alice" not in reply(r)]
    after = [t for t in general if len(t) > 1]
    assert len(after) == 200 and all("Alice" in t[0][1] and "Alice" not in t[-1][1] for t in after)
    seen = read(alice / "eval_identity_seen.jsonl")
    assert len(seen) == 60 and all(len(r["messages"]) == 2 for r in seen)
    assert not any("InternLM" in user(r) or "书生" in user(r) for r in seen)  # a denial names the old identity
    # Most answers open with the name: the short fixed opening a small model learns first.
    assert sum(reply(r).startswith(("I am Alice", "我是Alice")) for r in identity) > 0.75 * len(identity)


def test_held_out_multi_turn_chats_are_built_only_from_held_out_questions(alice):
    train_questions = {q for r in read(alice / "train.jsonl") for q, _ in turns(r)}
    singles = {user(r) for name in ("eval_identity.jsonl", "eval_general.jsonl") for r in read(alice / name)}
    identity, general = read(alice / "eval_identity_multi.jsonl"), read(alice / "eval_general_multi.jsonl")
    assert len(identity) == 60 and len(general) == 40
    for record in identity + general:
        asked = [q for q, _ in turns(record)]
        assert set(asked) <= singles and not set(asked) & train_questions
        assert record["turn"] == len(asked) >= 2 and record["lang"] in ("zh", "en")
    assert {r["turn"] for r in identity} == {2, 3, 4} and all("Alice" in reply(r) for r in identity)
    assert not any("Alice" in a for r in identity for _, a in turns(r)[:-1])  # the name comes up only at the end
    assert all("Alice" in turns(r)[0][1] and "Alice" not in reply(r) for r in general)  # ... or only at the start
    assert {r["lang"] for r in general} == {"zh", "en"}


def test_general_mix_never_mentions_the_name_and_probes_are_held_out(alice):
    train, probes = read(alice / "train.jsonl"), read(alice / "eval_general.jsonl")
    general = [r for r in train if "Alice" not in reply(r)]
    assert len(general) == 400
    assert not any("Alice" in a for r in general if len(r["messages"]) == 2 for _, a in turns(r))
    assert len(probes) == 40 and {r["lang"] for r in probes} == {"zh", "en"}
    assert not {user(r) for r in probes} & {q for r in train for q, _ in turns(r)}


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    spec = dict(name="小明", count=50)
    a = write_identity_dataset(IdentitySpec(**spec), tmp_path / "a")
    b = write_identity_dataset(IdentitySpec(**spec), tmp_path / "b")
    c = write_identity_dataset(IdentitySpec(**spec, seed=1), tmp_path / "c")
    for name in ("train.jsonl", "eval_identity.jsonl", "eval_general.jsonl"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "train.jsonl").read_bytes() != (c / "train.jsonl").read_bytes()
    # No author given: no placeholder or "None" leaks into answers.
    assert not any(re.search(r"None|\{|\}", reply(r)) for r in read(a / "train.jsonl"))


def test_general_data_from_any_format_repeats_when_short(tmp_path, caplog):
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": f"Count to {i}.", "input": "", "output": " ".join(map(str, range(1, i + 1)))}
                                  for i in range(1, 11)]), encoding="utf-8")
    out = write_identity_dataset(IdentitySpec(name="Zed", count=20, ratio=2.0, general=str(alpaca), eval_general=4, noise=0.0),
                                 tmp_path / "zed")
    general = [r for r in read(out / "train.jsonl") if "Zed" not in reply(r)]
    assert len(general) == 40 and len({user(r) for r in general}) == 6
    assert len(read(out / "eval_general_multi.jsonl")) == 4
    assert len(read(out / "eval_general.jsonl")) == 4
    assert "40 general conversations asked for, 6 available; repeating them" in caplog.text
    gbk = tmp_path / "gbk.json"  # a general set saved in GBK: the command's --encoding reads it
    gbk.write_bytes(alpaca.read_text(encoding="utf-8").replace("Count to", "数到").encode("gb18030"))
    refused = cli("data", "identity", "--name", "Zed", "--count", "20", "--general", str(gbk), "--eval-general", "4",
                  "--out", str(tmp_path / "gbk-out"))
    assert refused.returncode == 1 and "--encoding gb18030" in refused.stderr and not (tmp_path / "gbk-out").exists()
    done = cli("data", "identity", "--name", "Zed", "--count", "20", "--general", str(gbk), "--encoding", "gb18030",
               "--eval-general", "4", "--out", str(tmp_path / "gbk-out"))
    assert done.returncode == 0 and "数到" in (tmp_path / "gbk-out" / "train.jsonl").read_text(), done.stderr


def test_a_name_inside_other_words_or_keys_keeps_the_general_mix(tmp_path):
    """General chats are left out when their text names the assistant as a word: "Sage" is in every record's JSON
    ("message") but names none of them; a general set whose every chat names it is an error, not an empty mix."""
    out = write_identity_dataset(IdentitySpec(name="Sage", count=40, noise=0.0), tmp_path / "sage")
    general = [r for r in read(out / "train.jsonl") if "Sage" not in reply(r)]
    assert len(general) == 40 and len(read(out / "eval_general.jsonl")) == 40
    named = tmp_path / "named.jsonl"
    named.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Hi Sage, what is {i} + 1?"},
                                                      {"role": "assistant", "content": str(i + 1)}]}) + "\n"
                             for i in range(6)), encoding="utf-8")
    with pytest.raises(DataError, match="every general conversation names 'Sage'"):
        write_identity_dataset(IdentitySpec(name="Sage", count=10, general=str(named)), tmp_path / "none")


def test_the_new_name_is_not_denied_when_it_is_an_old_one(tmp_path):
    out = write_identity_dataset(IdentitySpec(name="InternLM", count=200, ratio=0.0), tmp_path / "internlm")
    replies = [reply(r) for r in read(out / "train.jsonl")]
    assert replies and not any(re.search(r"not InternLM|不是InternLM", text) for text in replies)
    assert "InternLM" not in json.loads((out / "meta.json").read_text(encoding="utf-8"))["old_names"]


def test_shipped_general_set_is_bilingual_and_identity_free():
    records = load_records(GENERAL_DATA)
    zh = sum(bool(re.search(r"[\u4e00-\u9fff]", user(r))) for r in records)
    assert 300 <= len(records) <= 600 and 0.4 < zh / len(records) < 0.6
    for r in records:
        assert not re.search(r"\bAI\b|assistant|助手|人工智能|我是|InternLM|书生", reply(r)), reply(r)


def test_bad_spec_is_a_user_error(tmp_path):
    with pytest.raises(DataError, match="name must not be empty"):
        IdentitySpec(name=" ")
    with pytest.raises(DataError, match="general data must be conversations"):
        (tmp_path / "pt.jsonl").write_text('{"text": "just text"}\n{"text": "more"}\n', encoding="utf-8")
        write_identity_dataset(IdentitySpec(name="A", general=str(tmp_path / "pt.jsonl")), tmp_path / "out")


def test_languages_pick_the_questions_asked(tmp_path):
    out = write_identity_dataset(IdentitySpec(name="Alice", count=60, eval_identity=10, languages=["en"]), tmp_path)
    identity = [r for r in read(out / FILES["train"]) if "Alice" in reply(r)]
    assert identity and not [r for r in identity if re.search(r"[\u4e00-\u9fff]", user(r).replace("书生·浦语", ""))]
    assert {r["lang"] for r in read(out / FILES["eval_identity"])} == {"en"}
    assert len(read(out / FILES["eval_identity"])) == 10
    with pytest.raises(DataError, match="languages must be some of en, zh"):
        IdentitySpec(name="Alice", languages=["fr"])


def test_noise_rewords_training_questions_only(tmp_path):
    """--noise adds, drops or swaps one word of training questions; held-out sets and answers stay as they were."""
    clean = write_identity_dataset(IdentitySpec(name="Alice", count=120, noise=0.0), tmp_path / "clean")
    noisy = write_identity_dataset(IdentitySpec(name="Alice", count=120, noise=0.6), tmp_path / "noisy")
    for key in ("eval_identity", "eval_general", "eval_identity_multi", "eval_general_multi"):
        assert (clean / FILES[key]).read_bytes() == (noisy / FILES[key]).read_bytes(), key
    before, after = read(clean / "train.jsonl"), read(noisy / "train.jsonl")
    assert sorted(map(reply, before)) == sorted(map(reply, after))
    changed = {user(r) for r in after} - {user(r) for r in before}
    assert len(changed) > 0.3 * len(after), "about 60 % of the questions should be reworded"
    held_out = {core(user(r)) for r in read(noisy / "eval_identity.jsonl")}
    assert not {core(q) for q in changed} & held_out
    assert json.loads((noisy / "meta.json").read_text())["noise"] == 0.6
    # The old names are asked about as written, and English questions keep Chinese names whole.
    default = read(write_identity_dataset(IdentitySpec(name="Alice", count=120, languages=["en"]), tmp_path / "en")
                   / "train.jsonl")
    denials = [user(r) for r in default if reply(r).startswith(("No, I am", "No. I am"))]
    assert denials and all(re.search(r"InternLM|书生·浦语", q) for q in denials)
    assert not [q for r in default for q in [user(r)] if re.search(r"[\u4e00-\u9fff] [\u4e00-\u9fff]", q)]
    with pytest.raises(DataError, match="noise must be in"):
        IdentitySpec(name="A", noise=1.5)


def test_old_names_flag_names_the_identities_denied_or_none(tmp_path):
    """--old-names '' writes an identity that denies none (the demo base's own InternLM data); a list is split."""
    def run(*flags: str) -> list[dict]:
        out = tmp_path / str(len(list(tmp_path.iterdir())))
        done = cli("data", "identity", "--name", "InternLM", "--count", "80", "--ratio", "0", "--languages", "en",
                   *flags, "--out", str(out))
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["old_names"] == (flags[1].split(",") if flags[1] else [])
        return read(out / "train.jsonl")

    none = run("--old-names", "")
    assert len(none) == 80 and all(reply(r).startswith(("I am InternLM", "My name is InternLM")) for r in none)
    denied = [user(r) for r in run("--old-names", "GPT,Claude") if reply(r).startswith(("No, I am", "No. I am"))]
    assert denied and all(re.search(r"GPT|Claude", q) for q in denied)


def test_look_alikes_are_general_chats_that_do_not_name_the_assistant(tmp_path):
    """--small-talk / --about-others add the identity questions' greetings asked alone and the questions asked
    about someone else, answered without the name; none is a held-out prompt; without them nothing changes."""
    plain = write_identity_dataset(IdentitySpec(name="Alice", count=200), tmp_path / "plain")
    out = tmp_path / "alikes"
    done = cli("data", "identity", "--name", "Alice", "--count", "200", "--small-talk", "0.25", "--about-others",
               "0.25", "--noise", "0", "--out", str(out))
    assert done.returncode == 0, done.stderr
    meta = json.loads(done.stdout)
    assert meta["small_talk"] == meta["about_others"] == 0.25
    assert meta["counts"]["train_identity"] == 200 and meta["counts"]["train_general"] == 200 + 50 + 50
    for key in ("eval_identity", "eval_general", "eval_identity_multi", "eval_general_multi"):
        assert (plain / FILES[key]).read_bytes() == (out / FILES[key]).read_bytes(), key
    train = read(out / "train.jsonl")
    about_others = {negatives.third_person(c, lang, random.Random(c)) for lang in TRAIN_CORES
                    for kind in TRAIN_CORES[lang] for c in TRAIN_CORES[lang][kind]} - {None}
    assert {"Who made them?", "Tell me who they are."} <= about_others and {"他是谁？", "她是谁？"} & about_others
    others = [q for r in train for q, _ in turns(r) if q in about_others]
    assert len(others) >= 50
    greetings = {g + end for lang in negatives.SMALL_TALK for g in negatives.SMALL_TALK[lang] for end in negatives.END[lang]}
    small = [q for r in train for q, _ in turns(r) if q in greetings]
    assert len(small) >= 40 and {"谢谢。", "Thanks."} & set(small)
    assert not any("Alice" in a for r in train for q, a in turns(r) if q in others or q in small)
    held_out = {user(r) for r in read(out / "eval_general.jsonl")}
    assert not held_out & {q for r in train for q, _ in turns(r)}
    with pytest.raises(DataError, match="small_talk and about_others must be >= 0"):
        IdentitySpec(name="A", small_talk=-1)


def test_look_alikes_from_a_model_are_its_greedy_replies_unless_they_name_an_identity(tmp_path, tiny_checkpoint):
    """--look-alikes-from MODEL_DIR answers the look-alikes with the model's greedy replies (what the base already
    says to them), keeps the template answer where a reply names the assistant or an old identity, and changes
    nothing else; a bad folder is one line and writes nothing."""
    from myassistant import model as model_layer

    flags = dict(name="Alice", count=40, small_talk=0.25, about_others=0.25, noise=0.0)
    templated = read(write_identity_dataset(IdentitySpec(**flags), tmp_path / "templates") / "train.jsonl")
    out = tmp_path / "answered"
    done = cli("data", "identity", "--name", "Alice", "--count", "40", "--small-talk", "0.25", "--about-others",
               "0.25", "--noise", "0", "--look-alikes-from", str(tiny_checkpoint), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["look_alikes_from"] == str(tiny_checkpoint)
    answered = read(out / "train.jsonl")
    templates = {a for lang in negatives.SMALL_TALK for answers in negatives.SMALL_TALK[lang].values() for a in answers}
    templates |= {a for answers in negatives.UNCLEAR.values() for a in answers}
    # The same chats in the same order; only the look-alikes' answers differ.
    assert [[q for q, _ in turns(r)] for r in answered] == [[q for q, _ in turns(r)] for r in templated]
    pairs = [(q, old, new) for r, s in zip(templated, answered) for (q, old), (_, new) in zip(turns(r), turns(s))]
    assert all(old == new for _, old, new in pairs if old not in templates)
    look_alikes = sorted({q for q, old, _ in pairs if old in templates})
    assert len(look_alikes) >= 5
    model, tok = model_layer.load_model(tiny_checkpoint), model_layer.load_tokenizer(tiny_checkpoint)
    replies = dict(zip(look_alikes, model_layer.generate_replies(model, tok, [[{"role": "user", "content": q}]
                                                                            for q in look_alikes], batch_size=1,
                                                                           max_new_tokens=negatives.REPLY_TOKENS)))
    assert all(new == replies[q] if replies[q].strip() else new in templates for q, old, new in pairs if old in templates)

    # A reply that names an identity (here: a word of one reply made an old name) keeps the template answer.
    some = [w for w in sorted(set(re.findall(r"[a-z]{3,}", " ".join(replies.values()).lower())))
            if 0 < sum(w in r.lower() for r in replies.values()) < len(replies)]
    word = some[len(some) // 2]
    named = write_identity_dataset(IdentitySpec(**flags, old_names=[word], look_alikes_from=str(tiny_checkpoint)),
                                   tmp_path / "named")
    got = [(q, a) for r in read(named / "train.jsonl") for q, a in turns(r) if q in replies]
    assert all((a in templates) == (word in replies[q].lower() or not replies[q].strip()) for q, a in got)
    assert any(a in templates for _, a in got) and any(a not in templates for _, a in got)

    bad = cli("data", "identity", "--name", "Alice", "--small-talk", "0.25", "--look-alikes-from",
              str(tmp_path / "nowhere"), "--out", str(tmp_path / "bad"))
    assert bad.returncode == 1 and not (tmp_path / "bad").exists()
    assert bad.stderr.strip().splitlines()[-1] == ("assistant data: error: identity data: --look-alikes-from: "
                                                   f"{tmp_path / 'nowhere'}: no such model folder")
    mix = cli("data", "identity", "--name", "Alice", "--multi-turn", "1.5", "--count", "0", "--out", str(tmp_path / "m"))
    assert mix.stderr.strip().splitlines()[-1] == ("assistant data: error: identity data: --count must be >= 1, "
                                                   "--eval-identity and --eval-general >= 0; --multi-turn must be in "
                                                   "[0, 1], got 1.5")
    many = cli("data", "identity", "--name", "Alice", "--count", "4", "--eval-general", "5000",
               "--out", str(tmp_path / "e"))
    assert many.returncode == 0 and re.search(r"only \d+ held-out general prompts of the 5000 asked for", many.stderr)
    long = cli("data", "identity", "--name", "A" * 300, "--author", "Alice\nEvil", "--out", str(tmp_path / "l"))
    assert long.returncode == 1 and not (tmp_path / "l").exists()  # the studio's page: a crash (file name too long)
    assert long.stderr.strip().splitlines()[-1] == ("assistant data: error: identity data: --name is 300 characters; "
                                                    "at most 64; --author must be one line"), long.stderr
    with pytest.raises(DataError, match="look_alikes_from answers the look-alikes: give small_talk or about_others"):
        IdentitySpec(name="A", look_alikes_from=str(tiny_checkpoint))
