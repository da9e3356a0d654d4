"""The run config: presets validate, overrides apply, every bad key or value is reported at once."""
from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch
import yaml
from PIL import Image

from conftest import ROOT, cli, run_cli
from myassistant.trainer.config import (DEEPSPEED_PRESETS, SECTIONS, ConfigError, RunConfig, lora_target_modules, load_config,
                            save_config)

PRESETS = sorted((ROOT / "configs").glob("*.yaml"))


def test_the_tutorial_presets_are_shipped():
    assert {"internlm2_1_8b_full_pretrain", "internlm2_chat_1_8b_qlora_assistant", "internlm2_chat_7b_qlora_oasst1",
            "tiny_lora_cpu"} <= {p.stem for p in PRESETS}


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_preset_validates_and_lists_only_differences(preset):
    cfg = load_config(preset)
    text = preset.read_text(encoding="utf-8")
    assert f"assistant train --config configs/{preset.name}" in text  # the header says how to run it
    assert "tokens/step" in text  # ... and works out the arithmetic
    defaults = RunConfig().to_dict()
    for section, values in yaml.safe_load(text).items():
        for key, value in values.items():
            assert getattr(getattr(cfg, section), key) != defaults[section][key], f"{section}.{key} repeats the default"


def test_defaults_follow_the_tutorials():
    cfg = RunConfig()
    assert (cfg.lora.r, cfg.lora.lora_alpha, cfg.lora.lora_dropout) == (64, 16, 0.0)  # dropout: peft's, not XTuner's 0.1
    assert (cfg.train.learning_rate, cfg.train.lr_scheduler_type, cfg.train.warmup_ratio) == (2e-4, "cosine", 0.03)
    assert (cfg.quant.method, cfg.quant.bnb_4bit_quant_type, cfg.quant.bnb_4bit_use_double_quant) == ("qlora", "nf4", True)
    for cls in SECTIONS.values():
        assert all(f.metadata.get("help") for f in dataclasses.fields(cls)), cls.__name__


def test_overrides_parse_types_and_map_internlm2_names(tmp_path):
    cfg = load_config(ROOT / "configs" / "tiny_lora_cpu.yaml", [
        "train.learning_rate=3e-4", "train.max_steps=7", "data.pack=false", "train.save_total_limit=null",
        "lora.target_modules=[wqkv, wo, w1, w2, w3]", "train.deepspeed=zero2"])
    assert (cfg.train.learning_rate, cfg.train.max_steps, cfg.data.pack) == (3e-4, 7, False)
    assert cfg.train.save_total_limit is None and cfg.train.deepspeed == "zero2"
    assert lora_target_modules(cfg.lora.target_modules) == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                            "down_proj", "up_proj"]
    saved = save_config(cfg, tmp_path / "run_config.yaml")
    assert load_config(saved) == cfg


def test_every_problem_is_reported_at_once_with_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  base: m\ndata:\n  train_file: d.jsonl\ntrain:\n  lerning_rate: 1\n  max_steps: many\n"
                   "lora:\n  lora_dropout: 1.5\nquant:\n  method: int3\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad, ["train.deepspeed=zero9", "optim.lr=1"])
    msg = str(err.value)
    assert f"{bad}:6: train.lerning_rate: unknown key (did you mean learning_rate?)" in msg
    assert f"{bad}:7: train.max_steps: expected an integer, got 'many'" in msg
    assert "lora.lora_dropout: must be in [0, 1), got 1.5" in msg
    assert "quant.method: 'int3' is not one of qlora, lora, full" in msg
    assert "train.deepspeed: 'zero9' is not one of zero2" in msg
    assert "optim: unknown section" in msg
    assert "6 problem(s)" in msg


