"""--help of every command: each argument and sub-command says what it is, and no reST backticks show."""
from __future__ import annotations

import argparse
import importlib

import pytest

from conftest import cli, run_cli
from myassistant.scripts.cli import COMMANDS


class _Parsed(Exception):
    pass


def _parsers(module_name: str, monkeypatch) -> list[argparse.ArgumentParser]:
    """The command's parser and its sub-commands' parsers, caught where main() parses its arguments."""
    caught = []

    def parse_args(self, args=None, namespace=None):
        caught.append(self)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_args)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", parse_args)
    with pytest.raises(_Parsed):
        importlib.import_module(module_name).main([])
    parsers = list(caught)
    for parser in caught:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helped = {a.dest for a in action._choices_actions if a.help}
                assert helped == set(action.choices), f"{parser.prog}: sub-commands without help"
                parsers += action.choices.values()
    return parsers


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_argument_has_help_and_no_backticks_show(command, monkeypatch):
    for parser in _parsers(COMMANDS[command][0], monkeypatch):
        texts = [parser.description or "", parser.epilog or ""]
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, f"{parser.prog}: {'/'.join(action.option_strings) or action.dest} has no help"
            texts.append(action.help)
        assert not [t for t in texts if "`" in t], f"{parser.prog}: backticks in its help"
        # a flag's prefix is no flag: `train ... --o` was --overwrite, which deletes a run
        assert not parser.allow_abbrev, f"{parser.prog}: takes abbreviated flags"


def test_sub_command_help_describes_it():
    run = run_cli("data", "identity", "--help", timeout=120)
    assert run.returncode == 0, run.stderr
    assert "held-out" in run.stdout and "--seed SEED" in run.stdout and "`" not in run.stdout
    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("assistant (myassistant)")


def test_commands_that_write_a_folder_never_replace_someone_elses(tmp_path):
    """`assistant tiny` and `assistant data shapes` replace an earlier build of theirs, but refuse a folder holding
    other files, and leave it as it was."""
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for args in (("tiny", str(mine)), ("data", "shapes", "--out", str(mine), "--per-class", "1")):
        refused = cli(*args)
        assert refused.returncode == 1 and ("notes.txt" in refused.stderr or "no picture set" in refused.stderr)
        assert "Traceback" not in refused.stderr and [p.name for p in mine.iterdir()] == ["notes.txt"]
    for args in (("tiny", str(tmp_path / "tiny")), ("data", "shapes", "--out", str(tmp_path / "set"), "--per-class", "1")):
        assert cli(*args).returncode == 0
        again = cli(*args)  # an earlier build of its own is replaced
        assert again.returncode == 0, again.stderr
    assert cli("tiny", ".", cwd=tmp_path / "tiny").returncode == 0  # "." is a folder like any other


def test_data_check_offers_the_text_units_the_corpus_reader_knows():
    from myassistant.trainer.data.corpus import TEXT_UNITS

    refused = run_cli("data", "check", "x.txt", "--text-unit", "bogus")
    assert refused.returncode == 2 and f"choose from {', '.join(map(repr, TEXT_UNITS))}" in refused.stderr


def test_wrong_input_is_named_in_one_line_before_any_work(tmp_path, tiny_checkpoint):
    afile, missing, run = tmp_path / "afile", tmp_path / "missing", tmp_path / "run"
    afile.write_text("x")
    afile.with_suffix(".gguf").write_bytes(b"GGUF")
    run.mkdir()
    (run / "adapter_config.json").write_text("{}")
    cases = [(("report", str(tiny_checkpoint), "--out", str(afile)), "is a file"),
             (("data", "identity", "--name", "Bob", "--out", str(afile)), "is a file"),
             (("export", str(tiny_checkpoint), "--out", "/proc/nope/x.gguf"), "cannot write there"),
             (("export", str(tiny_checkpoint), "--out", f"{tmp_path}/"), f"--out {tmp_path}/: a folder; give the .gguf"),
             (("chat", str(run), "--prompt", "hi"), "adapter, not a model"),
             (("chat", str(tiny_checkpoint), "--prompt", " "), "--prompt: the message is empty"),
             (("chat", str(afile.with_suffix(".gguf")), "--prompt", "hi"), "a GGUF file, for llama.cpp"),
             (("chat", str(tiny_checkpoint), "--image", str(afile), "--prompt", "what?"), "is a text-only model"),
             (("train", "--config", "configs/tiny_lora_cpu.yaml", f"model.base={missing}",
               f"train.output_dir={tmp_path / 'out'}"), f"{missing}: no such model folder"),
             (("report", str(missing)), f"{missing}: no such model folder"),
             (("train", "--config", "configs/tiny_lora_cpu.yaml", "--o"), "unrecognized arguments: --o"),
             (("tiny", str(tmp_path / "t1"), "--heads", "3"), "--heads 3 must be a multiple of --kv-heads 2"),
             (("tiny", str(tmp_path / "t2"), "--vocab-size", "10"), "a vocabulary of 10 pieces is too small"),
             # the file system's refusal of a place a user chose (here a cache under a file): its one line
             (("clone", tiny_checkpoint.as_uri(), "--cache-dir", str(afile / "cache")), "Not a directory")]
    for args, message in cases:
        result = cli(*args)
        assert result.returncode in (1, 2) and message in result.stderr.strip().splitlines()[-1], (args, result.stderr)
        assert "Traceback" not in result.stderr, args
