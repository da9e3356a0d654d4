"""The fast decode paths (chat.fast static cache + bucketed slot, chat.quant int8) on tiny checkpoints."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

from chat import ChatEngine, EngineError, GenerationSettings
from chat.fast import MIN_BUCKET, DecodeSlot
from chat.quant import Int8Linear
from model import build_tiny_checkpoint, stop_token_ids

GREEDY = GenerationSettings(temperature=0, max_new_tokens=40)
QUESTIONS = ["Who are you?", "你好，世界！龘靐齉 ok", "Tell me a story about the sea and the wind"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    # 4 query heads over 2 kv heads: grouped-query attention, as in InternLM2-1.8B
    return build_tiny_checkpoint(tmp_path_factory.mktemp("fast") / "tiny")


@pytest.fixture(scope="module")
def exact(tiny_dir) -> ChatEngine:
    return ChatEngine.from_pretrained(tiny_dir, device="cpu", quantize="none")


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def generate_ids(engine: ChatEngine, prompt_ids: list[int], max_new_tokens: int, stops: bool = True) -> list[int]:
    """model.generate's greedy reply; stops=False decodes all `max_new_tokens` (engine.stop_ids = [])."""
    stop_ids = engine.stop_ids or stop_token_ids(engine.tokenizer)
    limits = {"eos_token_id": stop_ids} if stops else {"min_new_tokens": max_new_tokens}
    with torch.inference_mode():
        out = engine.model.generate(torch.tensor([prompt_ids], device=engine.model.device), do_sample=False,
                                    max_new_tokens=max_new_tokens, pad_token_id=stop_ids[0], **limits)
    new = out[0, len(prompt_ids):].tolist()
    return new[: next((i for i, t in enumerate(new) if stops and t in stop_ids), len(new))]


def prompt_of_length(engine: ChatEngine, tokens: int) -> list[int]:
    """A chat prompt of exactly about `tokens` ids (words dropped until it fits)."""
    words = [f"word{i}" for i in range(tokens)]
    while len(ids := engine.prompt(ask(" ".join(words)), GREEDY)[0]) > tokens:
        words.pop()
    return ids


@pytest.mark.parametrize("question", QUESTIONS)
def test_static_cache_tokens_equal_greedy_generate(exact, question):
    assert exact.decoder is not None and exact.slot is None  # CPU: static cache, no graphs
    prompt_ids, _, _ = exact.prompt(ask(question), GREEDY)
    assert list(exact.tokens(prompt_ids, GREEDY)) == generate_ids(exact, prompt_ids, GREEDY.max_new_tokens)


def test_bucketed_masked_slot_equals_generate_across_a_bucket_boundary(exact):
    slot_engine = ChatEngine(exact.model, exact.tokenizer)
    slot_engine.slot = DecodeSlot(slot_engine.decoder, cuda_graphs=False)  # the GPU step, run eagerly
    slot_engine.stop_ids = []  # decode the full length: the reply must cross the boundary
    prompt_ids = prompt_of_length(exact, MIN_BUCKET - 10)
    settings = GenerationSettings(temperature=0, max_new_tokens=30)
    ids = list(slot_engine.tokens(prompt_ids, settings))
    assert len(prompt_ids) + len(ids) > MIN_BUCKET  # the decode moved to the next bucket
    assert ids == generate_ids(exact, prompt_ids, settings.max_new_tokens, stops=False)
    assert not slot_engine.slot.busy.locked()  # given back when the reply ended


def test_a_second_concurrent_chat_decodes_with_its_own_cache(exact):
    engine = ChatEngine(exact.model, exact.tokenizer)
    engine.slot = DecodeSlot(engine.decoder, cuda_graphs=False)
    first = engine.tokens(exact.prompt(ask(QUESTIONS[0]), GREEDY)[0], GREEDY)
    next(first)  # holds the slot now
    assert engine.slot.busy.locked()
    results = {}
    thread = threading.Thread(target=lambda: results.update(second=engine.generate(ask(QUESTIONS[1]), GREEDY)))
    thread.start()
    thread.join()
    assert results["second"] == exact.generate(ask(QUESTIONS[1]), GREEDY)
    first.close()
    assert not engine.slot.busy.locked()


def test_seeded_sampling_is_the_same_on_the_fast_and_the_plain_path(exact):
    plain = ChatEngine(exact.model, exact.tokenizer, fast=False)
    assert plain.decoder is None
    settings = GenerationSettings(temperature=0.9, top_p=0.9, top_k=40, repetition_penalty=1.2, max_new_tokens=30,
                                  seed=3)
    prompt_ids, _, _ = exact.prompt(ask(QUESTIONS[0]), settings)
    assert list(exact.tokens(prompt_ids, settings)) == list(plain.tokens(prompt_ids, settings))


