"""The GPU fast path (trainer.gpu.fast) on a Llava computes the plain transformers + peft loss and gradients.

Plain: packed rows through Llava's own forward (masked_scatter of the picture features, sdpa with the
block-diagonal mask, its loss). Fast: one flattened row, pictures placed by a running count (no host
sync, so a CUDA graph can hold it), varlen attention, the chunked loss. On the CPU in fp32.
"""
from __future__ import annotations

import copy
import functools

import pytest
import torch

from myassistant.model import build_tiny_vision_encoder
from myassistant.trainer import data as data_lib
from myassistant.trainer.config import load_config
from myassistant.trainer.gpu import fast
from myassistant.trainer.multimodal import load_llava_records, tokenize_llava, write_shapes_dataset
from myassistant.trainer.multimodal.data import collate
from myassistant.trainer.multimodal.model import build_training_model

torch.set_num_threads(1)


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    # the encoder's last layer gets no gradient: LLaVA reads the features of the one before it
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("stage,lora_encoder,encoder", [("finetune", "true", "clip"), ("finetune", "false", "clip"),
                                                        ("pretrain", "false", "clip"), ("finetune", "true", "siglip")])
def test_llava_fast_path_matches_plain_forward(tiny_checkpoint, tiny_vision_encoder, tmp_path, stage, lora_encoder,
                                               encoder):
    """With a frozen encoder too: the projector gets its gradient (stage 1 trains nothing else). SigLIP:
    every output of the tower is a picture feature (no CLS token to drop)."""
    if encoder == "siglip":
        tiny_vision_encoder = build_tiny_vision_encoder(tmp_path / "siglip", kind="siglip")
    shapes = write_shapes_dataset(tmp_path / "shapes", per_class=1, eval_per_class=0, size=56)
    cfg = load_config(None, [f"model.base={tiny_checkpoint}", f"vision.encoder={tiny_vision_encoder}",
                             f"vision.stage={stage}", f"vision.lora_encoder={lora_encoder}", "quant.method=lora",
                             "lora.r=4", "lora.lora_dropout=0",
                             f"data.train_file={shapes / 'finetune.jsonl'}", f"train.output_dir={tmp_path / 'run'}"])
    plain, processor = build_training_model(cfg)
    for name, p in plain.named_parameters():
        if p.requires_grad and "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)  # B starts at zero: give every gradient something to carry
    records = load_llava_records(shapes / "finetune.jsonl")[:7]
    rows = data_lib.pack(tokenize_llava(records, processor.tokenizer, 256, 16), 256)
    features = [rows[i] for i in range(len(rows))]
    assert sum(len(f["images"]) for f in features) >= 5 and len(features) >= 2
    quick = copy.deepcopy(plain)
    fast.apply(quick)
    pictures = functools.partial(collate, image_processor=processor.image_processor)
    want = _loss_and_grads(plain, pictures(features, text_collate=data_lib.collate))
    got = _loss_and_grads(quick, pictures(features, text_collate=fast.collate))
    assert abs(want[0] - got[0]) < 1e-4 * abs(want[0])
    assert want[1].keys() == got[1].keys() and any("multi_modal_projector" in k for k in want[1])
    assert any("vision_tower" in k for k in want[1]) == (lora_encoder == "true")
    for name, grad in want[1].items():
        torch.testing.assert_close(got[1][name], grad, rtol=1e-3, atol=1e-6, msg=name)
