"""trainer.data / trainer.formats: loaders and validation, assistant-only labels, packing, collation."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch

from conftest import cli
from myassistant.model import build_tiny_checkpoint, load_model, load_tokenizer
from myassistant.trainer.data import IGNORE_INDEX, DataError, collate, describe, load_records, pack, tokenize_records

ROOT = Path(__file__).resolve().parents[1]

CONVERSATION = {"messages": [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "你是谁？"},
    {"role": "assistant", "content": "我是Alice。"},
    {"role": "user", "content": "Who made you?"},
    {"role": "assistant", "content": "Bob made me."},
]}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def tokenizer(tiny):
    return load_tokenizer(tiny)


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(path: Path, records: list) -> Path:
    return write(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


# -- loaders ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, record", [
    ("openai.jsonl", CONVERSATION),
    ("xtuner.jsonl", {"conversation": [{"system": "Be brief.", "input": "你是谁？", "output": "我是Alice。"},
                                       {"input": "Who made you?", "output": "Bob made me."}]}),
    ("sharegpt.jsonl", {"conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "你是谁？"},
                                          {"from": "gpt", "value": "我是Alice。"}, {"from": "human", "value": "Who made you?"},
                                          {"from": "gpt", "value": "Bob made me."}]}),
    ("alpaca_history.jsonl", {"system": "Be brief.", "history": [["你是谁？", "我是Alice。"]], "instruction": "Who made you?",
                              "input": "", "output": "Bob made me."}),  # LLaMA-Factory's earlier turns
    ("sharegpt_system.jsonl", {"system": "Be brief.", "conversations": [  # LLaMA-Factory's record-wide system prompt
        {"from": "human", "value": "你是谁？"}, {"from": "gpt", "value": "我是Alice。"},
        {"from": "human", "value": "Who made you?"}, {"from": "gpt", "value": "Bob made me."}]}),
])
def test_conversation_formats_load_to_the_same_messages(tmp_path, name, record):
    assert load_records(jsonl(tmp_path / name, [record, record])) == [CONVERSATION, CONVERSATION]


def test_openai_content_parts_are_read_as_their_text(tmp_path):
    """OpenAI's [{"type": "text", "text": ...}] content was "must be a string, got list"; a picture part is named."""
    parts = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "yo"}]},
                          {"role": "assistant", "content": [{"type": "text", "text": "Hello."}]}]}
    assert load_records(jsonl(tmp_path / "parts.jsonl", [parts])) == [{"messages": [
        {"role": "user", "content": "hi\nyo"}, {"role": "assistant", "content": "Hello."}]}]
    parts["messages"][0]["content"].append({"type": "image_url", "image_url": {"url": "cat.png"}})
    with pytest.raises(DataError, match=r"picture.jsonl:1: field 'messages\[0\].content\[2\]' is a 'image_url' part"):
        load_records(jsonl(tmp_path / "picture.jsonl", [parts]))


def test_alpaca_json_array_and_raw_text(tmp_path):
    alpaca = write(tmp_path / "alpaca.json", json.dumps([
        {"instruction": "Translate to English.", "input": "你好", "output": "Hello"},
        {"instruction": "Say hi.", "input": "", "output": "Hi!"}], indent=2))
    assert load_records(alpaca) == [
        {"messages": [{"role": "user", "content": "Translate to English.\n你好"}, {"role": "assistant", "content": "Hello"}]},
        {"messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi!"}]}]
    assert load_records(jsonl(tmp_path / "pt.jsonl", [{"text": "one"}, {"text": "two"}])) == [{"text": "one"}, {"text": "two"}]
    txt = write(tmp_path / "book.txt", "First document,\nline two.\n\n\nSecond document.\n")
    assert load_records(txt) == [{"text": "First document,\nline two."}, {"text": "Second document."}]


ARRAY_WITH_BAD_ROLE = '[\n  {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},\n' \
                      '  {"messages": [{"role": "robot", "content": "hi"}]}\n]\n'