def test_cpu_default_is_int8_and_streams_what_generate_gives_on_the_same_weights(tiny_dir, exact):
    engine = ChatEngine.from_pretrained(tiny_dir, device="cpu")
    linears = [m for m in engine.model.modules() if isinstance(m, Int8Linear)]
    assert len(linears) == 2 * 7 + 1 and engine.model.lm_head in linears  # every projection and the head
    assert engine.model.model.embed_tokens.weight.dtype == torch.float32
    for question in QUESTIONS:
        prompt_ids, _, _ = engine.prompt(ask(question), GREEDY)
        ids = list(engine.tokens(prompt_ids, GREEDY))
        assert ids == generate_ids(engine, prompt_ids, GREEDY.max_new_tokens)
        assert "".join(engine.stream(ask(question), GREEDY)) == engine.generate(ask(question), GREEDY)
    # Quality against the unquantised weights, teacher-forced over the prompts (a random tiny model
    # has small logit margins, so this is a weak measure; measured: 0.015 relative logits error, 95 % top-1 agreement over 87 positions).
    prompts = [torch.tensor([engine.prompt(ask(q), GREEDY)[0]]) for q in QUESTIONS]
    with torch.inference_mode():
        ours = torch.cat([engine.model(p).logits[0] for p in prompts])
        want = torch.cat([exact.model(p).logits[0] for p in prompts])
    assert ((ours - want).norm() / want.norm()).item() < 0.08
    assert (ours.argmax(-1) == want.argmax(-1)).float().mean().item() > 0.85


def test_switches_and_fallbacks(tiny_dir, exact, monkeypatch):
    monkeypatch.setenv("ASSISTANT_QUANTIZE", "none")
    assert not any(isinstance(m, Int8Linear) for m in ChatEngine.from_pretrained(tiny_dir, device="cpu").model.modules())
    monkeypatch.setenv("ASSISTANT_QUANTIZE", "int4")
    with pytest.raises(EngineError, match="ASSISTANT_QUANTIZE"):
        ChatEngine.from_pretrained(tiny_dir, device="cpu")
    monkeypatch.delenv("ASSISTANT_QUANTIZE")

    monkeypatch.setenv("ASSISTANT_FAST_DECODE", "0")
    plain = ChatEngine.from_pretrained(tiny_dir, device="cpu", quantize="none")
    assert plain.decoder is None
    prompt_ids, _, _ = plain.prompt(ask(QUESTIONS[0]), GREEDY)
    assert list(plain.tokens(prompt_ids, GREEDY)) == list(exact.tokens(prompt_ids, GREEDY))
    monkeypatch.delenv("ASSISTANT_FAST_DECODE")

    from chat import quant

    quant.int8_kernel.cache_clear()
    monkeypatch.setenv("ASSISTANT_INT8_KERNEL", "weight_only")
    try:
        engine = ChatEngine.from_pretrained(tiny_dir, device="cpu")
        assert engine.model.lm_head.kernel == "weight_only"
        prompt_ids, _, _ = engine.prompt(ask(QUESTIONS[1]), GREEDY)
        assert list(engine.tokens(prompt_ids, GREEDY)) == generate_ids(engine, prompt_ids, GREEDY.max_new_tokens)
    finally:
        quant.int8_kernel.cache_clear()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_graphed_decode_equals_greedy_generate_across_buckets(tiny_dir):
    engine = ChatEngine.from_pretrained(tiny_dir, dtype="fp32")  # fp32: no bf16 near-ties between kernels
    assert engine.slot is not None
    engine.stop_ids = []
    for prompt_ids in (engine.prompt(ask(QUESTIONS[1]), GREEDY)[0], prompt_of_length(engine, MIN_BUCKET - 10)):
        ids = list(engine.tokens(prompt_ids, GREEDY))
        assert engine.slot.broken is None and engine.slot.graphs
        assert ids == generate_ids(engine, prompt_ids, GREEDY.max_new_tokens, stops=False)
    assert sorted(engine.slot.graphs) == [MIN_BUCKET, 2 * MIN_BUCKET]  # one graph per bucket used
    engine.stop_ids = stop_token_ids(engine.tokenizer)
    streamed = "".join(engine.stream(ask(QUESTIONS[1]), GREEDY))
    assert streamed == engine.tokenizer.decode(list(engine.tokens(engine.prompt(ask(QUESTIONS[1]), GREEDY)[0], GREEDY)),
                                               skip_special_tokens=True)