def test_configs_saved_by_windows_editors_and_list_overrides_that_are_no_lists(tmp_path):
    """A UTF-16 (Notepad's "Unicode") or GBK config was a UnicodeDecodeError traceback; `[a, b?]` and `a,b` for a
    list became one string: one prompt, one module named 'q_proj,v_proj'; and the header blamed the YAML file."""
    notepad = tmp_path / "notepad.yaml"
    notepad.write_text("model:\n  base: m  # 基座\ndata:\n  train_file: d.jsonl\ntrain:\n  output_dir: o\n",
                       encoding="utf-16")
    assert load_config(notepad).model.base == "m"
    ansi = tmp_path / "ansi.yaml"
    ansi.write_bytes("model:\n  base: m  # 基座模型\n".encode("gb18030"))
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(ansi))}:2: not UTF-8 text \(byte 0x\w+\); save the "
                                          "config as UTF-8$"):
        load_config(ansi)
    with pytest.raises(ConfigError) as err:
        load_config(notepad, ["lora.target_modules=q_proj,v_proj", "data.eval_prompts=[你是谁, Who are you?]"])
    assert str(err.value).startswith("config: 2 problem(s): ")  # both from overrides, none from the file
    assert "lora.target_modules: 'q_proj,v_proj' is one name; a list is written [q_proj, v_proj]" in str(err.value)
    assert "override 'data.eval_prompts=[你是谁, Who are you?]': not a YAML list or mapping" in str(err.value)
    assert load_config(notepad, ["data.eval_prompts=Hi, who are you?"]).data.eval_prompts == ["Hi, who are you?"]


def test_an_output_dir_that_is_a_file_is_a_config_error(tmp_path):
    """It failed with a FileExistsError traceback once the data had been prepared."""
    taken = tmp_path / "my.yaml"
    taken.write_text("x: 1\n")
    with pytest.raises(ConfigError, match=f"train.output_dir: {taken} is a file; the run folder must be a folder"):
        load_config(None, ["model.base=m", "data.train_file=d.jsonl", f"train.output_dir={taken}"])


def test_multimodal_sources_and_unknown_encodings_are_config_errors():
    """Both trained (or stopped late) before: a LLaVA run read data.train_file only, whatever data.sources said."""
    with pytest.raises(ConfigError) as err:
        load_config(None, ["model.base=m", "vision.encoder=clip", 'data.sources=[{"path": "a.jsonl"}]',
                           "data.encoding=gbk2"])
    assert "data.sources: a multimodal run (vision.encoder) reads one LLaVA file, data.train_file" in str(err.value)
    assert "data.encoding: 'gbk2' is not an encoding Python knows" in str(err.value)


def test_cli_prints_config_errors_as_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  base: m\n  dtype: float8\n")
    result = cli("train", "--config", str(bad))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("assistant train: error: ")
    assert "model.dtype: 'float8'" in result.stderr and "data.train_file: required" in result.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("model:\n  base: [unclosed\n")
    result = cli("train", "--config", str(broken))
    assert result.returncode == 1 and f"{broken}:3: not valid YAML" in result.stderr


def test_a_key_given_twice_is_a_config_error_at_its_line(tmp_path):
    """YAML keeps the last of two keys silently: the learning rate a user read first in the file was not the one run."""
    twice = tmp_path / "twice.yaml"
    twice.write_text("train:\n  learning_rate: 1e-4\nmodel:\n  base: m\ndata:\n  train_file: d.jsonl\n"
                     "train:\n  max_steps: 3\n  max_steps: 30\n")
    result = cli("train", "--config", str(twice), "--check")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("assistant train: error: ")
    assert f"{twice}:7: train: given again (first at line 1); keep one" in result.stderr
    assert f"{twice}:9: train.max_steps: given again (first at line 8); keep one" in result.stderr
    assert "2 problem(s)" in result.stderr


def test_cli_check_prints_the_resolved_config(tiny_checkpoint, tmp_path):
    chats = tmp_path / "chats.jsonl"
    chats.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n')
    result = run_cli("train", "--config", "configs/tiny_lora_cpu.yaml", "train.max_steps=3", "--deepspeed", "zero2",
                     "--check", "train.seed=7", f"model.base={tiny_checkpoint}",
                     f"data.train_file={chats}")  # overrides before and after the flags
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert resolved["train"]["max_steps"] == 3 and resolved["train"]["deepspeed"] == "zero2"
    assert resolved["train"]["seed"] == 7
    assert resolved["lora"]["r"] == 16 and resolved["lora"]["lora_dropout"] == 0.0
    by_name = cli("train", "--config", "tiny_lora_cpu", f"model.base={tiny_checkpoint}", f"data.train_file={chats}",
                  "--check", cwd=tmp_path)  # a shipped preset by the name `presets list` prints, from anywhere
    assert by_name.returncode == 0 and yaml.safe_load(by_name.stdout)["lora"]["r"] == 16, by_name.stderr


