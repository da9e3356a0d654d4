"""The fast decode paths (chat.fast static cache, chat.batch batched decoder, chat.quant int8) on tiny checkpoints."""
from __future__ import annotations

import dataclasses
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from myassistant.chat import ChatEngine, EngineError, GenerationSettings, ServeConfig
from myassistant.chat.batch import MIN_BUCKET
from myassistant.chat.fast import decoder_layer
from myassistant.chat.quant import Int8Linear
from myassistant.model import build_tiny_checkpoint, stop_token_ids

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
    alone = ChatEngine(exact.model, exact.tokenizer, batched=False)  # a static cache per chat, no batching
    assert alone.decoder is not None and alone.batch is None
    prompt_ids, _, _ = alone.prompt(ask(question), GREEDY)
    assert list(alone.tokens(prompt_ids, GREEDY)) == generate_ids(exact, prompt_ids, GREEDY.max_new_tokens)


@pytest.fixture(scope="module")
def batched(exact) -> ChatEngine:
    """The GPU's batched decoder (chat.batch), run on the CPU without graphs: the same masked,
    bucketed steps over rows of one cache, the same scheduler thread."""
    engine = ChatEngine(exact.model, exact.tokenizer, batched=True)
    assert engine.batch is not None and not engine.batch.cuda_graphs
    return engine


def test_batched_decoder_equals_generate_across_a_bucket_boundary(exact, batched):
    prompt_ids = prompt_of_length(exact, MIN_BUCKET - 10)
    settings = GenerationSettings(temperature=0, max_new_tokens=30)
    batched.stop_ids = []  # decode the full length: the reply must cross the boundary
    try:
        ids = list(batched.tokens(prompt_ids, settings))
    finally:
        batched.stop_ids = exact.stop_ids
    assert len(prompt_ids) + len(ids) > MIN_BUCKET  # the decode moved to the next bucket
    assert ids == generate_ids(exact, prompt_ids, settings.max_new_tokens, stops=False)
    for question in QUESTIONS:
        prompt_ids, _, _ = exact.prompt(ask(question), GREEDY)
        assert list(batched.tokens(prompt_ids, GREEDY)) == generate_ids(exact, prompt_ids, GREEDY.max_new_tokens)


def test_concurrent_chats_share_decode_steps_and_each_gets_its_own_reply(exact, batched):
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(6)]
    replies: dict[int, str] = {}
    steps_before = batched.batch.steps
    threads = [threading.Thread(target=lambda i=i, q=q: replies.update({i: batched.generate(ask(q), GREEDY)}))
               for i, q in enumerate(questions)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    alone = {q: exact.generate(ask(q), GREEDY) for q in QUESTIONS}
    assert [replies[i] for i in range(6)] == [alone[q] for q in questions]
    tokens = sum(len(exact.tokenizer.encode(r, add_special_tokens=False)) for r in replies.values())
    assert batched.batch.steps - steps_before < 0.6 * tokens  # rows advanced together, not one chat per step


def test_prompts_prefilled_together_get_the_numbers_of_their_own_prefill(tiny_dir):
    """On the CPU the batched decoder prefills chats that arrive together in one pass (each weight read
    once for all their tokens); with int8 layers (each row computed on its own) a chat's logits and cache
    entries are exactly those of its own prefill, so a reply does not depend on who asked at the same time."""
    engine = ChatEngine.from_pretrained(tiny_dir, device="cpu")
    prompts = [engine.prompt(ask(q), GREEDY)[0] for q in QUESTIONS]
    decoder = engine.decoder
    with torch.inference_mode():
        alone, packed = decoder.new_cache(256, rows=3), decoder.new_cache(256, rows=3)
        want = torch.cat([decoder.prefill(torch.tensor([p]), alone, row) for row, p in enumerate(prompts)])
        got = decoder.prefill_packed(prompts, packed, [2, 0, 1])  # prompt i into row [2, 0, 1][i]
    assert torch.equal(got, want)
    assert torch.equal(packed.k[:, [2, 0, 1]], alone.k) and torch.equal(packed.v[:, [2, 0, 1]], alone.v)
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(8)]
    expected = {q: engine.generate(ask(q), GREEDY) for q in QUESTIONS}
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda q: engine.generate(ask(q), GREEDY), questions))
    assert replies == [expected[q] for q in questions]


