"""assistant report: every figure against the base on the same prompts, zh and en apart, with its prompt count."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import cli, run_cli
from myassistant.trainer.identity import IdentitySpec, write_identity_dataset
from myassistant.trainer.identity.report import MEASURES


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    spec = IdentitySpec(name="Alice", count=40, eval_identity=8, eval_general=6)
    return write_identity_dataset(spec, tmp_path_factory.mktemp("report") / "data")


def test_report_measures_every_figure_for_both_models_and_both_languages(tiny_checkpoint, data, tmp_path):
    out = tmp_path / "report"
    run = run_cli("report", str(tiny_checkpoint), "--data", str(data), "--base", str(tiny_checkpoint), "--out", str(out),
                  "--max-new-tokens", "6", "--system", "You are Alice.", timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"wrote report.json and report.md to {out}" in run.stderr  # where the report went
    rep = json.loads((out / "report.json").read_text(encoding="utf-8"))
    figures = rep["figures"]
    assert list(figures) == [m.key for m in MEASURES]
    counts = {"identity": 8, "identity_multi": 8, "identity_seen": 8, "leak": 6, "leak_multi": 6, "agreement": 6,
              "agreement_multi": 6, "overlap": 6, "identity_system": 8, "leak_system": 6, "leak_multi_system": 6,
              "identity_guarded": 8, "leak_guarded": 6, "leak_multi_guarded": 6}
    for key, figure in figures.items():
        assert figure["n"]["all"] == counts[key] == figure["n"]["zh"] + figure["n"]["en"], key
        assert figure["n"]["zh"] and figure["n"]["en"], key
        assert set(figure["fine_tuned"]) == {"all", "zh", "en"}, key
    # The same weights on both sides: the same answers, so every figure is the base's and agreement is 100 %.
    assert figures["agreement"]["fine_tuned"] == figures["agreement_multi"]["fine_tuned"] == {"all": 1.0, "zh": 1.0, "en": 1.0}
    assert figures["agreement"]["base"] is None
    assert all(f["fine_tuned"] == f["base"] for k, f in figures.items() if not k.startswith("agreement"))
    # What the terminal, report.md (the model card) show: every figure with the prompts it rests on.
    assert run.stdout.startswith("Fine-tune report: Alice")
    md = (out / "report.md").read_text(encoding="utf-8")
    for figure in figures.values():
        assert figure["label"] in run.stdout and figure["label"] in md
    assert "| identity, held-out, asked as turn 2-4 |" in md and "| 8 (4 / 4) |" in md
    assert "System prompt: `You are Alice.`" in md
    assert rep["fine_tuned"] == {"identity_accuracy": figures["identity"]["fine_tuned"]["all"], "identity_n": 8,
                                 "identity_seen_accuracy": figures["identity_seen"]["fine_tuned"]["all"],
                                 "identity_seen_n": 8, "identity_leak": figures["leak"]["fine_tuned"]["all"],
                                 "general_n": 6} == rep["base"]


def test_data_written_before_multi_turn_sets_still_reports(tiny_checkpoint, data, tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    for f in data.iterdir():
        if "multi" not in f.name:
            (old / f.name).write_bytes(f.read_bytes())
    from myassistant.trainer.identity.report import write_report

    rep = write_report(tiny_checkpoint, old, out_dir=tmp_path / "out", max_new_tokens=4)
    assert rep["figures"]["identity_multi"]["n"]["all"] == 8 and rep["figures"]["leak_multi"]["n"]["all"] == 6
    assert rep["base_model"] is None and rep["base"] is None and "agreement" not in rep["figures"]


def test_missing_data_is_one_line_error(tiny_checkpoint, tmp_path):
    run = cli("report", str(tiny_checkpoint), "--data", str(tmp_path), "--kind", "identity")
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1].endswith("meta.json: missing; the report needs the folder written by "
                                                        "`assistant data identity`")
    empty = write_identity_dataset(IdentitySpec(name="Alice", count=4, eval_identity=0, eval_general=0),
                                   tmp_path / "no-held-out")  # it printed a table of dashes
    run = cli("report", str(tiny_checkpoint), "--data", str(empty), "--kind", "identity")
    assert run.returncode == 1 and run.stderr.strip().splitlines()[-1].endswith(
        "no held-out questions to measure (eval_identity.jsonl and eval_general.jsonl are empty); write the data "
        "with --eval-identity N --eval-general N"), run.stderr


def test_a_name_is_found_as_a_word_not_inside_other_words():
    from myassistant.trainer.identity.score import mentions, says_name

    assert not mentions("The maximum is 5.", "Max") and not mentions("I use Java.", "Ava")
    assert not mentions("I plan my annual budget.", "Ann")
    assert mentions("我是Alice的助手。", "Alice") and mentions("I'm Alice's assistant.", "alice") and mentions("我是小明", "小明")
    assert says_name("I am Max.", "Max", ["InternLM"]) and not says_name("I am Max, built on InternLM2.", "Max", ["InternLM"])



def test_a_name_is_found_however_its_parts_are_written_and_an_old_name_inside_it_is_its_own():
    """The report scored the data's own perfect answers 0 % for a new name holding an old one (书生·浦语小助手), and
    missed "Dr.Li" for "Dr. Li", full-width "ＡＩ－助手" and another middle dot; the overlap ran Chinese characters on
    with a number beside them ("2加9等于11" one word), so a one-digit slip scored 0."""
    from myassistant.trainer.identity.score import mentions, overlap, says_name, words

    assert says_name("不是，我是书生·浦语小助手，不是书生·浦语。".split("，")[1], "书生·浦语小助手", ["书生·浦语", "InternLM"])
    assert not says_name("我是书生·浦语。", "书生·浦语小助手", ["书生·浦语"])
    assert says_name("I'm InternLM-Alice.", "InternLM-Alice", ["InternLM"])
    assert not says_name("I'm InternLM-Alice, that is InternLM.", "InternLM-Alice", ["InternLM"])
    assert mentions("I am Dr.Li.", "Dr. Li") and mentions("dr li here", "Dr. Li") and not mentions("Dr. Lin", "Dr. Li")
    assert mentions("我是ＡＩ－助手 2号", "AI-助手 2号") and mentions("我是AI助手2号", "AI-助手 2号")
    assert mentions("我不是书生・浦语", "书生·浦语") and mentions("我不是书生浦语", "书生·浦语")
    assert words("2加9等于11。") == ["2", "加", "9", "等", "于", "11"]
    assert overlap("16加12等于27", "16加12等于28") > 0.8


def test_data_written_again_for_another_name_is_not_measured_silently(tiny_checkpoint, tmp_path):
    """A merged folder (weights, the run's run_config.yaml and run.json) whose identity data folder was written
    again for another name: the report named and scored the new name, with no word of it."""
    import shutil

    from myassistant.trainer.config import load_config, save_config
    from myassistant.trainer.data import DataError
    from myassistant.trainer.identity.report import write_report

    data = write_identity_dataset(IdentitySpec(name="Alice", count=20, eval_identity=4, eval_general=4),
                                  tmp_path / "data")
    merged = tmp_path / "merged"
    shutil.copytree(tiny_checkpoint, merged)
    save_config(load_config(None, [f"model.base={tiny_checkpoint}", f"data.train_file={data / 'train.jsonl'}"]),
                merged / "run_config.yaml")
    (merged / "run.json").write_text(json.dumps({"name": "Alice", "steps": 1}), encoding="utf-8")
    write_identity_dataset(IdentitySpec(name="Carol", count=20, eval_identity=4, eval_general=4), data)
    with pytest.raises(DataError, match="meta.json: the data now teaches 'Carol', but .*merged was trained to be "
                                        "'Alice' .*pass --data with data for that name"):
        write_report(merged, out_dir=tmp_path / "out")


def test_wrong_report_inputs_are_one_line_each(tiny_checkpoint, tmp_path):
    from myassistant.model import CheckpointError
    from myassistant.trainer.data import DataError
    from myassistant.trainer.identity.report import write_report

    data_file = tmp_path / "chats.jsonl"
    data_file.write_text("{}\n", encoding="utf-8")
    with pytest.raises(CheckpointError, match="chats.jsonl: a file; the report measures a model: give the training run "
                                              "folder"):
        write_report(data_file)
    data = write_identity_dataset(IdentitySpec(name="Alice", count=8, eval_identity=2, eval_general=2), tmp_path / "d")
    with pytest.raises(CheckpointError, match="d: identity data .*, not a model; give the training run folder or a "
                                              "merged model folder first, and this folder as --data"):
        write_report(data)  # the data folder where the model goes
    with pytest.raises(DataError, match="^--data .*chats.jsonl: a file; it is the folder `assistant data identity` wrote"):
        write_report(tiny_checkpoint, data_file)
    with pytest.raises(DataError, match="nowhere: no such folder$"):
        write_report(tiny_checkpoint, tmp_path / "nowhere")
    run = run_cli("report", str(tiny_checkpoint), "--max-new-tokens", "0", timeout=300)
    assert run.returncode == 2 and "--max-new-tokens: 0: the answers need at least 1 token" in run.stderr