def test_cli_check_names_each_missing_path_as_training_would(tiny_checkpoint, tiny_vision_encoder, tmp_path):
    """--check passed a config whose model and data were not there; training then stopped at the first of them."""
    chats = tmp_path / "chats.jsonl"
    chats.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n')
    missing = [f"model.base={tmp_path / 'no-model'}", f"data.train_file={tmp_path / 'no.jsonl'}", "quant.method=lora"]
    checked = cli("train", *missing, f"train.output_dir={tmp_path / 'run'}", "--check")
    assert checked.returncode == 1 and checked.stdout == ""
    assert checked.stderr.splitlines() == [f"assistant train: error: {tmp_path / 'no-model'}: no such model folder",
                                           f"assistant train: error: {tmp_path / 'no.jsonl'}: no such data file or folder"]
    relative = cli("train", "model.base=models/tiny", "data.train_file=data/chats.jsonl", "quant.method=lora", "--check",
                   cwd=tmp_path)  # a config's relative paths are read from where the command runs: it says where
    assert relative.stderr.splitlines() == [
        f"assistant train: error: models/tiny: no such model folder (read from the working folder {tmp_path})",
        f"assistant train: error: data/chats.jsonl: no such data file or folder (read from the working folder "
        f"{tmp_path})"], relative.stderr
    trained = cli("train", *missing[1:], f"model.base={tiny_checkpoint}", f"train.output_dir={tmp_path / 'run'}")
    assert trained.returncode == 1 and checked.stderr.splitlines()[1] == trained.stderr.strip().splitlines()[-1]
    vision = cli("train", f"model.base={tiny_checkpoint}", f"data.train_file={chats}", "quant.method=lora",
                 f"vision.encoder={tmp_path / 'no-clip'}", f"vision.projector={tmp_path / 'no-stage1'}",
                 f"data.image_folder={tmp_path / 'no-pictures'}", "--check")
    assert vision.returncode == 1 and vision.stderr.splitlines() == [
        f"assistant train: error: {tmp_path / 'no-clip'}: no such model folder",
        f"assistant train: error: vision.projector {tmp_path / 'no-stage1'}: no such file or folder; give the stage-1 "
        "run folder (or its projector.safetensors)",
        f"assistant train: error: {tmp_path / 'no-pictures'}: the image folder does not exist (data.image_folder / "
        "--image-folder)"]
    assert not (tmp_path / "run").exists()
    text_model = cli("train", f"model.base={tiny_checkpoint}", f"data.train_file={chats}", "quant.method=lora",
                     f"vision.encoder={tiny_checkpoint}", "--check")  # a model folder, but no vision encoder
    assert text_model.returncode == 1 and "model_type 'internlm2' is not a vision encoder" in text_model.stderr
    pictures = tmp_path / "pictures"  # a LLaVA file whose second picture was cut short (a copy that stopped)
    pictures.mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (64, 64), (200, 30, 30)).save(pictures / name)
    (pictures / "b.png").write_bytes((pictures / "b.png").read_bytes()[:60])
    llava = pictures / "llava.json"
    llava.write_text(json.dumps([{"image": name, "conversations": [
        {"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "Red."}]}
        for name in ("a.png", "b.png")]))
    cut = cli("train", f"model.base={tiny_checkpoint}", f"data.train_file={llava}", "quant.method=lora",
              f"vision.encoder={tiny_vision_encoder}", "--check")
    assert cut.returncode == 1 and "(record 2)" in cut.stderr and f"image {pictures / 'b.png'} cannot be read" \
        in cut.stderr, cut.stderr
    if not torch.cuda.is_available():  # QLoRA: what this machine lacks, as training would say it
        qlora = cli("train", f"model.base={tiny_checkpoint}", f"data.train_file={chats}", "quant.method=qlora", "--check")
        assert qlora.returncode == 1 and qlora.stderr.splitlines()[-1].startswith(
            "assistant train: error: quant.method: qlora needs a CUDA GPU with bitsandbytes"), qlora.stderr
    gbk = tmp_path / "gbk.jsonl"  # data training would refuse after loading the model: --check reads it as training does
    gbk.write_bytes(chats.read_text().replace("hi", "你好").encode("gb18030"))
    checked = cli("train", f"model.base={tiny_checkpoint}", f"data.train_file={gbk}", "quant.method=lora", "--check")
    assert checked.returncode == 1 and f"{gbk}:1: not utf-8 text" in checked.stderr, checked.stderr


def test_presets_cli_lists_and_copies(tmp_path):
    listed = run_cli("presets", "list")
    assert listed.returncode == 0
    assert [line.split()[0] for line in listed.stdout.splitlines()] == [p.stem for p in PRESETS]
    copied = cli("presets", "copy", "tiny_lora_cpu", str(tmp_path))
    assert copied.returncode == 0 and copied.stdout.strip() == str(tmp_path / "tiny_lora_cpu.yaml")
    assert (tmp_path / "tiny_lora_cpu.yaml").read_text() == (ROOT / "configs" / "tiny_lora_cpu.yaml").read_text()
    again = cli("presets", "copy", "tiny_lora_cpu", str(tmp_path))
    assert again.returncode == 1 and "exists; pass --force" in again.stderr
    unknown = cli("presets", "copy", "tiny_lora", str(tmp_path / "x.yaml"))
    assert unknown.returncode == 1 and "did you mean tiny_lora_cpu?" in unknown.stderr


@pytest.mark.parametrize("name", DEEPSPEED_PRESETS)
def test_deepspeed_configs_leave_batch_numbers_to_the_trainer(name):
    ds = json.loads((ROOT / "configs" / "deepspeed" / f"{name}.json").read_text())
    assert ds["zero_optimization"]["stage"] == int(name[4])
    assert ("offload_optimizer" in ds["zero_optimization"]) == name.endswith("_offload")
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
        assert ds[key] == "auto", key


def test_gpu_training_switches_are_run_config_fields_not_environment(tiny_checkpoint, tmp_path, monkeypatch):
    from myassistant.trainer.gpu import fast, graphs

    base = [f"model.base={tiny_checkpoint}", "data.train_file=x.jsonl"]
    cfg = load_config(None, [*base, "train.fast_path=false", "train.qlora_fold=false", "train.lm_loss=cce",
                             "train.cuda_graphs=false"])
    assert (cfg.train.fast_path, cfg.train.qlora_fold, cfg.train.lm_loss, cfg.train.cuda_graphs) == (False, False, "cce", False)
    assert not fast.enabled(cfg)  # off by the config, on any machine
    assert graphs.unavailable(cfg) == "train.cuda_graphs is false"
    saved = yaml.safe_load(yaml.safe_dump(cfg.to_dict()))["train"]  # what run_config.yaml records
    assert {k: saved[k] for k in ("fast_path", "qlora_fold", "lm_loss", "cuda_graphs")} == {
        "fast_path": False, "qlora_fold": False, "lm_loss": "cce", "cuda_graphs": False}
    with pytest.raises(ConfigError, match="train.lm_loss: 'fast' is not one of auto, cce"):
        load_config(None, [*base, "train.lm_loss=fast"])
    for name in ("ASSISTANT_FAST", "ASSISTANT_CUDA_GRAPHS", "ASSISTANT_FOLD", "ASSISTANT_LOSS"):
        monkeypatch.setenv(name, "0")  # the old switches are gone: the run config alone decides
    defaults = load_config(None, base)
    assert graphs.unavailable(defaults) in (None, "no CUDA GPU")
    assert fast.enabled(defaults) == torch.cuda.is_available()


def test_rank_pattern_gives_some_modules_another_rank_at_the_same_scale(tiny_checkpoint):
    """lora.rank_pattern: NAME=RANK (InternLM2 names mapped), lora_alpha following so alpha / r stays."""
    from myassistant.trainer.lora import build_model

    cfg = load_config(ROOT / "configs" / "tiny_lora_cpu.yaml", [f"model.base={tiny_checkpoint}", "quant.method=lora",
                                                                "lora.r=16", "lora.lora_alpha=32", "lora.rank_pattern=[wqkv=4]"])
    ranks = {name.rsplit(".", 1)[-1]: (mod.r["default"], mod.scaling["default"])
             for name, mod in build_model(cfg).named_modules() if hasattr(mod, "lora_A") and name.endswith("proj")}
    assert ranks["q_proj"] == ranks["k_proj"] == ranks["v_proj"] == (4, 2.0)
    assert ranks["o_proj"] == ranks["up_proj"] == (16, 2.0)
    with pytest.raises(ConfigError, match=r"lora.rank_pattern: 'q_proj' is not NAME=RANK, e.g. q_proj=4"):
        load_config(ROOT / "configs" / "tiny_lora_cpu.yaml", ["lora.rank_pattern=[q_proj]"])
