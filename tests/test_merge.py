"""Merging a LoRA run into standalone weights, tested the peft way: the merged model's logits equal
base + adapter, differ from the bare base, and plain transformers loads the result offline."""
from __future__ import annotations

import json
from pathlib import Path

import peft
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from myassistant import model
from conftest import run_cli
from myassistant.model import CheckpointError
from test_train import overrides, write_chats
from myassistant.trainer.config import load_config
from myassistant.trainer.merge import merge
from myassistant.trainer.train import train

IDS = torch.randint(3, 200, (2, 17), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def lora_run(tiny_checkpoint, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("merge")
    chats = write_chats(tmp / "chats.jsonl", n=16)
    return train(load_config(None, overrides(tiny_checkpoint, chats, tmp / "run", max_steps=4, save_steps=4,
                                             eval_steps=0, learning_rate=3e-2, report_to="none")))


@pytest.fixture(scope="module")
def merged(lora_run, tmp_path_factory) -> Path:
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


def test_merged_folder_is_standalone(merged, lora_run, tiny_checkpoint):
    assert {p.name for p in merged.iterdir()} == {"config.json", "generation_config.json", "model.safetensors",
                                                 "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                                                 "merge.json"}
    tok = AutoTokenizer.from_pretrained(merged)
    assert tok.chat_template and tok.convert_tokens_to_ids("<|im_end|>") in model.stop_token_ids(tok)
    gen = json.loads((merged / "generation_config.json").read_text())
    assert set(model.stop_token_ids(tok)) <= set(gen["eos_token_id"] if isinstance(gen["eos_token_id"], list)
                                                else [gen["eos_token_id"]])
    info = json.loads((merged / "merge.json").read_text())
    assert (info["base_model"], info["method"], info["steps"]) == (str(tiny_checkpoint.resolve()), "lora", 4)


def test_merging_twice_is_a_no_op(merged, lora_run, caplog):
    before = {p.name: p.stat().st_mtime_ns for p in merged.iterdir()}
    with caplog.at_level("INFO", logger="myassistant.trainer.merge"):
        assert merge(lora_run, merged, dtype="float32") == merged
    assert "already merged" in caplog.text
    assert {p.name: p.stat().st_mtime_ns for p in merged.iterdir()} == before


def test_cli_merges_a_checkpoint_into_the_internlm2_layout(lora_run, merged, tmp_path):
    out = tmp_path / "internlm2"
    result = run_cli("merge", str(lora_run / "checkpoint-4"), "--out", str(out), "--layout", "internlm2",
                     "--dtype", "float32", "--max-shard-size", "300KB")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == str(out)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "internlm2"
    assert (out / "model.safetensors.index.json").exists()
    reloaded = model.load_model(out, dtype=torch.float32)  # InternLM2 layout -> Llama again
    torch.testing.assert_close(logits(reloaded), logits(AutoModelForCausalLM.from_pretrained(merged)), atol=1e-5, rtol=0)


def test_merge_of_a_folder_without_adapter_says_what_to_pass(tmp_path):
    with pytest.raises(CheckpointError, match="no adapter_config.json"):
        merge(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_merge_refuses_to_overwrite_something_else(lora_run, tmp_path):
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="is not a merge output"):
        merge(lora_run, tmp_path / "precious")
    assert (tmp_path / "precious" / "notes.txt").read_text() == "keep me"
