"""The exported GGUF run by llama.cpp itself (llama-cpp-python): same token ids, same greedy replies as our engine.

Marked `llama_cpp` and skipped where llama-cpp-python is not installed (`pip install 'myassistant[llama-cpp]'`;
scripts/setup.sh installs it).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from myassistant.chat import ChatEngine, GenerationSettings
from myassistant.export import export_gguf
from myassistant.model import build_tiny_checkpoint, load_model, load_tokenizer

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
pytestmark = pytest.mark.llama_cpp

GREEDY = GenerationSettings(temperature=0, max_new_tokens=24)
QUESTIONS = ["Who are you?", "你好！请介绍一下你自己。", "Tell me a joke about cats 🐱", "明天的天气怎么样？ Tomorrow?"]
TEXTS = [
    "Hello! How can I help you today?", "你好，世界！龘靐齉 ok", "emoji 🐉🎉👍🏽 and ✓", "  two leading spaces",
    "tabs\tand\nnew\n\nlines  ", " x  y   z    ", "<|im_start|>user\n你好<|im_end|>\n<|im_start|>assistant\n",
    "mixed 中文 and English, 123 4567 numbers.", "", "\n", "<s>plain</s> text <|im_end|>",
]


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("gguf")
    return {q: export_gguf(tiny_checkpoint, out / f"tiny-{q}.gguf", quant=q).gguf for q in ("f16", "q8_0", "q4_k_m")}


def load(path: Path):
    return llama_cpp.Llama(model_path=str(path), n_ctx=512, n_threads=1, logits_all=True, verbose=False)


def llama_greedy(llm, prompt: list[int], max_new: int, stops: set[int]) -> list[int]:
    llm.reset()
    llm.eval(prompt)
    out: list[int] = []
    while len(out) < max_new:
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        if token in stops:
            break
        out.append(token)
        llm.eval([token])
    return out


def teacher_forced_top1(llm, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.argmax(llm.scores[:len(ids)], axis=-1)


@pytest.mark.parametrize("space_prefix", [False, True])
def test_llama_cpp_tokenises_exactly_as_our_tokenizer(tiny_checkpoint, exported, tmp_path, space_prefix):
    if space_prefix:  # sentencepiece's add_dummy_prefix ("▁" before each text segment), as Llama 2 tokenizers
        tiny_checkpoint = build_tiny_checkpoint(tmp_path / "prefix", add_dummy_prefix=True)
        gguf_file = export_gguf(tiny_checkpoint, tmp_path / "prefix.gguf", quant="f16").gguf
    else:
        gguf_file = exported["f16"]
    tokenizer = load_tokenizer(tiny_checkpoint)
    llm = load(gguf_file)
    for text in TEXTS:
        ours = tokenizer.encode(text, add_special_tokens=False)
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ours, text
        assert llm.tokenize(text.encode(), add_bos=True, special=True) == tokenizer.encode(text), text
    assert llm.token_eos() == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert llm.token_bos() == tokenizer.bos_token_id
    assert llm.metadata["tokenizer.chat_template"] == tokenizer.chat_template


def test_f16_gives_our_greedy_replies_and_q8_0_our_top1(tiny_checkpoint, exported):
    tokenizer = load_tokenizer(tiny_checkpoint)
    # The engine on the weights rounded to f16, as the file holds them: what is compared is the runtime.
    engine = ChatEngine(load_model(tiny_checkpoint, dtype=torch.float16).float(), tokenizer)
    f16, q8 = load(exported["f16"]), load(exported["q8_0"])
    stops = set(engine.stop_ids)
    prompts = [engine.prompt([{"role": "user", "content": q}], GREEDY)[0] for q in QUESTIONS]
    for prompt in prompts:
        ours = list(engine.tokens(prompt, GREEDY))
        assert llama_greedy(f16, prompt, GREEDY.max_new_tokens, stops) == ours
    # Teacher-forced top-1 against the fp32 model. A random tiny model has near-ties everywhere (median
    # top-1/top-2 margin ~0.03 for a logit std of ~0.16), and any 8-bit path flips some of them: measured
    # over all positions, llama.cpp q8_0 agrees on 88 %, our own int8 engine on 90 %. Where the top-1 is
    # clear (margin > 0.01, ~70 % of positions) both agree on 100 %.
    reference = load_model(tiny_checkpoint, dtype=torch.float32)
    with torch.inference_mode():
        logits = torch.cat([reference(torch.tensor([p])).logits[0] for p in prompts])
    want, top2 = logits.argmax(-1).numpy(), logits.topk(2, dim=-1).values
    clear = (top2[:, 0] - top2[:, 1]).numpy() > 0.01
    got = np.concatenate([teacher_forced_top1(q8, p) for p in prompts])
    assert clear.sum() >= 0.5 * len(clear) and (got == want)[clear].mean() >= 0.95, (got == want)[clear].mean()
    assert (got == want).mean() >= 0.8, (got == want).mean()
    k_quant = np.concatenate([teacher_forced_top1(load(exported["q4_k_m"]), p) for p in prompts])
    assert (k_quant == want)[clear].mean() >= 0.8  # 4/5/6-bit mix (rows of 64 take llama.cpp's fallbacks)
