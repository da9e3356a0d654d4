"""Incremental pre-training on raw text: every token trained once, in max_length blocks; what a document
is (units, JSONL, Parquet, folders, globs); the token cache; resume; mixed sources; bad input; and the
pre-training report (held-out perplexity before/after) on a tiny model the tests build."""
from __future__ import annotations

import json
import logging
import math
import random
import re
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import TrainerCallback

from conftest import cli, run_cli
from myassistant.model import load_tokenizer
from myassistant.trainer.config import load_config
from myassistant.trainer.data import DataError, IGNORE_INDEX, load_records
from myassistant.trainer.data.blocks import TextBlocks, tokenize_corpus
from myassistant.trainer.data.corpus import TextSpec
from myassistant.trainer.identity import GENERAL_DATA
from myassistant.trainer.perplexity import write_pretrain_report
from myassistant.trainer.train import train

TOWNS = ["Ilbor", "Quen", "Marrow", "Tessel", "Dunlo", "Varn"]
GOODS = ["salt", "copper", "wool", "amber", "grain", "tin"]
SEASONS = ["spring", "summer", "autumn", "winter"]


def domain_documents(n: int, seed: int) -> list[str]:
    """A made-up trading almanac: a domain the tiny base has never seen, with held-out text like it."""
    r = random.Random(seed)
    docs = []
    for _ in range(n):
        a, b, c = r.sample(TOWNS, 3)
        docs.append(f"The harbour of {a} ships {r.choice(GOODS)} to {b} every {r.choice(SEASONS)}.\n"
                    f"Traders from {c} pay in {r.choice(GOODS)} when the river is high.\n"
                    f"In {r.choice(SEASONS)} the road from {a} to {c} is closed.")
    return docs