@pytest.mark.parametrize("name, text, expected", [
    ("empty.jsonl", "\n \n", "empty.jsonl: the file is empty"),
    ("broken.jsonl", json.dumps(CONVERSATION) + "\n\n" + '{"messages": [\n', "broken.jsonl:3: malformed JSON"),
    ("broken.json", '[\n {"text": "a"},\n {"text": "b"\n]', "broken.json:4: malformed JSON"),
    ("role.json", ARRAY_WITH_BAD_ROLE, "role.json:3: field 'messages[0].role' is 'robot', not one of system, user, assistant"),
    ("oneline.json", json.dumps([CONVERSATION, {"messages": [{"role": "user"}]}]),  # as json.dump writes it
     f"oneline.json:1:{len(json.dumps(CONVERSATION)) + 4} (record 2): field 'messages[0].content' is missing"),
    ("oneline_broken.json", '[{"text": "a"}, {"text" "b"}]', "oneline_broken.json:1: malformed JSON (Expecting ':' "
     "delimiter at column 25)"),
    ("missing.jsonl", json.dumps(CONVERSATION) + "\n" + '{"messages": [{"role": "user"}]}\n',
     "missing.jsonl:2: field 'messages[0].content' is missing"),
    ("blank.jsonl", '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]}\n',
     "blank.jsonl:1: field 'messages[1].content' is empty"),
    ("alpaca.jsonl", '{"instruction": "hi", "input": ""}\n', "alpaca.jsonl:1: field 'output' is missing"),
    ("null.jsonl", '{"messages": [{"role": "user", "content": null}]}\n', "null.jsonl:1: field 'messages[0].content' is null"),
    ("human.jsonl", '{"messages": [{"role": "human", "content": "hi"}]}\n',
     "human.jsonl:1: field 'messages[0].role' is 'human', not one of system, user, assistant; did you mean 'user'?"),
    ("speaker.jsonl", '{"conversations": [{"from": "bot", "value": "x"}]}\n', "field 'conversations[0].from' is 'bot'"),
    ("noreply.jsonl", '{"messages": [{"role": "user", "content": "hi"}]}\n', "has no assistant message"),
    ("noreply_sharegpt.jsonl", '{"conversations": [{"from": "human", "value": "hi"}]}\n',
     "noreply_sharegpt.jsonl:1: field 'conversations' has no assistant message"),
    ("what.jsonl", '{"question": "hi", "answer": "yo"}\n', "cannot tell the data format (first record has keys: answer, question)"),
    ("message.jsonl", '{"message": []}\n', "(first record has keys: message; did you mean 'messages'?)"),
    ("bot.jsonl", '{"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]}\n',
     "field 'messages[1].role' is 'bot', not one of system, user, assistant; did you mean 'assistant'?"),
    ("mixed.jsonl", '{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n'
     '{"instruction": "a", "input": "", "output": "b"}\n', "mixed.jsonl:2: field 'messages' is missing; this record "
     "is alpaca data, and the file's format, openai, was told from its first record: one format a file"),
    ("flat.jsonl", '{"system": "s", "input": "hi", "output": "yo"}\n', "one turn of XTuner's format: wrap each record's "
     'turns as {"conversation": [...]}'),
    ("comma.json", '[\n {"text": "a"},\n {"text": "b"},\n]\n', "comma.json:4: malformed JSON (Expecting value at column 1); "
     "a trailing comma before ']': JSON allows none, delete it"),
    ("comma.jsonl", '{"text": "a",}\n', "comma.jsonl:1: malformed JSON (Expecting property name enclosed in double quotes "
     "at column 14); a trailing comma before '}'"),
    ("tab.jsonl", '{"text": "a\tb"}\n', "tab.jsonl:1: malformed JSON (Invalid control character at column 12); a tab or "
     "line break inside a string: write it as \\t or \\n"),
    ("empty_array.jsonl", "[]\n", "empty_array.jsonl: the file holds no records (an empty JSON array)"),
    ("weights.jsonl", '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo", "weight": 0}]}\n',
     "weights.jsonl:1: field 'messages' has weight 0 on every assistant message"),
    ("weight2.jsonl", '{"messages": [{"role": "user", "content": "hi", "weight": 1}, {"role": "assistant", "content": "yo"}]}\n',
     "field 'messages[0].weight' is 1; it is 0 or 1, on assistant messages"),
    ("typo.jsonl", '{"instruction": "Translate", "inptu": "bonjour", "output": "hello", "id": 7}\n',  # id: passes
     "typo.jsonl:1: field 'inptu' is not a field of Alpaca records; did you mean 'input'?"),
    ("typo2.jsonl", '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo", '
     '"wieght": 0, "name": "bot"}]}\n', "typo2.jsonl:1: field 'messages[1].wieght' is not a field of messages; did you "
     "mean 'weight'?"),
    ("history.json", '[{"instruction": "hi", "output": "yo", "history": [["only a question"]]}]',
     "history.json:1:2 (record 1): field 'history[0]' must be a [question, answer] pair of non-empty strings"),
    ("picture.jsonl", json.dumps({"image": "a.png", "conversations": [{"from": "human", "value": "<image>\nWhat?"},
                                                                     {"from": "gpt", "value": "A cat."}]}) + "\n",
     "picture.jsonl:1: field 'image' names a picture, and text data has none"),
    ("no_picture.jsonl", json.dumps({"conversations": [{"from": "human", "value": "<image>\nWhat?"},
                                                       {"from": "gpt", "value": "A cat."}]}) + "\n",
     "no_picture.jsonl:1: field 'image' is missing: the record opens with the <image> placeholder"),
    ("surrogate.jsonl", '{"messages": [{"role": "user", "content": "Hi \\ud83d"}, {"role": "assistant", "content": '
     '"yo"}]}\n', "surrogate.jsonl:1: field 'messages[0].content' holds a broken character ('\\ud83d', half of an "
     "emoji or other character cut off) at position 3; remove it"),  # the tokenizer's TypeError, mid-training
])
def test_bad_files_name_file_line_and_field(tmp_path, name, text, expected):
    with pytest.raises(DataError) as err:
        load_records(write(tmp_path / name, text))
    assert expected in str(err.value)
    assert type(err.value).user_error is True


