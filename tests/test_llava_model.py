"""The multimodal model layer: Llava built from a vision encoder + our InternLM2, saved, loaded by plain transformers."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, LlavaForConditionalGeneration

from myassistant import model
from conftest import run_cli
from myassistant.model.checkpoint import CheckpointError

ASK = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the picture?"}]}]


def _pictures():
    return {"rgb": Image.new("RGB", (120, 90), "red"), "gray": Image.new("L", (64, 64), 128),
            "rgba": Image.new("RGBA", (50, 70), (0, 0, 255, 100)), "huge": Image.new("RGB", (4000, 3000), "green"),
            "tiny": Image.new("RGB", (3, 2), "yellow")}


def test_merged_folder_loads_with_plain_transformers_and_answers_about_any_picture(tiny_llava):
    m = AutoModelForImageTextToText.from_pretrained(tiny_llava)
    processor = AutoProcessor.from_pretrained(tiny_llava)
    assert isinstance(m, LlavaForConditionalGeneration)
    config = json.loads((tiny_llava / "config.json").read_text())
    assert "auto_map" not in config
    assert not {config[part].get("_name_or_path") for part in ("vision_config", "text_config")} - {None, ""}, config
    prompt = processor.apply_chat_template(ASK, add_generation_prompt=True)
    assert prompt == "<s><|im_start|>user\n<image>\nWhat is in the picture?<|im_end|>\n<|im_start|>assistant\n"
    for name, picture in _pictures().items():
        inputs = processor(images=picture, text=prompt, return_tensors="pt")
        assert (inputs["input_ids"] == m.config.image_token_id).sum() == 16, name  # (56 / 14)^2 patches
        assert inputs["pixel_values"].shape == (1, 3, 56, 56), name
        out = m.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        assert out.shape[1] == inputs["input_ids"].shape[1] + 4
    # the stop tokens of the chat are in the saved generation config
    assert processor.tokenizer.convert_tokens_to_ids("<|im_end|>") in m.generation_config.eos_token_id


def test_llava_text_path_is_the_llm_and_rebuilds_are_identical(tiny_vision_encoder, tiny_checkpoint, tmp_path):
    llava, processor = model.build_llava(tiny_vision_encoder, tiny_checkpoint)
    lm = model.load_model(tiny_checkpoint)
    ids = processor.tokenizer("Hello! How can I help you today?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ours, theirs = llava(input_ids=ids).logits, lm(input_ids=ids).logits
    assert ours.shape[-1] % 64 == 0 and ours.shape[-1] > theirs.shape[-1]  # <image> added, rounded up
    torch.testing.assert_close(ours[..., : theirs.shape[-1]], theirs)
    again, _ = model.build_llava(tiny_vision_encoder, tiny_checkpoint, seed=1)
    model.save_projector(llava.model.multi_modal_projector, tmp_path / "projector.safetensors")
    model.load_projector(again, tmp_path)
    for (k, a), b in zip(llava.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k


def test_vision_encoder_errors_are_one_line(tiny_checkpoint, tiny_vision_encoder, tmp_path):
    with pytest.raises(CheckpointError, match="not a vision encoder"):
        model.build_llava(tiny_checkpoint, tiny_checkpoint)
    llava, _ = model.build_llava(tiny_vision_encoder, tiny_checkpoint)
    with pytest.raises(CheckpointError, match="no projector.safetensors"):
        model.load_projector(llava, tmp_path)


def test_cli_writes_tiny_llava_and_vision_encoder(tmp_path):
    for flags, name in ((["--vision"], "clip"), (["--llava"], "llava"), (["--vision", "--encoder", "siglip"], "siglip")):
        proc = run_cli("tiny", str(tmp_path / name), *flags, timeout=300)
        assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "clip" / "config.json").read_text())["model_type"] == "clip_vision_model"
    assert json.loads((tmp_path / "siglip" / "config.json").read_text())["model_type"] == "siglip_vision_model"
    assert model.is_llava(tmp_path / "llava") and not model.is_llava(tmp_path / "clip")
