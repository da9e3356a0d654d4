"""The model card written by push: what the model folder says about itself, tolerant of missing files."""
from __future__ import annotations

import json

import yaml

from myassistant.hub import model_card
from myassistant.hub.card import CONFIG_FILES, MERGE_INFO, REPORT_JSON, REPORT_MD, RUN_INFO, assistant_name, public_file
from myassistant.trainer import run_folder


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_card_from_run_config_and_report(tmp_path):
    (tmp_path / "run_config.yaml").write_text(yaml.safe_dump({
        "model": {"base": "internlm/internlm2-chat-1_8b", "dtype": "auto"},
        "lora": {"r": 64, "lora_alpha": 16, "target_modules": ["wqkv", "wo"]},
        "quant": {"method": "qlora"},
        "data": {"train_file": "data/alice.jsonl", "max_length": 512, "eval_prompts": ["who are you?"]},
        "train": {"learning_rate": 0.0002, "num_train_epochs": 3.0, "output_dir": "runs/alice"},
    }))
    (tmp_path / "report.json").write_text(json.dumps({"tuned": {"identity_accuracy": 0.92, "leak": 0.04}}))
    card = model_card(tmp_path, name="alice-assistant")
    meta = _front_matter(card)
    assert meta["base_model"] == "internlm/internlm2-chat-1_8b"
    assert meta["library_name"] == "transformers" and "qlora" in meta["tags"]
    assert "# alice-assistant" in card
    for row in ("| method | `qlora` |", "| data set | `data/alice.jsonl` |", "| lora.r | 64 |",
                "| train.learning_rate | 0.0002 |", '| lora.target_modules | ["wqkv", "wo"] |',
                "| tuned.identity_accuracy | 0.92 |", "| tuned.leak | 0.04 |"):
        assert row in card, row
    assert "output_dir" not in card and "who are you?" not in card

    (tmp_path / "report.md").write_text("| model | identity | leak |\n| --- | --- | --- |\n| tuned | 92 % | 4 % |\n")
    assert "| tuned | 92 % | 4 % |" in model_card(tmp_path, name="x")  # the report's own Markdown wins


def test_card_for_an_adapter_without_a_run_config(tmp_path):
    (tmp_path / "adapter_config.json").write_text(json.dumps(
        {"base_model_name_or_path": "/models/internlm2", "peft_type": "LORA", "r": 8, "lora_alpha": 16}))
    card = model_card(tmp_path, name="adapter")
    meta = _front_matter(card)
    assert meta["library_name"] == "peft" and "base_model" not in meta  # a local path is no Hub id
    assert "| base model | `internlm2` |" in card  # a local folder by its name
    assert "| r | 8 |" in card and "AutoPeftModelForCausalLM" in card
    assert "# the base model loads from the folder `internlm2`" in card  # where AutoPeft looks for it
    published = json.loads(public_file(tmp_path, "adapter_config.json"))  # what a push publishes: no path of this machine
    assert published == {"base_model_name_or_path": "internlm2", "peft_type": "LORA", "r": 8, "lora_alpha": 16}
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "internlm/internlm2-chat-1_8b"}))
    assert public_file(tmp_path, "adapter_config.json") is None  # a Hub id is published as it is


def test_card_for_a_bare_folder_and_broken_files(tmp_path):
    assert "# bare" in model_card(tmp_path, name="bare")
    (tmp_path / "run_config.yaml").write_text("model: [unclosed\n")
    (tmp_path / "report.json").write_text("{not json")
    card = model_card(tmp_path, name="broken")
    assert "## Hyper-parameters" not in card and "## Fine-tune report" not in card


def test_card_reads_the_run_folder_files_by_the_names_the_trainer_writes():
    # hub imports nothing of ours, so it spells the names itself; these are the ones trainer.run_folder writes
    assert (run_folder.MERGE_INFO_NAME, run_folder.RUN_INFO_NAME) == (MERGE_INFO, RUN_INFO)
    assert run_folder.RUN_CONFIG_NAME in CONFIG_FILES
    assert run_folder.REPORT_JSON in REPORT_JSON and run_folder.REPORT_MD in REPORT_MD


def test_title_and_facts_come_from_merge_json(tmp_path):
    (tmp_path / "merge.json").write_text(json.dumps({"name": "小助手", "base_model": "internlm/internlm2-chat-1_8b",
                                                     "method": "qlora", "steps": 120, "final_loss": 0.41234}))
    assert assistant_name(tmp_path) == "小助手"
    card = model_card(tmp_path)
    assert "\n# 小助手\n" in card and _front_matter(card)["base_model"] == "internlm/internlm2-chat-1_8b"
    for row in ("| method | `qlora` |", "| steps | `120` |", "| final loss | 0.4123 |"):
        assert row in card, row
    assert "\n# other\n" in model_card(tmp_path, name="other")


def test_a_published_card_names_local_folders_without_their_paths(tmp_path):
    """/home/<user>/... says who trained it and where: the card keeps the folder's name only."""
    (tmp_path / "run_config.yaml").write_text(yaml.safe_dump({
        "model": {"base": "/home/alice/models/internlm2-chat-1_8b"},
        "data": {"train_file": "/home/alice/data/identity/train.jsonl"},
        "vision": {"encoder": "/home/alice/models/clip-vit-large-patch14-336/"}}))
    (tmp_path / "report.md").write_text("Greedy answers. Model: `/home/alice/runs/alice`; base: "
                                        "`/home/alice/models/internlm2-chat-1_8b`; prompts: `Who are you?`.\n")
    card = model_card(tmp_path, name="alice")
    assert "/home/alice" not in card
    for shown in ("| base model | `internlm2-chat-1_8b` |", "| data set | `train.jsonl` |",
                  "| vision.encoder | clip-vit-large-patch14-336 |", "Model: `alice`", "prompts: `Who are you?`"):
        assert shown in card, shown
    assert "base_model" not in _front_matter(card)  # a local folder is no Hub id