@pytest.fixture(autouse=True)
def token_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("ASSISTANT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoint):
    return load_tokenizer(tiny_checkpoint)


def doc_ids(tokenizer, docs: list[str]) -> list[int]:
    """The stream training must see: each document's tokens, then eos."""
    return [t for d in docs for t in tokenizer(d, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]]


class Batches(TrainerCallback):
    """Records every collated batch the model is called with (a forward pre-hook), with the step it belongs to."""

    def __init__(self):
        self.rows, self.step = [], 0

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.step = state.global_step
        model.register_forward_pre_hook(self.hook, with_kwargs=True)

    def on_step_end(self, args, state, control, **kwargs):
        self.step = state.global_step

    def hook(self, module, args, kwargs):
        if module.training:
            self.rows += [(self.step + 1, *row) for row in zip(*(kwargs[k].tolist() for k in
                                                                  ("input_ids", "labels", "position_ids")))]


def pretrain_overrides(base: Path, data: str, out: Path, **train_kw) -> list[str]:
    settings = {"num_train_epochs": 1, "per_device_train_batch_size": 1, "gradient_accumulation_steps": 1,
                "learning_rate": 3e-3, "gradient_checkpointing": False, "report_to": "none", "logging_steps": 1,
                "save_steps": 1000, **train_kw}
    return [f"model.base={base}", f"data.train_file={data}", "data.max_length=32", "quant.method=full",
            f"train.output_dir={out}", *(f"train.{k}={v}" for k, v in settings.items())]


# -- every token once ---------------------------------------------------------------------------------

def test_long_documents_are_tokenised_in_pieces_with_the_tokens_of_the_whole(tokenizer, tmp_path):
    """A novel whose paragraphs are single lines is one document, and a record can be one line of megabytes: handed
    to the tokeniser whole (or in 1M-character pieces) they took ~100x their size in RAM."""
    from myassistant.trainer.data.corpus import PIECE_CHARS, iter_pieces

    line = "The cat sat on the mat, e.g. at 3.14 pm. 中文句子，没有换行。 " * (3 * PIECE_CHARS // 40)
    novel = "".join(f"第{i}章 {line[:PIECE_CHARS // 3]}\n" for i in range(12))  # no blank line: one document
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "book.txt").write_text(novel, encoding="utf-8")
    (tmp_path / "docs" / "record.jsonl").write_text(json.dumps({"text": line}, ensure_ascii=False) + "\n")
    files = sorted((tmp_path / "docs").iterdir())
    pieces = list(iter_pieces(files, TextSpec()))
    assert len(pieces) > 6 and max(len(p["text"]) for p in pieces) <= PIECE_CHARS
    ends = [i + 1 for i, p in enumerate(pieces) if p["last"]]
    assert len(ends) == 2
    book, record = ("".join(p["text"] for p in pieces[lo:hi]) for lo, hi in zip([0, ends[0]], ends))
    assert book.strip() == novel.strip() and record == line  # (book.txt first: sorted)
    stream = tokenize_corpus(tmp_path / "docs", tokenizer, num_proc=1, cache_dir=tmp_path / "cache")
    assert stream.documents == 2
    assert stream.tokens.tolist() == doc_ids(tokenizer, [book, record])  # the pieces' tokens are the whole's


def test_text_file_trains_every_token_exactly_once(tiny_checkpoint, tokenizer, tmp_path, caplog):
    docs = domain_documents(7, seed=3)
    corpus = tmp_path / "almanac.txt"
    corpus.write_text("\n\n\n".join(docs) + "\n", encoding="utf-8")
    stream = doc_ids(tokenizer, docs)
    n_tokens, max_length = len(stream) - len(docs), 32
    blocks = math.ceil((n_tokens + len(docs)) / max_length)
    assert blocks > 3 * len(docs) // 2  # documents longer than a block: truncation would lose most tokens

    seen = Batches()
    with caplog.at_level("INFO"):
        run = train(load_config(None, pretrain_overrides(tiny_checkpoint, str(corpus), tmp_path / "run")), callbacks=(seen,))
    assert f"{len(docs)} documents (.txt unit: paragraph), {n_tokens:,} tokens + {len(docs)} eos -> {blocks} blocks" in caplog.text
    assert "nothing truncated" in caplog.text and "were truncated" not in caplog.text
    info = json.loads((run / "run.json").read_text())
    assert info["steps"] == blocks and info["tokens_seen"] == len(stream)  # each document's eos counted too

    rows = seen.rows
    assert len(rows) == blocks  # one block a step (batch 1), one epoch
    expected = {tuple(stream[i:i + max_length]) for i in range(0, len(stream), max_length)}
    assert {tuple(ids) for _, ids, _, _ in rows} == expected  # every block once, none cut or padded
    assert Counter(t for _, ids, _, _ in rows for t in ids) == Counter(stream)  # every token once
    starts = {i for i, t in enumerate(stream) if i == 0 or stream[i - 1] == tokenizer.eos_token_id}
    for _, ids, labels, positions in rows:
        lo = next(i for i in range(0, len(stream), max_length) if tuple(stream[i:i + max_length]) == tuple(ids))
        for j, (token, label, pos) in enumerate(zip(ids, labels, positions)):
            restart = j == 0 or lo + j in starts  # attention and positions per document, as packing does
            assert pos == (0 if restart else positions[j - 1] + 1)
            assert label == (IGNORE_INDEX if restart else token)


@pytest.mark.parametrize("unit, expected", [
    ("paragraph", ["one\nstill one", "two", "three a\nthree b"]),
    ("line", ["one", "still one", "two", "three a", "three b"]),
    ("file", ["one\nstill one\n\n\ntwo\n \nthree a\nthree b\n"]),
])
def test_txt_units(tokenizer, tmp_path, unit, expected):
    path = tmp_path / "units.txt"
    path.write_text("one\nstill one\n\n\ntwo\n \nthree a\nthree b\n", encoding="utf-8")
    stream = tokenize_corpus(path, tokenizer, TextSpec(text_unit=unit))
    assert stream.documents == len(expected)
    assert stream.tokens.tolist() == doc_ids(tokenizer, expected)


def test_folder_glob_jsonl_and_parquet(tiny_checkpoint, tokenizer, tmp_path, caplog):
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("alpha one\n\nalpha two\n", encoding="utf-8")
    (folder / "sub" / "b.jsonl").write_text('{"body": "beta one"}\n\n{"body": "beta two", "id": 2}\n', encoding="utf-8")
    pq.write_table(pa.table({"body": ["gamma one", None, "gamma two"], "n": [1, 2, 3]}), folder / "c.parquet")
    (folder / "notes.md").write_text("not part of the corpus", encoding="utf-8")
    (folder / "scan.pdf").write_bytes(b"%PDF-1.4")
    spec = TextSpec(text_field="body")
    with caplog.at_level("WARNING"):
        stream = tokenize_corpus(folder, tokenizer, spec)  # files in sorted order: a.txt, c.parquet, sub/b.jsonl
    assert f"{folder}: skipping 1 .md, 1 .pdf file(s)" in caplog.text  # said, not silently left out
    assert tokenize_corpus(str(folder / "*.md"), tokenizer, spec).tokens.tolist() == doc_ids(  # the glob it names
        tokenizer, ["not part of the corpus"])
    docs = ["alpha one", "alpha two", "gamma one", "gamma two", "beta one", "beta two"]
    assert stream.tokens.tolist() == doc_ids(tokenizer, docs)
    assert tokenize_corpus(str(folder / "**" / "*.jsonl"), tokenizer, spec).tokens.tolist() == doc_ids(tokenizer, docs[4:])
    rows = TextBlocks(stream, 4)
    assert len(rows) == math.ceil(len(stream.tokens) / 4) and sum(len(rows[i]["input_ids"]) for i in range(len(rows))) == len(stream.tokens)

    run = run_cli("data", "check", str(folder / "c.parquet"), "--text-field", "body", "--tokenizer",
                  str(tiny_checkpoint), "--max-length", "3")
    assert run.returncode == 0, run.stderr
    stats = json.loads(run.stdout)
    n = len(doc_ids(tokenizer, docs[2:4])) - 2
    assert (stats["kind"], stats["documents"], stats["tokens"], stats["eos"], stats["blocks"]) == ("text", 2, n, 2, math.ceil((n + 2) / 3))


def test_second_tokenisation_comes_from_the_cache(tokenizer, tmp_path, token_cache, caplog):
    path = tmp_path / "c.txt"
    path.write_text("first\n\nsecond\n", encoding="utf-8")
    with caplog.at_level("INFO"):
        first = tokenize_corpus(path, tokenizer)
        assert "tokenised 2 documents" in caplog.text
        caplog.clear()
        again = tokenize_corpus(path, tokenizer)
        assert "from the cache" in caplog.text and again.folder == first.folder
        path.write_text("first\n\nsecond\n\nthird\n", encoding="utf-8")  # a changed file is tokenised again
        assert tokenize_corpus(path, tokenizer).documents == 3
    assert len([p for p in token_cache.glob("corpus/*") if not p.name.startswith(".")]) == 2


# -- resume -------------------------------------------------------------------------------------------

class StopAt(TrainerCallback):
    """Stop the training after step ``step`` (a run cut off, to be resumed)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        control.should_training_stop = state.global_step == self.step


def test_resume_lands_in_the_right_block(tiny_checkpoint, tokenizer, tmp_path):
    corpus = tmp_path / "almanac.txt"
    corpus.write_text("\n\n".join(domain_documents(6, seed=5)), encoding="utf-8")
    settings = {"save_steps": 4, "per_device_train_batch_size": 2}

    whole = Batches()
    train(load_config(None, pretrain_overrides(tiny_checkpoint, str(corpus), tmp_path / "whole", **settings)),
          callbacks=(whole,))
    cfg = load_config(None, pretrain_overrides(tiny_checkpoint, str(corpus), tmp_path / "cut", **settings))
    before, after = Batches(), Batches()
    train(cfg, callbacks=(StopAt(4), before))
    train(cfg, resume=True, callbacks=(after,))
    assert [r for r in whole.rows if r[0] <= 4] == before.rows
    assert [r for r in whole.rows if r[0] > 4] == after.rows and after.rows[0][0] == 5


def test_resume_on_changed_data_says_so(tiny_checkpoint, tmp_path, caplog):
    corpus = tmp_path / "almanac.txt"
    corpus.write_text("\n\n".join(domain_documents(6, seed=5)), encoding="utf-8")
    cfg = load_config(None, pretrain_overrides(tiny_checkpoint, str(corpus), tmp_path / "run", save_steps=2,
                                               max_steps=4))
    train(cfg, callbacks=(StopAt(2),))
    with caplog.at_level("WARNING"):
        train(cfg, resume=True, callbacks=(StopAt(3),))  # the same data: nothing said
        assert "training data changed" not in caplog.text
        corpus.write_text("\n\n".join(domain_documents(8, seed=5)), encoding="utf-8")
        train(cfg, resume=True)
    assert "the training data changed since this run's last session (records 6 -> 8" in caplog.text
    assert "skips the first 2 steps' batches" in caplog.text


# -- mixed sources and the report ---------------------------------------------------------------------

def test_mixed_sources_each_keep_their_rule_and_report_dispatches(tiny_checkpoint, tmp_path, caplog):
    corpus, chats = tmp_path / "almanac.txt", tmp_path / "chats.jsonl"
    corpus.write_text("\n\n".join(domain_documents(4, seed=1)), encoding="utf-8")
    chats.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Question {i} " * 20},
                                                      {"role": "assistant", "content": "An answer."}]}) + "\n"
                             for i in range(6)), encoding="utf-8")
    sources = json.dumps([{"path": str(corpus), "kind": "text"}, {"path": str(chats)}])
    args = [a for a in pretrain_overrides(tiny_checkpoint, "", tmp_path / "mixed", max_steps=3) if "train_file" not in a]
    with caplog.at_level("INFO"):
        run = train(load_config(None, [*args, f"data.sources={sources}"]))
    assert f"{corpus}: raw text kept whole" in caplog.text
    assert f"{chats}: instruction data, truncated to max_length=32 (6 of 6 at the limit), packed" in caplog.text
    assert json.loads((run / "run.json").read_text())["kind"] == "mixed"
    readme = (run / "README.md").read_text()  # what the folder is, and commands that run as they read for its kind
    assert "incremental pre-training of" in readme and f"assistant report {run} --data HELD_OUT_TEXT" in readme
    complete = next(line.strip() for line in readme.splitlines() if "--complete" in line)
    assert complete.startswith("assistant chat ") and complete.endswith('--complete "THE START OF A TEXT"'), readme
    saved = load_config(run / "run_config.yaml")
    assert [(s.path, s.kind) for s in saved.data.sources] == [(str(corpus), "text"), (str(chats), "auto")]

    report = run_cli("report", str(run), "--data", str(corpus), "--chat-data", str(chats))
    assert report.returncode == 0, report.stderr[-2000:]
    assert "## Pre-training report" in report.stdout and "held-out domain text `almanac.txt`" in report.stdout


@pytest.mark.parametrize("bad", [
    [{"path": "x.txt", "kind": "book"}], [{"path": "x.txt", "unit": "line"}], [{"kind": "text"}],
    [{"path": "x.txt", "encoding": "gbk2"}],
])
def test_bad_sources_are_config_errors(bad, tmp_path):
    from myassistant.trainer.config import ConfigError

    with pytest.raises(ConfigError, match="data.sources"):
        load_config(None, ["model.base=m", f"data.sources={json.dumps(bad)}"])


def test_pretraining_lowers_held_out_perplexity(tiny_checkpoint, tmp_path):
    """The proof on CPU: a base that never saw the domain, one epoch of its text, held-out text scored."""
    corpus, held_out, chats = tmp_path / "almanac.txt", tmp_path / "held_out.txt", tmp_path / "general.jsonl"
    corpus.write_text("\n\n".join(domain_documents(160, seed=0)), encoding="utf-8")
    held_out.write_text("\n\n".join(domain_documents(20, seed=99)), encoding="utf-8")
    chats.write_text("".join(GENERAL_DATA.read_text(encoding="utf-8").splitlines(keepends=True)[:40]), encoding="utf-8")
    args = pretrain_overrides(tiny_checkpoint, str(corpus), tmp_path / "run", per_device_train_batch_size=4,
                              logging_steps=20)
    run = train(load_config(None, [*args, "data.max_length=64"]))
    rep = write_pretrain_report(run, held_out, chat_data=chats)
    trained, base = rep["trained"]["held_out"]["perplexity"], rep["base"]["held_out"]["perplexity"]
    print(f"held-out perplexity: base {base}, trained {trained}; general chat: base "
          f"{rep['base']['chat']['perplexity']}, trained {rep['trained']['chat']['perplexity']}")
    assert trained < base / 20, (trained, base)
    assert rep["trained"]["held_out"]["tokens"] == rep["base"]["held_out"]["tokens"] > 1000
    assert "| held-out domain text `held_out.txt` |" in (run / "report.md").read_text(encoding="utf-8")


# -- bad input ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, content, expected", [
    ("model.txt", b"\x7fELF\x02\x01\x01\x00\x00\x00 binary", "a binary file (NUL byte at offset 7)"),
    ("blank.txt", b"\n \n\n", "no text in 1 file(s): the document set is empty"),
    ("*.nothing", None, "the pattern matches no file"),
    ("null.jsonl", b'{"text": null}\n', "null.jsonl:1: field 'text' is null (keys: text)"),
])
def test_bad_input_stops_before_training(tiny_checkpoint, tmp_path, name, content, expected):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    out = tmp_path / "run"
    with pytest.raises(DataError, match=re.escape(expected)):
        train(load_config(None, pretrain_overrides(tiny_checkpoint, str(tmp_path / name), out)))
    assert not out.exists()


def test_non_utf8_file_is_one_line_naming_the_encoding(tiny_checkpoint, tmp_path):
    (tmp_path / "gbk.txt").write_bytes("第一段文字。\n\n第二段。\n".encode("gb18030"))
    run = cli("train", *pretrain_overrides(tiny_checkpoint, str(tmp_path / "gbk.txt"), tmp_path / "run"))
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1] == (
        f"assistant train: error: {tmp_path / 'gbk.txt'}:1: not utf-8 text (byte 0xb5: invalid start byte); "
        "it reads as gb18030: set data.encoding=gb18030 (`data check` / `data identity`: --encoding gb18030), or save the file as UTF-8")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("encoding, text", [
    ("big5", "這是一個測試，我們用繁體中文寫的句子。今天天氣很好。\n"),
    ("shift_jis", "これは日本語のテストです。今日はいい天気ですね。\n"),
    ("euc-kr", "이것은 한국어 테스트입니다. 오늘 날씨가 좋네요.\n"),
    ("cp1252", "Café déjà vu, naïve façade, crème brûlée.\n"),
])
def test_the_encoding_named_is_the_files_not_gb18030_which_reads_almost_any_bytes(tmp_path, encoding, text):
    """Big5 and Shift_JIS files were told "it decodes as gb18030", which trained them as garbled text."""
    from myassistant.trainer.data.corpus import check_file

    path = tmp_path / f"{encoding}.txt"
    path.write_bytes((text * 3).encode(encoding))
    with pytest.raises(DataError, match=rf"; it reads as {encoding}: set data.encoding={encoding} "):
        check_file(path, TextSpec())


def test_a_utf8_file_whose_first_mib_is_ascii_is_still_read_as_utf8(tokenizer, tmp_path, caplog):
    """Its Chinese after the sample was read as data.encoding gb18030 ('中文' -> '涓枃')."""
    text = "a" * (1 << 20) + "\n\n中文段落。\n"
    (tmp_path / "late.txt").write_text(text, encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        stream = tokenize_corpus(tmp_path / "late.txt", tokenizer, TextSpec(encoding="gb18030"))
    assert "read as UTF-8, not data.encoding gb18030" in caplog.text
    assert stream.tokens.tolist()[-len(doc_ids(tokenizer, ["中文段落。"])):] == doc_ids(tokenizer, ["中文段落。"])


def test_utf16_files_from_windows_notepad_are_read(tokenizer, tmp_path):
    """Notepad's "Unicode" save is UTF-16 with a byte-order mark: read as such whatever data.encoding says (its lines
    end in two bytes, so it is not split at newline bytes); named without a mark, too."""
    (tmp_path / "windows.txt").write_text("Notepad's \"Unicode\".\n你好\n\n第二段。\n", encoding="utf-16")
    stream = tokenize_corpus(tmp_path / "windows.txt", tokenizer)
    assert stream.tokens.tolist() == doc_ids(tokenizer, ["Notepad's \"Unicode\".\n你好", "第二段。"])
    (tmp_path / "no_mark.txt").write_bytes("你好\n\n谢谢\n".encode("utf-16-le"))  # no mark: named
    stream = tokenize_corpus(tmp_path / "no_mark.txt", tokenizer, TextSpec(encoding="utf-16-le"))
    assert stream.tokens.tolist() == doc_ids(tokenizer, ["你好", "谢谢"])
    chats = tmp_path / "chats.jsonl"
    chats.write_text('{"messages": [{"role": "user", "content": "你是谁"}, {"role": "assistant", "content": "我是小助手"}]}\n'
                     * 2, encoding="utf-16")
    check = cli("data", "check", str(chats))
    assert check.returncode == 0 and json.loads(check.stdout)["records"] == 2, check.stderr


def test_declared_encoding_reads_gbk_text(tokenizer, tmp_path):
    path = tmp_path / "gbk.txt"
    path.write_bytes("你好。\n\n谢谢你的帮助。\n".encode("gb18030"))
    with pytest.raises(DataError, match="data.encoding=gb18030"):
        tokenize_corpus(path, tokenizer)
    stream = tokenize_corpus(path, tokenizer, TextSpec(encoding="gb18030"))
    assert stream.tokens.tolist() == doc_ids(tokenizer, ["你好。", "谢谢你的帮助。"])


def test_pretty_printed_jsonl_and_a_gbk_json_array_are_read(tokenizer, tmp_path):
    """Records written with indent=2 in a .jsonl were malformed at line 1 (chat data read them); a .json array
    ignored data.encoding."""
    pretty = tmp_path / "pretty.jsonl"
    pretty.write_text("".join(json.dumps({"text": t}, indent=2) + "\n" for t in ("one doc", "two doc")),
                      encoding="utf-8")
    assert tokenize_corpus(pretty, tokenizer).tokens.tolist() == doc_ids(tokenizer, ["one doc", "two doc"])
    gbk = tmp_path / "gbk.json"
    gbk.write_bytes(json.dumps([{"text": "你好。"}, {"text": "谢谢。"}], ensure_ascii=False).encode("gb18030"))
    stream = tokenize_corpus(gbk, tokenizer, TextSpec(encoding="gb18030"))
    assert stream.tokens.tolist() == doc_ids(tokenizer, ["你好。", "谢谢。"])


def test_a_utf8_file_beside_gbk_ones_is_read_as_utf8_and_said(tokenizer, tmp_path, caplog):
    """gb18030 decodes UTF-8 bytes without an error, into other characters: with data.encoding=gb18030 for a folder of
    GBK files, its one UTF-8 file was trained on garbled (上海 as 涓婃捣)."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a_gbk.txt").write_bytes("你好。\n".encode("gb18030"))
    (folder / "b_utf8.txt").write_text("上海是中国的城市。Zürich\n", encoding="utf-8")
    (folder / "c_ascii.txt").write_text("plain\n", encoding="ascii")
    with caplog.at_level(logging.WARNING):
        stream = tokenize_corpus(folder, tokenizer, TextSpec(encoding="gb18030"))
    assert stream.tokens.tolist() == doc_ids(tokenizer, ["你好。", "上海是中国的城市。Zürich", "plain"])
    said = [r.getMessage() for r in caplog.records if "read as UTF-8" in r.getMessage()]
    assert len(said) == 1 and "b_utf8.txt: read as UTF-8, not data.encoding gb18030" in said[0]
    chats = tmp_path / "chats.jsonl"  # chat files too
    chat = {"messages": [{"role": "user", "content": "上海"}, {"role": "assistant", "content": "城市"}]}
    chats.write_text(json.dumps(chat, ensure_ascii=False) + "\n", encoding="utf-8")
    assert load_records(chats, encoding="gb18030")[0]["messages"][0]["content"] == "上海"


def test_ctrl_c_while_workers_tokenise_is_one_line(tiny_checkpoint, tmp_path):
    """Ctrl-C reaches every process of the terminal's group: the tokenising workers stop without a traceback each."""
    import os
    import signal
    import subprocess
    import sys
    import time

    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    rng = random.Random(0)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(" ".join(rng.choices(words, k=30)) + "\n" for _ in range(200_000)))
    proc = subprocess.Popen([sys.executable, "-m", "myassistant.scripts.cli", "data", "check", str(corpus),
                             "--text-unit", "line", "--tokenizer", str(tiny_checkpoint)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "ASSISTANT_CACHE": str(tmp_path / "cache")})
    deadline = time.monotonic() + 300
    while len(subprocess.run(["ps", "--ppid", str(proc.pid), "-o", "pid="], capture_output=True,
                             text=True).stdout.split()) < 2:  # the worker pool is up: tokenising has begun
        assert proc.poll() is None and time.monotonic() < deadline, "no tokenising workers came up"
        time.sleep(0.2)
    time.sleep(1)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole group
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130 and err.strip().splitlines()[-1] == "assistant: interrupted", err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    assert not any((tmp_path / "cache").rglob("tokens.bin"))  # nothing half-written left as a corpus