def test_every_record_with_a_problem_is_named_at_once(tmp_path):
    """A ShareGPT dump with 4 bad records took 4 runs of `data check` to find them: the first is said, the rest placed."""
    good = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
    empty = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": ""}]}
    with pytest.raises(DataError) as err:
        load_records(jsonl(tmp_path / "many.jsonl", [good, empty, good, empty, empty, good, empty]))
    assert str(err.value) == (f"{tmp_path / 'many.jsonl'}:2: field 'messages[1].content' is empty; remove the record or "
                              "fill it in (3 more record(s) with problems: many.jsonl:4, many.jsonl:5, many.jsonl:7)")


def test_mostly_duplicate_file_warns(tmp_path, caplog):
    other = {"text": "something else"}
    with caplog.at_level(logging.WARNING, logger="myassistant.trainer.data"):
        load_records(jsonl(tmp_path / "dup.jsonl", [{"text": "same"}] * 8 + [other, {"text": "x"}]))
    assert "7 of 10 records are copies of others (3 distinct); the model will over-fit" in caplog.text
    caplog.clear()
    load_records(jsonl(tmp_path / "ok.jsonl", [{"text": "same"}] * 2 + [other]))
    assert "copies of others" not in caplog.text


def test_chat_records_saved_as_txt_are_named(tmp_path, caplog):
    """Chat JSON Lines saved as .txt trained as raw text, braces and keys too, without a word."""
    from myassistant.trainer.data.corpus import TextSpec, check_file
    from myassistant.trainer.data.sources import source_kind

    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    with caplog.at_level(logging.WARNING, logger="myassistant.trainer.data"):
        assert source_kind(str(jsonl(tmp_path / "chat.txt", [chat])), "auto", TextSpec()) == "text"
        check_file(tmp_path / "chat.txt", TextSpec())  # (as every reader of a text file checks it)
    assert "chat.txt: its lines are chat records (messages), but a .txt file is read as raw text" in caplog.text
    caplog.clear()
    (tmp_path / "prose.txt").write_text('{"a": 1} is how JSON looks.\n\nA second paragraph.\n')
    check_file(tmp_path / "prose.txt", TextSpec())
    assert "chat records" not in caplog.text


# -- tokenisation ----------------------------------------------------------------------------------

