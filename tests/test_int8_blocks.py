"""The CPU default int8 kernel (chat.int8_blocks: a scale per 32 weights and per 32 activations) on tiny models."""
from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from myassistant.chat import ChatEngine, GenerationSettings, int8_blocks
from myassistant.chat.quant import Int8Linear, int8_kernel, quantize_int8
from myassistant.model import build_tiny_checkpoint

pytestmark = pytest.mark.skipif(int8_kernel("blocks") is None, reason="the blocks kernel does not build or run here")
GREEDY = GenerationSettings(temperature=0, max_new_tokens=40)
QUESTIONS = ["Who are you?", "你好，世界！龘靐齉 ok", "Tell me a story about the sea and the wind"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    # wider than the usual tiny model: rows of 256 and 768 inputs, where a block's scale is finer than a row's
    return build_tiny_checkpoint(tmp_path_factory.mktemp("blocks") / "tiny", hidden_size=256, intermediate_size=768)


def rounded_as_llama_cpp(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """The weight rounded per block of 32 as q8_0 (max |w| on 127) or q4_0 (the largest magnitude on -8) do."""
    blocks = weight.reshape(weight.shape[0], -1, 32)
    if bits == 8:
        scale, low, high = blocks.abs().amax(-1, keepdim=True) / 127, -127, 127
    else:
        scale, low, high = blocks.gather(-1, blocks.abs().argmax(-1, keepdim=True)) / -8, -8, 7
    scale = scale.half().float()
    return (torch.round(blocks / scale).clamp(low, high) * scale).reshape(weight.shape)


def unpacked(codes: torch.Tensor, scales: torch.Tensor, bits: int, outputs: int) -> torch.Tensor:
    """The weights `int8_blocks.pack` stored, as floats."""
    groups, blocks = codes.shape[0], scales.shape[1]
    if bits == 4:
        codes = torch.stack([codes & 15, codes >> 4], 2)  # low nibbles: the first 4 columns of 8
    codes = codes.reshape(groups, blocks * 8, 16, 4).permute(0, 2, 1, 3).reshape(groups * 16, blocks * 32)
    scale = scales.permute(0, 2, 1).reshape(groups * 16, blocks).float().repeat_interleave(32, 1)
    return ((codes.float() - (128 if bits == 8 else 8)) * scale)[:outputs]


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("outputs", [37, 80, 100])  # the kernel takes 16 outputs at a time, 2 or 3 such groups together
@pytest.mark.parametrize("rows", [11, 20])  # tiles of 8 rows (a decode step of 5-15 chats), of 4 (prefills)
def test_each_row_is_its_own_product_and_blocks_round_at_least_as_close_as_llama_cpp(outputs, bits, rows):
    torch.manual_seed(0)
    weight, x = torch.randn(outputs, 96) * 0.02, torch.randn(rows, 96)
    x[3, 5] = 40.0  # an outlier coarsens only its own block's rounding
    codes, scales = int8_blocks.pack(weight, bits)
    stored = unpacked(codes, scales, bits, outputs)
    assert (stored - weight).norm() < 0.97 * (rounded_as_llama_cpp(weight, bits) - weight).norm()  # best of a few
    out = int8_blocks.linear(x, codes, scales, outputs, bits)
    assert (out - x @ stored.T).norm() < 0.02 * out.norm()  # the rest: the activations' int8 rounding
    exact = x @ weight.T
    assert (out - exact).norm() < (0.02 if bits == 8 else 0.15) * exact.norm()  # measured: 0.007-0.013, 0.08
    for row in (0, 3, 10):  # a row gives the same numbers alone as among others (a chat alone or batched)
        assert torch.equal(int8_blocks.linear(x[row:row + 1], codes, scales, outputs, bits)[0], out[row])


def test_stacked_projections_give_each_projections_numbers():
    """q/k/v (or gate/up) stacked into one product (chat.fast.fuse_projections) give each projection's own
    numbers, on one thread or two; the model's own layers still work, as views into the stack."""
    torch.manual_seed(0)
    linears = [torch.nn.Linear(2048, n, bias=False) for n in (256, 64, 64)]
    parts = [Int8Linear(linear, "blocks") for linear in linears]
    x = torch.randn(8, 2048)  # 512 blocks of activations: quantised by both threads
    alone = [part(x) for part in parts]
    stacked = Int8Linear.stacked(parts)
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            assert torch.equal(stacked(x), torch.cat(alone, dim=1))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(part(x), want) for part, want in zip(parts, alone))
    assert Int8Linear.stacked([parts[0], Int8Linear(torch.nn.Linear(2048, 40, bias=False), "blocks")]) is None


def logits_error(engine: ChatEngine, exact: ChatEngine, greedy_as_generate: bool) -> float:
    """‖logits - fp32's‖ / ‖fp32's‖ over QUESTIONS (teacher-forced); greedy_as_generate: first check that the
    engine's greedy replies are `generate`'s on the same (quantised) model."""
    prompts = [torch.tensor([exact.prompt([{"role": "user", "content": q}], GREEDY)[0]]) for q in QUESTIONS]
    with torch.inference_mode():
        want = torch.cat([exact.model(p).logits[0] for p in prompts])
        got = torch.cat([engine.model(p).logits[0] for p in prompts])
        for p in prompts if greedy_as_generate else []:
            out = engine.model.generate(p, do_sample=False, max_new_tokens=GREEDY.max_new_tokens,
                                        eos_token_id=engine.stop_ids, pad_token_id=engine.stop_ids[0])
            want_ids = [t for t in out[0, p.shape[1]:].tolist() if t not in engine.stop_ids]
            assert list(engine.tokens(p[0].tolist(), GREEDY)) == want_ids
    return ((got - want).norm() / want.norm()).item()


def test_blocks_are_closer_to_fp32_than_per_token_int8_and_decode_as_generate(tiny_dir):
    exact = ChatEngine.from_pretrained(tiny_dir, device="cpu", quantize="none")
    blocks = ChatEngine.from_pretrained(tiny_dir, device="cpu")  # the CPU default
    per_token = ChatEngine.from_pretrained(tiny_dir, device="cpu", int8_kernel="dynamic")
    assert blocks.model.lm_head.kernel == "blocks" and per_token.model.lm_head.kernel == "dynamic"
    errors = [logits_error(e, exact, greedy_as_generate=True) for e in (blocks, per_token)]
    assert errors[0] < 0.85 * errors[1]  # measured: 0.0168 against 0.0233 (fbgemm two-pass: 0.0171)


def test_int4_weights_are_half_the_bytes_and_a_reply_is_the_same_alone_or_batched(tiny_dir):
    exact = ChatEngine.from_pretrained(tiny_dir, device="cpu", quantize="none")
    eight = ChatEngine.from_pretrained(tiny_dir, device="cpu")
    four = ChatEngine.from_pretrained(tiny_dir, device="cpu", quantize="int4")
    assert (four.model.lm_head.bits, eight.model.lm_head.bits) == (4, 8)
    assert 2 * four.model.lm_head.codes.numel() == eight.model.lm_head.codes.numel()
    errors = [logits_error(e, exact, greedy_as_generate=False) for e in (four, eight)]
    assert errors[1] < errors[0] < 0.25  # measured: 0.193 against 0.017 (a 4-bit random model: coarse)
    alone = {q: four.generate([{"role": "user", "content": q}], GREEDY) for q in QUESTIONS}
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(6)]
    with ThreadPoolExecutor(6) as pool:
        together = list(pool.map(lambda q: four.generate([{"role": "user", "content": q}], GREEDY), questions))
    assert together == [alone[q] for q in questions]


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
