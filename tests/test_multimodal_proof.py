"""The multimodal proof (slow): a tiny CLIP + a tiny InternLM2 learn to name the colour and the shape of pictures
they never saw. Stage 1 and stage 2 run through the CLI with the shipped tiny presets, the merged folder is
loaded with plain transformers (AutoModelForImageTextToText + AutoProcessor), and its greedy answers on the
held-out pictures of `assistant data shapes` must name both right for >= 90 % (the parts before training: ~0).

    python -m pytest -q -m slow tests/test_multimodal_proof.py -s      # prints the figures
"""
from __future__ import annotations

import json
import re

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from conftest import ROOT, cli, run_cli

pytestmark = pytest.mark.slow


def _named(answer: str, words: list[str]) -> set[str]:
    return {w for w in re.findall(r"\w+", answer.lower()) if w in words}


def held_out_accuracy(merged, shapes) -> tuple[float, list[tuple[str, str]]]:
    """Both colour and shape right (and only those), greedy, with nothing of this project in the loop."""
    model = AutoModelForImageTextToText.from_pretrained(merged, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(merged)
    meta = json.loads((shapes / "meta.json").read_text())
    right, answers = 0, []
    for line in (shapes / "eval.jsonl").read_text().splitlines():
        record = json.loads(line)
        question = record["conversations"][0]["value"].replace("<image>\n", "")
        ask = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        inputs = processor(images=Image.open(shapes / record["image"]),
                           text=processor.apply_chat_template(ask, add_generation_prompt=True), return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=16, do_sample=False)  # the tiny BPE spells "triangle" in pieces
        answer = processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        reference = record["conversations"][1]["value"]
        right += all(_named(answer, meta[k]) == _named(reference, meta[k]) for k in ("colours", "shapes"))
        answers.append((reference, answer))
    return right / len(answers), answers


def test_two_stages_teach_a_tiny_llava_colours_and_shapes(tmp_path):
    models, data, runs = tmp_path / "models", tmp_path / "data", tmp_path / "runs"
    for args in (("tiny", str(models / "tiny")), ("tiny", str(models / "clip-tiny"), "--vision"),
                 ("data", "shapes", "--out", str(data / "shapes"))):
        proc = cli(*args)
        assert proc.returncode == 0, proc.stderr[-2000:]
    paths = [f"model.base={models / 'tiny'}", f"vision.encoder={models / 'clip-tiny'}"]
    for stage, extra in (("pretrain", []), ("finetune", [f"vision.projector={runs / 'tiny_llava_pretrain_cpu'}"])):
        proc = run_cli("train", "--config", str(ROOT / "configs" / f"tiny_llava_{stage}_cpu.yaml"), *paths, *extra,
                       f"data.train_file={data / 'shapes' / (stage + '.jsonl')}",
                       f"train.output_dir={runs / f'tiny_llava_{stage}_cpu'}", timeout=3600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    merged = tmp_path / "merged"
    proc = run_cli("merge", str(runs / "tiny_llava_finetune_cpu"), "--out", str(merged), "--dtype", "float32")
    assert proc.returncode == 0, proc.stderr[-2000:]
    accuracy, answers = held_out_accuracy(merged, data / "shapes")
    proc = run_cli("report", str(merged), "--data", str(data / "shapes"), "--max-new-tokens", "16", timeout=1200)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((merged / "report.json").read_text())
    print(f"\nheld-out pictures, colour and shape right (plain transformers): {accuracy:.1%} of {len(answers)}; "
          f"report: {report['fine_tuned']}, before training: {report['base']}; examples: {answers[:4]}")
    assert report["base"]["accuracy"] <= 0.2  # before training: about chance, or worse (no answer at all)
    assert accuracy >= 0.9, answers