def trained_pieces(tokenizer, ids, labels) -> list[str]:
    """The decoded runs of consecutive trained tokens."""
    runs, run = [], []
    for token, label in zip(ids, labels):
        if label != IGNORE_INDEX:
            assert label == token
            run.append(token)
        elif run:
            runs.append(tokenizer.decode(run)), run.clear()
    return runs + ([tokenizer.decode(run)] if run else [])


def test_labels_cover_every_assistant_turn_and_its_end_token(tokenizer):
    data = tokenize_records([CONVERSATION, {"text": "plain text"}], tokenizer, max_length=512)
    ids, labels = data[0]["input_ids"], data[0]["labels"]
    assert ids == tokenizer.apply_chat_template(CONVERSATION["messages"], tokenize=True, return_dict=False)
    assert trained_pieces(tokenizer, ids, labels) == ["我是Alice。<|im_end|>", "Bob made me.<|im_end|>"]
    text_ids = data[1]["input_ids"]
    assert text_ids[0] == tokenizer.bos_token_id and text_ids[-1] == tokenizer.eos_token_id
    assert data[1]["labels"] == text_ids


def test_long_samples_are_truncated_and_counted_not_dropped(tokenizer, caplog):
    records = [CONVERSATION, {"text": "short"}, {"text": "a much longer text " * 20}]
    with caplog.at_level(logging.WARNING, logger="myassistant.trainer.data"):
        data = tokenize_records(records, tokenizer, max_length=24)
    assert len(data) == 3
    assert [len(ids) for ids in data["input_ids"]] == [24, len(tokenizer("short").input_ids) + 1, 24]
    assert "2 of 3 samples are longer than max_length=24 tokens and were truncated" in caplog.text


# -- packing and collation -------------------------------------------------------------------------

