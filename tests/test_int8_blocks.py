"""The CPU default int8 kernel (chat.int8_blocks: a scale per 32 weights and per 32 activations) on tiny models."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from myassistant.chat import ChatEngine, GenerationSettings, int8_blocks
from myassistant.chat.quant import int8_kernel, quantize_int8
from myassistant.model import build_tiny_checkpoint

pytestmark = pytest.mark.skipif(int8_kernel("blocks") is None, reason="the blocks kernel does not build or run here")
GREEDY = GenerationSettings(temperature=0, max_new_tokens=40)
QUESTIONS = ["Who are you?", "你好，世界！龘靐齉 ok", "Tell me a story about the sea and the wind"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    # wider than the usual tiny model: rows of 256 and 768 inputs, where a block's scale is finer than a row's
    return build_tiny_checkpoint(tmp_path_factory.mktemp("blocks") / "tiny", hidden_size=256, intermediate_size=768)


def block_rounded(weight: torch.Tensor) -> torch.Tensor:
    """The weight rounded per block of 32 with the block's maximum as 127 (q8_0's rule)."""
    blocks = weight.reshape(weight.shape[0], -1, 32)
    scale = (blocks.abs().amax(-1, keepdim=True) / 127).half().float()
    return (torch.round(blocks / scale).clamp(-127, 127) * scale).reshape(weight.shape)


@pytest.mark.parametrize("outputs", [37, 80, 100])  # the kernel takes 16 outputs at a time, 3 such groups together
def test_each_row_is_its_own_product_and_blocks_round_at_least_as_close_as_q8_0(outputs):
    torch.manual_seed(0)
    weight, x = torch.randn(outputs, 96) * 0.02, torch.randn(11, 96)
    x[3, 5] = 40.0  # an outlier coarsens only its own block's rounding
    codes, scales = int8_blocks.pack(weight)
    groups = codes.shape[0]
    unpacked = ((codes.permute(0, 2, 1, 3).reshape(groups * 16, 96).float() - 128)
                * scales.permute(0, 2, 1).reshape(groups * 16, 3).float().repeat_interleave(32, 1))[:outputs]
    assert (unpacked - weight).norm() < 0.95 * (block_rounded(weight) - weight).norm()  # the best scale of a few
    out, exact = int8_blocks.linear(x, codes, scales, outputs), x @ weight.T
    assert (out - exact).norm() < 0.02 * exact.norm()  # measured: 0.007-0.013
    assert (out - exact)[3].norm() < 0.02 * exact[3].norm()
    for row in (0, 3, 10):  # a row gives the same numbers alone as among others (a chat alone or batched)
        assert torch.equal(int8_blocks.linear(x[row:row + 1], codes, scales, outputs)[0], out[row])


def test_blocks_are_closer_to_fp32_than_per_token_int8_and_decode_as_generate(tiny_dir):
    exact = ChatEngine.from_pretrained(tiny_dir, device="cpu", quantize="none")
    blocks = ChatEngine.from_pretrained(tiny_dir, device="cpu")  # the CPU default
    per_token = ChatEngine.from_pretrained(tiny_dir, device="cpu", int8_kernel="dynamic")
    assert blocks.model.lm_head.kernel == "blocks" and per_token.model.lm_head.kernel == "dynamic"
    prompts = [torch.tensor([exact.prompt([{"role": "user", "content": q}], GREEDY)[0]]) for q in QUESTIONS]
    with torch.inference_mode():
        want = torch.cat([exact.model(p).logits[0] for p in prompts])
        errors = [(torch.cat([e.model(p).logits[0] for p in prompts]) - want).norm() / want.norm()
                  for e in (blocks, per_token)]
    assert errors[0] < 0.85 * errors[1]  # measured: 0.0168 against 0.0233 (fbgemm two-pass: 0.0171)
    for p in prompts:
        ids = p[0].tolist()
        with torch.inference_mode():
            out = blocks.model.generate(p, do_sample=False, max_new_tokens=GREEDY.max_new_tokens,
                                        eos_token_id=blocks.stop_ids, pad_token_id=blocks.stop_ids[0])
        want_ids = out[0, len(ids):].tolist()
        assert list(blocks.tokens(ids, GREEDY)) == [t for t in want_ids if t not in blocks.stop_ids]


def test_a_layer_without_whole_blocks_takes_the_per_channel_kernel():
    model = torch.nn.Sequential(torch.nn.Linear(64, 48), torch.nn.Linear(48, 8))  # 48 inputs: not blocks of 32
    quantize_int8(model)
    assert [m.kernel for m in model] == ["blocks", int8_kernel("dynamic") or "weight_only"]


def test_without_a_c_compiler_the_default_falls_back_to_torchs_kernel(tmp_path):
    env = os.environ | {"CC": str(tmp_path / "no-such-cc"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    code = ("from myassistant.chat import int8_blocks; from myassistant.chat.quant import int8_kernel\n"
            "try:\n    int8_blocks.load()\nexcept RuntimeError as err:\n    print(err)\nprint(int8_kernel())")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["no C compiler (" + str(tmp_path / "no-such-cc") + ": No such file or directory)",
                                        "dynamic"]
