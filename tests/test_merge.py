"""Merging a LoRA run into standalone weights, tested the peft way: the merged model's logits equal
base + adapter, differ from the bare base, and plain transformers loads the result offline. The run is a
real one on identity data, reported on before the merge, so the merged folder carries its config and
report to the model card of a push."""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import peft
import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from myassistant import model
from conftest import cli, run_card_usage, run_cli
from myassistant.chat import GenerationSettings
from myassistant.model import CheckpointError
from test_train import overrides
from myassistant.hub import push_folder
from myassistant.trainer.config import load_config
from myassistant.trainer.identity import IdentitySpec, write_identity_dataset
from myassistant.trainer.merge import merge
from myassistant.trainer.train import train

IDS = torch.randint(3, 200, (2, 17), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def lora_run(tiny_checkpoint, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("merge")
    data = write_identity_dataset(IdentitySpec(name="Alice", count=8, eval_identity=4, eval_general=4), tmp / "data")
    return train(load_config(None, overrides(tiny_checkpoint, data / "train.jsonl", tmp / "run", max_steps=4,
                                             save_steps=4, eval_steps=0, learning_rate=3e-2, report_to="none")))


@pytest.fixture(scope="module")
def reported(lora_run) -> subprocess.CompletedProcess:
    """``assistant report RUN`` without --data: the run knows the identity data it was trained on."""
    return run_cli("report", str(lora_run), "--max-new-tokens", "4")


@pytest.fixture(scope="module")
def merged(lora_run, reported, tmp_path_factory) -> Path:
    return merge(lora_run, tmp_path_factory.mktemp("out") / "merged", dtype="float32")


@torch.no_grad()
def logits(m) -> torch.Tensor:
    return m(input_ids=IDS).logits


def test_merged_logits_equal_base_plus_adapter(merged, lora_run, tiny_checkpoint):
    base = model.load_model(tiny_checkpoint, dtype=torch.float32)
    bare = logits(base)
    with_adapter = logits(peft.PeftModel.from_pretrained(base, lora_run))
    plain = AutoModelForCausalLM.from_pretrained(merged, trust_remote_code=False)  # no model/ code involved
    assert type(plain).__name__ == "LlamaForCausalLM"
    got = logits(plain)
    torch.testing.assert_close(got, with_adapter, atol=1e-5, rtol=0)
    assert (got - bare).abs().max() > 1e-3, "the adapter changed nothing: a no-op merge would pass"


def test_report_takes_the_data_and_base_the_run_was_trained_on(reported, lora_run):
    assert reported.returncode == 0, reported.stderr[-2000:]
    assert "Fine-tune report: Alice" in reported.stdout and "identity, held-out, asked as turn 2-4" in reported.stdout
    rep = json.loads((lora_run / "report.json").read_text())
    assert rep["base"] is not None and rep["fine_tuned"]["identity_n"] == 4  # measured side by side with the base


def test_merged_folder_is_standalone(merged, lora_run, tiny_checkpoint):
    assert {p.name for p in merged.iterdir()} == {"config.json", "generation_config.json", "model.safetensors",
                                                 "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                                                 "merge.json", "run_config.yaml", "run.json", "report.json", "report.md"}
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(merged.stat().st_mode) == 0o777 & ~umask  # 0755: another user or a container serves it
    for path in merged.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path.name  # 0644, not safetensors' 0600
    tok = AutoTokenizer.from_pretrained(merged)
    assert tok.chat_template and tok.convert_tokens_to_ids("<|im_end|>") in model.stop_token_ids(tok)
    gen = json.loads((merged / "generation_config.json").read_text())
    assert set(model.stop_token_ids(tok)) <= set(gen["eos_token_id"] if isinstance(gen["eos_token_id"], list)
                                                else [gen["eos_token_id"]])
    info = json.loads((merged / "merge.json").read_text())
    assert (info["name"], info["base_model"], info["method"], info["steps"]) == (
        "Alice", str(tiny_checkpoint.resolve()), "lora", 4)
    assert info["carried"] == ["run_config.yaml", "run.json", "report.json", "report.md"]
    assert (merged / "report.md").read_bytes() == (lora_run / "report.md").read_bytes()
    # what the app and `assistant chat` start from: cold sampling, not transformers' greedy or 0.8
    served = GenerationSettings.from_generation_config(gen)
    assert gen["do_sample"] and 0 < served.temperature == gen["temperature"] <= 0.5


def test_card_pushed_from_the_merged_run_says_how_it_was_made(merged, tiny_checkpoint, tmp_path):
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(remote)], check=True)
    push_folder(merged, str(remote), cache_dir=tmp_path / "cache")
    show = lambda *args: subprocess.run(["git", "-C", str(remote), *args], capture_output=True, text=True,  # noqa: E731
                                        check=True).stdout
    card = show("show", "main:README.md")
    assert "\n# Alice\n" in card and show("log", "-1", "--format=%s").strip() == "Upload Alice"
    for row in (f"| base model | `{tiny_checkpoint.name}` |", "| method | `lora` |", "| steps | `4` |",
                "| lora.r | 8 |", "| train.learning_rate | 0.03 |", "## Fine-tune report: Alice",
                "| identity, held-out questions |", "| leak, general prompts after identity turns |"):
        assert row in card, row
    assert str(tiny_checkpoint.parent) not in card  # the machine's paths stay on it
    for unused in ("bnb_4bit", "quant.", "cuda_graphs", "qlora_fold", "vision.",  # a LoRA run's card: not QLoRA's
                   "| train.deepspeed |", "| data.image_folder |", "| lora.rank_pattern |"):  # nor settings left unset
        assert unused not in card, unused
    pushed = show("ls-tree", "-r", "--name-only", "main").split()
    assert {"merge.json", "run.json", "run_config.yaml", "report.json"} <= set(pushed)
    for name in pushed:  # nor in the run's files that go with the model: /home/<user>/... says who trained where
        if not name.endswith(".safetensors"):
            assert str(tmp_path.parent) not in show("show", f"main:{name}"), name
    published = yaml.safe_load(show("show", "main:run_config.yaml"))
    assert published["model"]["base"] == tiny_checkpoint.name and (merged / "merge.json").read_text().count(str(
        tiny_checkpoint)) >= 1  # the folder keeps its own files
    assert "base_model:" not in card.split("---")[1]  # a local path is no Hub id for the front matter
    run_card_usage(card, merged)  # its "Use" code runs as written, the prompt with one <s>


def test_chat_with_a_merged_folder_and_its_own_adapter_is_refused(merged, lora_run):
    """The merged weights hold the adapter already: adding it again changed the answers, with no word of it."""
    from myassistant.chat import ChatEngine, EngineError

    with pytest.raises(EngineError, match=r"merged.*adapter is merged into it already \(merge.json\): chat with .* "
                                          "alone"):
        ChatEngine.from_pretrained(merged, adapter=lora_run)


def test_chat_with_a_run_folder_talks_to_its_base_with_its_adapter(lora_run):
    """report and merge took a run's folder; chat said to merge first or name the base (which the run knows)."""
    done = cli("chat", str(lora_run), "--prompt", "hi", "--max-new-tokens", "4", "--device", "cpu")
    assert done.returncode == 0 and f"with the adapter of {lora_run}]" in done.stderr, done.stderr[-2000:]
    assert done.stdout.strip()


def test_chat_with_a_stopped_run_uses_its_newest_checkpoint_and_a_moved_base_is_named(lora_run, tmp_path):
    """A run stopped before its final adapter chatted in the studio (its newest checkpoint) and not in the CLI."""
    stopped = tmp_path / "stopped"
    shutil.copytree(lora_run, stopped, ignore=lambda folder, names: [  # the final adapter and run.json not yet written
        n for n in names if folder == str(lora_run) and (n.startswith("adapter_") or n == "run.json")])
    done = cli("chat", str(stopped), "--prompt", "hi", "--max-new-tokens", "4", "--device", "cpu")
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"with the adapter of {stopped} (its newest checkpoint, checkpoint-4: no final one yet)]" in done.stderr

    config = stopped / "run_config.yaml"
    config.write_text(config.read_text().replace(str(lora_run.parent.parent), str(tmp_path / "gone")))
    moved = yaml.safe_load(config.read_text())["model"]["base"]
    done = cli("chat", str(stopped), "--prompt", "hi", "--device", "cpu")
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert f"{stopped}: its base model {moved} is not there (moved or deleted?)" in done.stderr, done.stderr


def test_merging_twice_is_a_no_op(merged, lora_run, caplog):
    before = {p.name: p.stat().st_mtime_ns for p in merged.iterdir()}
    with caplog.at_level("INFO", logger="myassistant.trainer.merge"):
        assert merge(lora_run, merged, dtype="float32") == merged
    assert "already merged" in caplog.text
    assert {p.name: p.stat().st_mtime_ns for p in merged.iterdir()} == before


def test_a_damaged_or_other_merge_is_written_again(lora_run, merged, tmp_path):
    """A folder with a shard deleted, or without merge.json, was "already merged"; a new --max-shard-size was ignored."""
    out = tmp_path / "sharded"
    merge_cli = lambda size: cli("merge", str(lora_run), "--out", str(out), "--dtype", "float32",  # noqa: E731
                                 "--max-shard-size", size)
    assert merge_cli("300KB").returncode == 0
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) > 1 and set(json.loads((out / "merge.json").read_text())["files"]) >= set(shards)
    (out / shards[-1]).unlink()
    again = merge_cli("300KB")
    assert again.returncode == 0 and "already merged" not in again.stderr
    assert f"{shards[-1]} is missing" in again.stderr and "merging again" in again.stderr
    assert sorted(p.name for p in out.glob("model-*.safetensors")) == shards
    assert "already merged" in merge_cli("300KB").stderr  # whole again

    bigger = merge_cli("2GB")
    assert bigger.returncode == 0 and "max_shard_size 300KB -> 2GB" in bigger.stderr
    assert not list(out.glob("model-*")) and not (out / "model.safetensors.index.json").exists()
    torch.testing.assert_close(logits(AutoModelForCausalLM.from_pretrained(out)),
                               logits(AutoModelForCausalLM.from_pretrained(merged)), atol=1e-5, rtol=0)

    (out / "merge.json").unlink()
    lost = merge_cli("2GB")
    assert lost.returncode == 0 and "without its merge.json: merging again" in lost.stderr
    assert json.loads((out / "merge.json").read_text())["files"]["model.safetensors"] == (
        out / "model.safetensors").stat().st_size
    (out / "merge.json").unlink()
    (out / "notes.txt").write_text("mine")  # not only what a merge writes: kept, and said
    kept = merge_cli("2GB")
    assert kept.returncode == 1 and kept.stderr.strip().splitlines()[-1] == (
        f"assistant merge: error: {out}: holds notes.txt, which a merge does not write, and no merge.json; choose "
        "another --out or remove it")
    assert (out / "notes.txt").read_text() == "mine" and (out / "model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left beside it


def test_cli_merges_a_checkpoint_into_the_internlm2_layout(lora_run, merged, tmp_path):
    out = tmp_path / "internlm2"
    result = run_cli("merge", str(lora_run / "checkpoint-4"), "--out", str(out), "--layout", "internlm2",
                     "--dtype", "float32", "--max-shard-size", "300KiB")  # binary units: huggingface_hub has none
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == str(out)
    assert json.loads((out / "merge.json").read_text())["max_shard_size"] == str(300 * 1024)
    assert "Loading weights" not in result.stderr  # no progress bars in a log (stderr is not a terminal here)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "internlm2"
    assert (out / "model.safetensors.index.json").exists()
    reloaded = model.load_model(out, dtype=torch.float32)  # InternLM2 layout -> Llama again
    torch.testing.assert_close(logits(reloaded), logits(AutoModelForCausalLM.from_pretrained(merged)), atol=1e-5, rtol=0)


def test_a_moved_base_is_named_and_given_with_base(lora_run, merged, tiny_checkpoint, tmp_path):
    """The run's config names where the base was; moved, the merge said only "no such model folder"."""
    run = tmp_path / "run"
    shutil.copytree(lora_run, run)
    config = (run / "run_config.yaml").read_text()
    (run / "run_config.yaml").write_text(config.replace(str(tiny_checkpoint), str(tmp_path / "moved")))
    done = cli("merge", str(run), "--out", str(tmp_path / "m"), "--dtype", "float32")
    assert done.returncode == 1 and done.stderr.strip().splitlines()[-1] == (
        f"assistant merge: error: {tmp_path / 'moved'}: no such model folder: the base {run} was trained on, as its "
        "run_config.yaml (or adapter_config.json) says; moved? give its folder with --base DIR")
    done = cli("merge", str(run), "--out", str(tmp_path / "m"), "--dtype", "float32", "--base", str(tiny_checkpoint))
    assert done.returncode == 0, done.stderr
    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / "m" / name).read_bytes() == (merged / name).read_bytes(), name


def test_merge_of_a_folder_without_adapter_says_what_to_pass(tmp_path):
    with pytest.raises(CheckpointError, match="no adapter_config.json"):
        merge(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_shard_size_that_is_no_size_is_a_usage_error(lora_run, tmp_path):
    """It failed with transformers' traceback ("Unit 'BC' not supported") after loading the models."""
    done = cli("merge", str(lora_run), "--out", str(tmp_path / "m"), "--max-shard-size", "abc")
    assert done.returncode == 2 and "--max-shard-size: 'abc' is not a size; give bytes or e.g. 500MB, 2GB" in done.stderr
    assert not (tmp_path / "m").exists()


def test_merge_refuses_to_overwrite_something_else(lora_run, tmp_path):
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="is not a merge output"):
        merge(lora_run, tmp_path / "precious")
    assert (tmp_path / "precious" / "notes.txt").read_text() == "keep me"
    (tmp_path / "notes.txt").write_text("keep me")  # a file at --out: refused, not renamed away for a folder
    with pytest.raises(CheckpointError, match="notes.txt: is a file; name a folder"):
        merge(lora_run, tmp_path / "notes.txt")
    assert (tmp_path / "notes.txt").read_text() == "keep me" and not list(tmp_path.glob(".notes.txt*"))