def samples(tokenizer) -> list[dict]:
    records = [CONVERSATION,
               {"messages": [{"role": "user", "content": "What is 2 plus 3?"}, {"role": "assistant", "content": "5."}]},
               {"text": "Raw text trains on every token."},
               {"messages": [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Hi, how can I help?"}]}]
    return list(tokenize_records(records, tokenizer, max_length=128))


def sample_losses(model, rows) -> tuple[float, int]:
    """Token-weighted mean of each sample's own loss, and the number of trained tokens."""
    total, count = 0.0, 0
    for row in rows:
        n = sum(label != IGNORE_INDEX for label in row["labels"][1:])
        out = model(input_ids=torch.tensor([row["input_ids"]]), labels=torch.tensor([row["labels"]]))
        total, count = total + out.loss.item() * n, count + n
    return total / count, count


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_equals_unpacked_and_samples_do_not_see_each_other(tiny, tokenizer, attn):
    torch.manual_seed(0)
    model = load_model(tiny)
    model.set_attn_implementation(attn)
    model.config.use_cache = False  # as the Trainer sets it; with a KV cache transformers skips packed detection
    rows = samples(tokenizer)
    expected, _ = sample_losses(model, rows)

    packed = pack(_dataset(rows), max_length=128)
    assert len(packed) == 2 and all(len(p["input_ids"]) <= 128 for p in packed)
    batch = collate(list(packed))
    assert set(batch) == {"input_ids", "labels", "position_ids"}
    with torch.no_grad():
        assert model(**batch).loss.item() == pytest.approx(expected, rel=1e-5)
        assert model(**collate(list(packed), flatten=True)).loss.item() == pytest.approx(expected, rel=1e-5)

        # Sample B after sample A in one row: B's logits are B's alone, whatever A holds.
        a, b = rows[1]["input_ids"], rows[3]["input_ids"]
        alone = model(input_ids=torch.tensor([b])).logits[0]

        def logits_of_b(first: list[int]) -> torch.Tensor:
            row = collate(list(pack(_dataset([{"input_ids": first, "labels": first}, rows[3]]), 128)))
            return model(input_ids=row["input_ids"], position_ids=row["position_ids"]).logits[0, len(first):]

        changed = [(t * 7 + 11) % 900 + 10 for t in a]
        torch.testing.assert_close(logits_of_b(a), alone, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(logits_of_b(changed), alone, atol=1e-5, rtol=1e-5)


def _dataset(rows):
    return datasets.Dataset.from_dict({"input_ids": [r["input_ids"] for r in rows], "labels": [r["labels"] for r in rows]})


def test_padded_batch_loss_equals_per_sample_loss(tiny, tokenizer):
    model = load_model(tiny)
    rows = samples(tokenizer)
    expected, _ = sample_losses(model, rows)
    batch = collate(rows, pad_to_multiple_of=8)
    assert set(batch) == {"input_ids", "labels", "attention_mask"} and batch["input_ids"].shape[1] % 8 == 0
    assert batch["attention_mask"].sum().item() == sum(len(r["input_ids"]) for r in rows)
    with torch.no_grad():
        assert model(**batch).loss.item() == pytest.approx(expected, rel=1e-5)


def test_pack_restarts_positions_and_masks_the_first_label(tokenizer):
    rows = samples(tokenizer)
    lengths = [len(r["input_ids"]) for r in rows]
    max_length = lengths[0] + lengths[1]  # exactly the first two samples fit in one row
    packed = pack(_dataset(rows), max_length=max_length)
    first = packed[0]
    assert first["input_ids"] == rows[0]["input_ids"] + rows[1]["input_ids"]
    assert first["position_ids"] == list(range(lengths[0])) + list(range(lengths[1]))
    assert first["labels"] == [IGNORE_INDEX] + rows[0]["labels"][1:] + [IGNORE_INDEX] + rows[1]["labels"][1:]
    assert sum(len(p["input_ids"]) for p in packed) == sum(lengths)


# -- command line ----------------------------------------------------------------------------------

def test_check_command_reports_counts_and_bad_data(tmp_path, tiny):
    good = jsonl(tmp_path / "good.jsonl", [CONVERSATION, CONVERSATION, {"messages": CONVERSATION["messages"][:3]}])
    bad = write(tmp_path / "bad.jsonl", json.dumps(CONVERSATION) + "\n{oops\n")
    run = subprocess.run([sys.executable, "-m", "myassistant.scripts.cli", "data", "check", str(good), "--tokenizer", str(tiny),
                          "--max-length", "20"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    stats = json.loads(run.stdout)
    assert stats["records"] == 3 and stats["assistant_turns"] == 5 and stats["duplicates"] == 1
    assert stats["longer_than_max_length"] == 3 and stats["tokens_max"] > 20
    run = cli("data", "check", str(bad))
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1].startswith(f"assistant data: error: {bad}:2: malformed JSON")


def test_a_utf8_bom_is_read_whether_the_format_is_named_or_detected(tmp_path):
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + (json.dumps(CONVERSATION, ensure_ascii=False) + "\n").encode())
    for extra in ((), ("--format", "openai")):
        run = cli("data", "check", str(bom), *extra)
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)["records"] == 1


def test_a_folder_or_glob_of_chat_files_is_told_apart_from_a_missing_file(tmp_path):
    (tmp_path / "chats").mkdir()
    jsonl(tmp_path / "chats" / "a.jsonl", [CONVERSATION])
    for given in (tmp_path / "chats", tmp_path / "chats" / "*.jsonl"):
        run = cli("data", "check", str(given))
        assert run.returncode == 1 and "chat data is one file" in run.stderr.strip().splitlines()[-1], run.stderr


def test_a_json_array_is_read_whatever_the_file_is_called_and_the_encoding_is_honoured(tmp_path, tiny):
    """An (indented or one-line) JSON array saved as .jsonl, and a GBK chat file with --encoding gb18030."""
    from myassistant.trainer.data.corpus import TextSpec
    from myassistant.trainer.data.sources import source_kind

    for name, text in (("pretty.jsonl", json.dumps([CONVERSATION], indent=2, ensure_ascii=False)),
                       ("oneline.jsonl", json.dumps([CONVERSATION, CONVERSATION], ensure_ascii=False))):
        path = write(tmp_path / name, text)
        assert source_kind(str(path), "auto", TextSpec()) == "chat" and load_records(path)[0] == CONVERSATION
    gbk = tmp_path / "gbk.jsonl"
    gbk.write_bytes((json.dumps(CONVERSATION, ensure_ascii=False) + "\n").encode("gb18030"))
    with pytest.raises(DataError, match="it reads as gb18030: set data.encoding=gb18030 \\(`data check` / `data identity`: --encoding "
                                        "gb18030\\), or save the file as UTF-8$"):
        load_records(gbk)
    assert load_records(gbk, encoding="gb18030") == [CONVERSATION]
    run = cli("data", "check", str(gbk), "--encoding", "gb18030")
    assert run.returncode == 0 and json.loads(run.stdout)["records"] == 1, run.stderr


def test_a_weight_0_turn_is_context_and_lost_answers_are_named(tokenizer, caplog):
    taught = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "old answer", "weight": 0},
                           {"role": "user", "content": "again"}, {"role": "assistant", "content": "new answer"}]}
    row = tokenize_records([taught], tokenizer, max_length=512)[0]
    learned = tokenizer.decode([t for t in row["labels"] if t != IGNORE_INDEX])
    assert "new answer" in learned and "old answer" not in learned
    long_question = {"messages": [{"role": "user", "content": "why " * 300}, {"role": "assistant", "content": "because"}]}
    with caplog.at_level(logging.WARNING, logger="myassistant.trainer.data"):
        stats = describe([CONVERSATION, long_question], tokenizer, max_length=64)
    assert stats["no_answer_within_max_length"] == 1 and describe([taught])["assistant_turns"] == 1
    assert "1 of 2 records keep no answer token within max_length=64 (records 2, counted from 1" in caplog.text


