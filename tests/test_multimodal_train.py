"""The two LLaVA stages on tiny models through the real CLI: stage 1 trains only the projector, stage 2 starts
from it, merge writes a folder plain transformers loads and answers about pictures with, report and push run."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback

from conftest import cli, run_card_usage, run_cli
from myassistant.trainer.config import load_config
from myassistant.trainer.multimodal import write_shapes_dataset
from myassistant.trainer.train import train

QUICK = ["quant.method=lora", "data.max_length=256", "train.per_device_train_batch_size=4",
         "train.gradient_accumulation_steps=1", "train.gradient_checkpointing=false", "train.report_to=none",
         "train.logging_steps=1", "train.save_steps=100", "train.learning_rate=1e-2", "train.warmup_ratio=0"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return write_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", per_class=1, eval_per_class=1, size=56)


def _stage(tiny_checkpoint, tiny_vision_encoder, shapes, out, stage: str, *extra: str) -> list[str]:
    data = "pretrain" if stage == "pretrain" else "finetune"
    return [f"model.base={tiny_checkpoint}", f"vision.encoder={tiny_vision_encoder}", f"vision.stage={stage}",
            f"data.train_file={shapes / (data + '.jsonl')}", f"train.output_dir={out}", *QUICK, *extra]


class _Snapshot(TrainerCallback):
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.before = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.model = model


def test_stage_one_changes_only_the_projector(tiny_checkpoint, tiny_vision_encoder, shapes, tmp_path):
    snap = _Snapshot()
    cfg = load_config(None, _stage(tiny_checkpoint, tiny_vision_encoder, shapes, tmp_path / "s1", "pretrain",
                                   "train.max_steps=1"))
    run = train(cfg, callbacks=(snap,))
    after = snap.model.state_dict()
    changed = sorted(k for k, v in snap.before.items() if not torch.equal(v, after[k]))
    assert changed and all(k.startswith("model.multi_modal_projector.") for k in changed), changed
    assert len(changed) == 4  # both linear layers, weight and bias: the projector trained
    info = json.loads((run / "run.json").read_text())
    assert (info["stage"], info["adapter"], info["vision_encoder"]) == ("pretrain", False, str(tiny_vision_encoder))
    readme = (run / "README.md").read_text()  # what the folder holds, and the commands that run as they read
    assert "LLaVA stage 1 (the projector alone)" in readme and "| projector.safetensors |" in readme
    assert "config.json" not in readme and f"assistant merge {run} --out" in readme
    saved = load_file(run / "projector.safetensors")
    torch.testing.assert_close(saved["linear_1.weight"], after["model.multi_modal_projector.linear_1.weight"])


def test_two_stages_merge_report_push(tiny_checkpoint, tiny_vision_encoder, shapes, tmp_path):
    s1, s2, merged = tmp_path / "s1", tmp_path / "s2", tmp_path / "merged"
    proc = run_cli("train", *_stage(tiny_checkpoint, tiny_vision_encoder, shapes, s1, "pretrain", "train.max_steps=2"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    said = cli("chat", str(s1), "--prompt", "hi")  # the projector alone: it said "no config.json here"
    assert said.returncode == 1 and f"{s1}: a LLaVA stage-1 run (the projector alone), not a model; stage 2 trains " \
        f"from it (vision.projector={s1})" in said.stderr, said.stderr
    other = tmp_path / "another-clip"  # an encoder other than stage 1's (here its copy elsewhere): refused, not trained
    for typo in (str(tmp_path / "clip-tny"), "models/clip-tny"):  # absolute, and relative with one '/' (no hub id)
        proc = cli("train", *_stage(tiny_checkpoint, typo, shapes, s2, "finetune", f"vision.projector={s1}"))
        assert proc.returncode == 1 and "clip-tny: no such model folder (stage 1" in proc.stderr, \
            proc.stderr[-2000:]
    shutil.copytree(tiny_vision_encoder, other)
    proc = cli("train", *_stage(tiny_checkpoint, other, shapes, s2, "finetune", f"vision.projector={s1}"))
    assert proc.returncode == 1 and f"trained with vision.encoder={tiny_vision_encoder}, this run has {other}" in \
        proc.stderr and not s2.exists(), proc.stderr[-2000:]
    proc = run_cli("train", *_stage(tiny_checkpoint, tiny_vision_encoder, shapes, s2, "finetune", "train.max_steps=2",
                                    f"vision.projector={s1}", "vision.lora_encoder=true", "lora.r=4"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads((s2 / "run.json").read_text())
    assert info["adapter"] and info["projector_from"] == str(s1)
    from myassistant.trainer.run_folder import chat_parts  # the studio loaded its base LLM with its adapter: "does
    assert chat_parts(s2) == (s2, None)  # not fit"; as itself, the loader says to merge it first
    said = cli("chat", str(s2), "--prompt", "hi")
    assert said.returncode == 1 and "a training run's adapter, not a model; merge it first" in said.stderr, said.stderr
    adapter = json.loads((s2 / "adapter_config.json").read_text())
    assert "vision_tower" in adapter["target_modules"] and adapter["modules_to_save"] == ["multi_modal_projector"]

    proc = run_cli("merge", str(s2), "--out", str(merged), "--dtype", "float32")
    assert proc.returncode == 0, proc.stderr[-2000:]
    model = AutoModelForImageTextToText.from_pretrained(merged)
    processor = AutoProcessor.from_pretrained(merged)
    ask = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the picture?"}]}]
    inputs = processor(images=Image.open(next((shapes / "images").iterdir())),
                       text=processor.apply_chat_template(ask, add_generation_prompt=True), return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3
    assert json.loads((merged / "merge.json").read_text())["vision_encoder"] == str(tiny_vision_encoder)

    proc = run_cli("report", str(merged), "--data", str(shapes), "--max-new-tokens", "4")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rep = json.loads((merged / "report.json").read_text())
    assert rep["kind"] == "pictures" and rep["fine_tuned"]["n"] == 12 and rep["base"]["n"] == 12
    assert "| right colour |" in proc.stdout and f"Questions: `{shapes / 'eval.jsonl'}`" in proc.stdout
    elsewhere = tmp_path / "evals"  # the questions kept apart from their pictures: --image-folder says where
    elsewhere.mkdir()
    (elsewhere / "eval.jsonl").write_bytes((shapes / "eval.jsonl").read_bytes())
    proc = cli("report", str(merged), "--data", str(elsewhere), "--max-new-tokens", "4", "--out", str(elsewhere))
    assert proc.returncode == 1 and "not found; check data.image_folder (`data check` / `report`: --image-folder)" in proc.stderr
    proc = cli("report", str(merged), "--data", str(elsewhere), "--image-folder", str(shapes), "--max-new-tokens", "4",
               "--out", str(elsewhere))
    assert proc.returncode == 0 and json.loads((elsewhere / "report.json").read_text())["fine_tuned"]["n"] == 12
    (elsewhere / "eval.jsonl").rename(elsewhere / "val.jsonl")  # a folder of someone else's LLaVA files
    proc = cli("report", str(merged), "--data", str(elsewhere), "--image-folder", str(shapes))
    assert proc.returncode == 1 and f"no eval.jsonl in it; give the held-out file itself, e.g. --data " \
        f"{elsewhere / 'val.jsonl'}" in proc.stderr, proc.stderr
    for kind in ("identity", "pretrain"):  # other reports of a picture model: one line, not a KeyError / ValueError
        proc = cli("report", str(merged), "--kind", kind, "--data", str(shapes))
        assert proc.returncode == 2 and f"--kind {kind}: {merged} is a multimodal (LLaVA) model; its report is " \
            "--kind pictures" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    proc = cli("report", str(tiny_checkpoint), "--kind", "pictures", "--data", str(shapes))
    assert proc.returncode == 2 and "reads no pictures" in proc.stderr, proc.stderr
    proc = cli("report", str(tiny_checkpoint), "--kind", "identity", "--data", str(shapes))  # shapes' meta.json
    assert proc.returncode == 1 and "names no assistant; the identity report needs the folder written by " \
        "`assistant data identity`" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr

    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(remote)], check=True)
    proc = run_cli("push", str(merged), "--to", str(remote), env={"HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    files = subprocess.run(["git", "ls-tree", "-r", "--name-only", "main"], cwd=remote, capture_output=True,
                           text=True, check=True).stdout.split()
    assert {"model.safetensors", "processor_config.json", "README.md"} <= set(files)
    card = subprocess.run(["git", "show", "main:README.md"], cwd=remote, capture_output=True, text=True,
                          check=True).stdout
    run_card_usage(card, merged, picture=next((shapes / "images").iterdir()))  # one <s>, a picture, an answer
    gen = json.loads((merged / "generation_config.json").read_text())
    assert gen["do_sample"] and gen["temperature"] <= 0.5  # the app and chat start from the merge's serving defaults


def test_multimodal_config_errors_before_any_weights(tiny_checkpoint, tmp_path):
    proc = cli("train", f"model.base={tiny_checkpoint}", "data.train_file=x.jsonl", "vision.stage=later",
               "vision.projector=runs/s1", "quant.method=full")
    assert proc.returncode == 1
    assert "vision.stage: 'later' is not one of pretrain, finetune" in proc.stderr
    assert "vision.projector / vision.lora_encoder: need vision.encoder" in proc.stderr


def test_a_siglip_encoder_trains_merges_and_chats(tiny_checkpoint, shapes, tmp_path):
    """SigLIP (no CLS token: every output is a patch, all read) through both stages (LoRA on the encoder
    too), merged, loaded with plain transformers and asked about a picture by the chat engine."""
    from myassistant.chat import ChatEngine, GenerationSettings
    from myassistant.model import build_tiny_vision_encoder

    siglip = build_tiny_vision_encoder(tmp_path / "siglip-tiny", kind="siglip")
    s1, s2, merged = tmp_path / "s1", tmp_path / "s2", tmp_path / "merged"
    train(load_config(None, _stage(tiny_checkpoint, siglip, shapes, s1, "pretrain", "train.max_steps=1")))
    train(load_config(None, _stage(tiny_checkpoint, siglip, shapes, s2, "finetune", "train.max_steps=1",
                                   f"vision.projector={s1}", "vision.lora_encoder=true", "lora.r=4")))
    proc = run_cli("merge", str(s2), "--out", str(merged), "--dtype", "float32")
    assert proc.returncode == 0, proc.stderr[-2000:]

    model = AutoModelForImageTextToText.from_pretrained(merged)
    processor = AutoProcessor.from_pretrained(merged)
    assert model.config.vision_config.model_type == "siglip_vision_model"
    assert model.config.vision_feature_select_strategy == "full" and model.config.image_seq_length == 16
    picture = Image.open(next((shapes / "images").iterdir()))
    ask = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the picture?"}]}]
    inputs = processor(images=picture, text=processor.apply_chat_template(ask, add_generation_prompt=True),
                       add_special_tokens=False, return_tensors="pt")  # the template has the BOS
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 16  # 4 x 4 patches, no CLS
    want = model.generate(**inputs, max_new_tokens=6, min_new_tokens=6, do_sample=False)[0, inputs["input_ids"].shape[1]:]

    engine = ChatEngine.from_pretrained(merged, device="cpu", quantize="none")
    engine.stop_ids = []
    ids, _, _ = engine.prompt([{"role": "user", "content": [{"type": "image", "image": picture},
                                                            {"type": "text", "text": "What is in the picture?"}]}],
                              GenerationSettings(temperature=0, max_new_tokens=6))
    ids, embed = engine.vision.prepare(ids, [picture])
    assert ids == inputs["input_ids"][0].tolist()
    assert list(engine.tokens(ids, GenerationSettings(temperature=0, max_new_tokens=6), embed=embed)) == want.tolist()


def test_a_projector_that_is_not_there_is_named_as_such(tmp_path):
    from myassistant.trainer.config import ConfigError, load_config
    from myassistant.trainer.multimodal.model import check_projector_source

    cfg = load_config(None, ["model.base=m", "data.train_file=x.jsonl", "vision.encoder=clip",
                             f"vision.projector={tmp_path / 'runs' / 's1'}"])
    with pytest.raises(ConfigError, match=r"s1: no such file or folder; give the stage-1 run folder"):
        check_projector_source(cfg)