def test_closing_a_stream_frees_its_row_and_others_go_on(exact, batched):
    first = batched.tokens(exact.prompt(ask(QUESTIONS[2]), GREEDY)[0], GREEDY)
    next(first)
    assert sum(c is not None for c in batched.batch.chats) == 1
    second = batched.generate(ask(QUESTIONS[1]), GREEDY)  # decoded while the first still holds a row
    first.close()  # what the Stop button does
    deadline = time.monotonic() + 120  # generous: the scheduler thread may wait for a busy CPU
    while any(batched.batch.chats) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(batched.batch.chats)
    assert second == exact.generate(ask(QUESTIONS[1]), GREEDY)
    # A cancelled chat ends after the step under way, however many tokens its consumer has not read
    # yet (on a busy machine that can be many): stop tokens off, so only the cancel can end it early.
    long = GenerationSettings(temperature=0, max_new_tokens=batched.batch.max_len // 2)
    cancel = threading.Event()
    batched.stop_ids = []
    try:
        stream = batched.tokens(exact.prompt(ask(QUESTIONS[0]), long)[0], long, cancel)
        next(stream)
        with batched.batch.wake:  # the scheduler blocks here between steps
            cancel.set()
            (chat,) = [c for c in batched.batch.chats if c is not None]
            decoded = chat.produced
        rest = list(stream)
    finally:
        batched.stop_ids = exact.stop_ids
    assert chat.done and len(rest) <= decoded + 1 < long.max_new_tokens  # + the step under way


def test_seeded_sampling_on_the_batched_path_ignores_its_neighbours(exact, batched):
    settings = GenerationSettings(temperature=0.9, top_p=0.9, top_k=40, repetition_penalty=1.2, max_new_tokens=30,
                                  seed=3)
    alone = batched.generate(ask(QUESTIONS[0]), settings)
    neighbour = batched.tokens(exact.prompt(ask(QUESTIONS[2]), GREEDY)[0], GREEDY)
    next(neighbour)
    assert batched.generate(ask(QUESTIONS[0]), settings) == alone
    neighbour.close()
    assert batched.generate(ask(QUESTIONS[0]), dataclasses.replace(settings, seed=4)) != alone


def test_compiled_decode_step_equals_eager_with_one_compile_for_all_layers(exact):
    import torch._dynamo

    torch._dynamo.reset()
    compiled = ChatEngine(exact.model, exact.tokenizer, batched=True)
    compiled.decoder.decode_layer = torch.compile(decoder_layer, dynamic=True)  # what a GPU gets
    results: dict[int, list[int]] = {}
    prompt_ids = exact.prompt(ask(QUESTIONS[0]), GREEDY)[0]
    threads = [threading.Thread(target=lambda i=i: results.update({i: list(compiled.tokens(prompt_ids, GREEDY))}))
               for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert list(results.values()) == [generate_ids(exact, prompt_ids, GREEDY.max_new_tokens)] * 3
    # prefill, a step of one row, a step of several: not one per layer, cache length or prompt length
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] <= 3


def test_seeded_sampling_is_the_same_on_the_fast_and_the_plain_path(exact):
    plain = ChatEngine(exact.model, exact.tokenizer, config=ServeConfig(fast_decode=False))
    assert plain.decoder is None
    settings = GenerationSettings(temperature=0.9, top_p=0.9, top_k=40, repetition_penalty=1.2, max_new_tokens=30,
                                  seed=3)
    alone = ChatEngine(exact.model, exact.tokenizer, batched=False)  # the batched path samples by its own draws
    prompt_ids, _, _ = exact.prompt(ask(QUESTIONS[0]), settings)
    assert list(alone.tokens(prompt_ids, settings)) == list(plain.tokens(prompt_ids, settings))


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


def test_two_pass_int8_activations_are_closer_to_the_weights_and_decode_the_same_way(tiny_dir, exact):
    """quantize="int8_two_pass": what one int8 pass rounds away from the activations is a second row of the
    same product; closer logits than one pass, greedy replies equal `generate` on the same weights."""
    one = ChatEngine.from_pretrained(tiny_dir, device="cpu", quantize="int8", int8_kernel="dynamic")
    two = ChatEngine.from_pretrained(tiny_dir, device="cpu", quantize="int8_two_pass", int8_kernel="dynamic")
    assert two.model.lm_head.two_pass and not one.model.lm_head.two_pass
    prompts = [torch.tensor([exact.prompt(ask(q), GREEDY)[0]]) for q in QUESTIONS]
    with torch.inference_mode():
        want = torch.cat([exact.model(p).logits[0] for p in prompts])
        errors = [(torch.cat([e.model(p).logits[0] for p in prompts]) - want).norm() / want.norm() for e in (one, two)]
    assert errors[1] < 0.9 * errors[0]  # measured: 0.0124 -> 0.0097 (the rest: the weights' rounding)
    for question in QUESTIONS:
        prompt_ids, _, _ = two.prompt(ask(question), GREEDY)
        assert list(two.tokens(prompt_ids, GREEDY)) == generate_ids(two, prompt_ids, GREEDY.max_new_tokens)


def test_serving_switches_and_fallbacks(tiny_dir, exact):
    assert not any(isinstance(m, Int8Linear) for m in
                   ChatEngine.from_pretrained(tiny_dir, device="cpu", quantize="none").model.modules())
    with pytest.raises(EngineError, match="quantize='int3'"):
        ChatEngine.from_pretrained(tiny_dir, device="cpu", quantize="int3")
    with pytest.raises(EngineError, match="decode_rows=0"):
        ChatEngine(exact.model, exact.tokenizer, config=ServeConfig(decode_rows=0), batched=True)
    rows = ChatEngine(exact.model, exact.tokenizer, config=ServeConfig(decode_rows=2), batched=True)
    assert rows.batch.rows == 2

    plain = ChatEngine.from_pretrained(tiny_dir, device="cpu", quantize="none", fast_decode=False)
    assert plain.decoder is None
    prompt_ids, _, _ = plain.prompt(ask(QUESTIONS[0]), GREEDY)
    assert list(plain.tokens(prompt_ids, GREEDY)) == list(exact.tokens(prompt_ids, GREEDY))

    engine = ChatEngine.from_pretrained(tiny_dir, device="cpu", int8_kernel="weight_only")
    assert engine.model.lm_head.kernel == "weight_only"
    prompt_ids, _, _ = engine.prompt(ask(QUESTIONS[1]), GREEDY)
    assert list(engine.tokens(prompt_ids, GREEDY)) == generate_ids(engine, prompt_ids, GREEDY.max_new_tokens)


def test_the_attention_warms_the_next_weights_only_where_that_was_measured_faster():
    """chat.fast.warm_after_attention: o_proj's weight and gate / up's first rows for one-row bf16 steps whose o_proj
    fits the budget; nothing for several rows, weight-only quantised layers or an o_proj larger than the budget."""
    from myassistant.chat import int_weights
    from myassistant.chat.fast import warm_after_attention

    qkv, gate_up, o_proj, down = (torch.zeros(n, k, dtype=torch.bfloat16) for n, k in
                                  ((48, 16), (2 * 40, 16), (16, 16), (16, 40)))
    fused = (qkv, gate_up, o_proj, down)
    budget = o_proj.nbytes + 2 * 3 * gate_up[0].nbytes  # o_proj and three rows each of gate and up
    spans = warm_after_attention(fused, rows=1, budget=budget)
    want = [(o_proj.data_ptr(), o_proj.shape), (gate_up.data_ptr(), (3, 16)), (gate_up[40].data_ptr(), (3, 16))]
    assert [(t.data_ptr(), t.shape) for t in spans] == want
    assert all(t.is_contiguous() for t in spans)
    assert warm_after_attention(fused, rows=2, budget=budget) == []
    assert warm_after_attention(fused, rows=1, budget=o_proj.nbytes - 1) == []
    quantised = tuple(int_weights.quantize(w.float(), 8) for w in fused)
    assert warm_after_attention(quantised, rows=1, budget=budget) == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_graphed_decode_equals_greedy_generate_across_buckets_and_rows(tiny_dir):
    engine = ChatEngine.from_pretrained(tiny_dir, dtype="fp32")  # fp32: no bf16 near-ties between kernels
    assert engine.batch is not None and engine.batch.cuda_graphs
    engine.warm_up()
    stops = engine.stop_ids
    engine.stop_ids = []
    prompts = [engine.prompt(ask(QUESTIONS[1]), GREEDY)[0], prompt_of_length(engine, MIN_BUCKET - 10)]
    for prompt_ids in prompts:
        ids = list(engine.tokens(prompt_ids, GREEDY))
        assert engine.batch.broken is None
        assert ids == generate_ids(engine, prompt_ids, GREEDY.max_new_tokens, stops=False)
    assert {(1, MIN_BUCKET), (1, 2 * MIN_BUCKET)} <= {key[:2] for key in engine.batch.graphs}  # a graph a bucket
    engine.stop_ids = stops
    results: dict[int, list[int]] = {}
    threads = [threading.Thread(target=lambda i=i: results.update({i: list(engine.tokens(prompts[i % 2], GREEDY))}))
               for i in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [results[i] for i in range(5)] == [generate_ids(engine, prompts[i % 2], GREEDY.max_new_tokens)
                                              for i in range(5)]
    assert any(key[0] > 1 for key in engine.batch.graphs)
    # sampled inside the graphs (chat.sampler's kernel), with and without a repetition penalty: a seeded chat draws
    # the same tokens with a neighbour sharing its steps as alone
    engine.stop_ids = []
    for penalty in (1.2, 1.0):
        settings = GenerationSettings(temperature=0.9, top_p=0.9, top_k=40, repetition_penalty=penalty,
                                      max_new_tokens=30, seed=3)
        alone = list(engine.tokens(prompts[0], settings))
        neighbour = engine.tokens(prompts[1], GREEDY)
        next(neighbour)
        assert list(engine.tokens(prompts[0], settings)) == alone and len(alone) == 30
        neighbour.close()
    assert {key[2] for key in engine.batch.graphs} == {"greedy", "sample", "penalty"} and engine.batch.broken is None
    engine.stop_ids = stops
    streamed = "".join(engine.stream(ask(QUESTIONS[1]), GREEDY))
    assert streamed == engine.tokenizer.decode(list(engine.tokens(engine.prompt(ask(QUESTIONS[1]), GREEDY)[0], GREEDY)),
                                               skip_special_tokens=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_internlm2_1_8b_shape_decode_equals_greedy_generate(tiny_dir):
    """The InternLM2-1.8B shape (Llama layout, random weights): fp32 tokens equal `generate`'s; bf16
    tokens equal them up to the first step where `generate`'s top two logits are a bf16 near-tie."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=16,
                         num_key_value_heads=8, vocab_size=92544, rope_theta=1e6, rms_norm_eps=1e-5,
                         max_position_embeddings=32768, tie_word_embeddings=False)
    tokenizer = ChatEngine.from_pretrained(tiny_dir, device="cpu").tokenizer
    for dtype, tokens in ((torch.float32, 64), (torch.bfloat16, 128)):
        torch.manual_seed(0)
        with torch.device("cuda"):
            model = LlamaForCausalLM(config).to(dtype).eval()
        engine = ChatEngine(model, tokenizer)
        engine.stop_ids = []
        prompt_ids = engine.prompt(ask(QUESTIONS[2]), GREEDY)[0]
        ours = list(engine.tokens(prompt_ids, GenerationSettings(temperature=0, max_new_tokens=tokens)))
        assert engine.batch.broken is None and engine.batch.graphs, "the steps ran without their CUDA graphs"
        with torch.inference_mode():
            out = model.generate(torch.tensor([prompt_ids], device="cuda"), do_sample=False, max_new_tokens=tokens,
                                 min_new_tokens=tokens, output_scores=True, return_dict_in_generate=True)
        want = out.sequences[0, len(prompt_ids):].tolist()
        if dtype == torch.float32:
            assert ours == want
        else:
            split = next((i for i, (a, b) in enumerate(zip(ours, want)) if a != b), None)
            if split is not None:
                top2 = out.scores[split][0].float().topk(2).values
                assert float(top2[0] - top2[1]) <= 0.125, f"parted at {split} without a near-tie"
        del engine, model
        torch.cuda.empty_cache()