def test_an_opening_assistant_turn_is_context_and_sharegpt_turns_take_weights(tmp_path, tokenizer, caplog):
    """ShareGPT dumps often open with the assistant's greeting: no question asks for it, so it is context (it
    crashed the chat template's rendering of the empty prompt before it); a ShareGPT turn's weight 0 is OpenAI's."""
    greeting = {"conversations": [{"from": "gpt", "value": "Hello! How can I help?"}, {"from": "human", "value": "hi"},
                                  {"from": "gpt", "value": "old answer", "weight": 0}, {"from": "human", "value": "again"},
                                  {"from": "gpt", "value": "new answer"}]}
    with caplog.at_level(logging.WARNING, logger="myassistant.trainer.data"):
        records = load_records(jsonl(tmp_path / "greeting.jsonl", [greeting]))
    assert "1 of 1 records open with an assistant turn; no question asks for it, so it is context" in caplog.text
    row = tokenize_records(records, tokenizer, max_length=512)[0]
    assert trained_pieces(tokenizer, row["input_ids"], row["labels"]) == ["new answer<|im_end|>"]
    assert describe(records)["assistant_turns"] == 1  # data check counted the greeting (and the weight-0 turn)
    alone = {"conversations": [{"from": "gpt", "value": "Hello!"}, {"from": "human", "value": "hi"}]}
    with pytest.raises(DataError, match=r"alone.jsonl:1: field 'conversations' has no assistant reply after the "
                                        "opening assistant turn"):
        load_records(jsonl(tmp_path / "alone.jsonl", [alone]))
    with pytest.raises(DataError, match=r"field 'conversations\[0\].weight' is 0; it is 0 or 1, on assistant"):
        load_records(jsonl(tmp_path / "bad.jsonl", [{"conversations": [{"from": "human", "value": "hi", "weight": 0},
                                                                        {"from": "gpt", "value": "yo"}]}]))


def test_records_written_over_several_lines_are_read(tmp_path):
    """A pretty-printed record (json.dump(..., indent=2)), or several one after another, is valid JSON that the line
    reader called malformed at line 1."""
    record = {"messages": [{"role": "user", "content": "你是谁？"}, {"role": "assistant", "content": "我是Alice。"}]}
    one = write(tmp_path / "one.json", json.dumps(record, indent=2, ensure_ascii=False))
    assert load_records(one) == [record]
    checked = cli("data", "check", str(one))  # the command tells a file's kind from its first record first
    assert checked.returncode == 0 and json.loads(checked.stdout)["records"] == 1, checked.stderr
    two = write(tmp_path / "two.jsonl", json.dumps(record, indent=2) + "\n" + json.dumps(record, indent=2) + "\n")
    assert load_records(two) == [record, record]
    broken = write(tmp_path / "broken.jsonl", json.dumps(record, indent=2) + "\n{\n  \"messages\": [\n}\n")
    with pytest.raises(DataError, match=r"broken.jsonl:15: malformed JSON \(Expecting value at column 1\)$"):
        load_records(broken)
