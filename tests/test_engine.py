"""Chat engine (chat/), and the chat CLI, on a tiny real InternLM2-format checkpoint."""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from conftest import cli
from myassistant.chat import ChatEngine, EngineError, GenerationSettings, GenerationStats
from myassistant.chat.stream import IncrementalDetokenizer, Pacer
from myassistant.model import build_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
GREEDY = GenerationSettings(temperature=0, max_new_tokens=40)
CHINESE = "你好，世界！龘靐齉 ok"  # 龘靐齉 are not in the tiny vocabulary: byte-fallback tokens


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("engine") / "tiny")


@pytest.fixture(scope="module")
def engine(tiny_dir) -> ChatEngine:
    return ChatEngine.from_pretrained(tiny_dir, device="cpu")


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def greedy_generate_ids(engine: ChatEngine, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    x = torch.tensor([prompt_ids], device=engine.model.device)
    out = engine.model.generate(x, max_new_tokens=max_new_tokens, do_sample=False,
                                eos_token_id=engine.stop_ids, pad_token_id=engine.stop_ids[0])
    new = out[0, len(prompt_ids):].tolist()
    return new[: next((i for i, t in enumerate(new) if t in engine.stop_ids), len(new))]


def test_loads_on_cpu_in_fp32_by_default_and_bf16_when_asked(engine, tiny_dir):
    # fp32 around int8 linear layers by default on the CPU (tests/test_fast_decode.py covers the int8 part)
    assert engine.model.device.type == "cpu" and engine.model.dtype == torch.float32
    assert ChatEngine.from_pretrained(tiny_dir, device="cpu", dtype="bf16").model.dtype == torch.bfloat16
    auto = ChatEngine.from_pretrained(tiny_dir).model.device.type
    assert auto == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("question", ["Who are you?", CHINESE])
def test_greedy_stream_equals_generate_and_full_decode(engine, question):
    prompt_ids, _, _ = engine.prompt(ask(question), GREEDY)
    ids = list(engine.tokens(prompt_ids, GREEDY))
    assert ids == greedy_generate_ids(engine, prompt_ids, GREEDY.max_new_tokens)
    deltas = list(engine.stream(ask(question), GREEDY))
    assert len(deltas) > 1  # streamed, not one chunk at the end
    assert "".join(deltas) == engine.tokenizer.decode(ids, skip_special_tokens=True)
    assert engine.generate(ask(question), GREEDY) == "".join(deltas)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_loads_in_half_precision_and_streams_the_greedy_generate_tokens(tiny_dir):
    engine = ChatEngine.from_pretrained(tiny_dir)
    assert engine.model.device.type == "cuda" and engine.model.dtype in (torch.bfloat16, torch.float16)
    prompt_ids, _, _ = engine.prompt(ask(CHINESE), GREEDY)
    ids = list(engine.tokens(prompt_ids, GREEDY))
    assert ids == greedy_generate_ids(engine, prompt_ids, GREEDY.max_new_tokens)
    assert "".join(engine.stream(ask(CHINESE), GREEDY)) == engine.tokenizer.decode(ids, skip_special_tokens=True)


def test_complete_continues_plain_text_as_generate_does(engine, tiny_dir):
    text = "The weather today 今天"
    ids = engine.tokenizer(text)["input_ids"]
    assert ids[0] == engine.tokenizer.bos_token_id and "<|im_start|>" not in engine.tokenizer.decode(ids)
    want = greedy_generate_ids(engine, ids, GREEDY.max_new_tokens)
    stats = GenerationStats()
    assert "".join(engine.complete(text, GREEDY, stats=stats)) == engine.tokenizer.decode(want, skip_special_tokens=True)
    assert stats.prompt_tokens == len(ids) and stats.new_tokens >= len(want)
    done = cli("chat", str(tiny_dir), "--complete", text, "--temperature", "0", "--max-new-tokens", "40",
                   "--device", "cpu")
    assert done.returncode == 0 and done.stdout.startswith(text), done.stderr[-2000:]


def test_sampling_is_repeatable_with_a_seed_and_never_adds_replacement_chars(engine):
    checked = 0
    for seed in range(40):  # short replies: a random model often samples invalid byte runs
        settings = GenerationSettings(temperature=1.0, top_p=0.95, top_k=50, repetition_penalty=1.1,
                                      max_new_tokens=8, seed=seed)
        prompt_ids, _, _ = engine.prompt(ask(CHINESE), settings)
        full = engine.tokenizer.decode(list(engine.tokens(prompt_ids, settings)), skip_special_tokens=True)
        deltas = list(engine.stream(ask(CHINESE), settings))
        if "\ufffd" not in full:  # a random model also emits invalid byte runs (see IncrementalDetokenizer)
            assert "".join(deltas) == full
        checked += "\ufffd" not in full
    assert checked >= 2


def test_detokenizer_streams_byte_fallback_chinese_cleanly(engine):
    text = "Hello 世界！龘靐齉 and 我是你的助手。"
    ids = engine.tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = engine.tokenizer.convert_ids_to_tokens(ids)
    assert sum(p.startswith("<0x") for p in pieces) >= 9  # the test really covers split characters
    detokenizer = IncrementalDetokenizer(engine.tokenizer)
    deltas = [detokenizer.push(i) for i in ids] + [detokenizer.flush()]
    assert not any("\ufffd" in d for d in deltas)
    assert "".join(deltas) == text
    # a byte-fallback character is held back until its last byte arrives
    first_byte = pieces.index("<0xE9>")
    assert deltas[first_byte] == deltas[first_byte + 1] == ""


def test_a_pacer_lets_an_update_through_at_once_then_at_most_every_interval():
    pacer = Pacer(every_s=1.0)
    assert pacer.due() and not pacer.due()
    time.sleep(1.05)
    assert pacer.due() and not pacer.due()


@pytest.mark.parametrize("batched", [False, True])
def test_cancel_and_close_really_stop_generation(engine, batched):
    # Batched, the scheduler may run chat.batch.AHEAD steps ahead of a reader; a stopped chat's row is
    # freed at the next step.
    slack = 4 if batched else 0
    engine = ChatEngine(engine.model, engine.tokenizer, batched=batched)
    forwards = []  # the lm_head runs once per step on every decode path
    hook = engine.model.lm_head.register_forward_hook(lambda *_: forwards.append(1))
    try:
        cancel, stats = threading.Event(), GenerationStats()
        long = GenerationSettings(temperature=1.0, max_new_tokens=200, seed=0)
        for n, _ in enumerate(engine.stream(ask("Tell me a story"), long, cancel=cancel, stats=stats)):
            if n == 2:
                cancel.set()
        assert 3 <= stats.new_tokens <= 4 + slack and len(forwards) <= 4 + slack

        forwards.clear()
        stream = engine.stream(ask("Tell me a story"), long)
        next(stream)
        stream.close()
        calls = len(forwards)
        assert calls <= 2 + slack and list(stream) == []
        if batched:
            deadline = time.monotonic() + 10
            while any(engine.batch.chats) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert not any(engine.batch.chats)
        assert len(forwards) <= calls + slack // 4
    finally:
        hook.remove()


def test_history_is_trimmed_from_the_oldest_turns(engine):
    small = ChatEngine(engine.model, engine.tokenizer, max_context=96)
    history = []
    for i in range(30):
        history += [{"role": "user", "content": f"question {i} about the weather"},
                    {"role": "assistant", "content": f"answer {i}: it is sunny"}]
    messages = history + [{"role": "user", "content": "last question"}]
    settings = GenerationSettings(system_prompt="You are Tiny.", temperature=0, max_new_tokens=16)
    ids, max_new, dropped = small.prompt(messages, settings)
    text = engine.tokenizer.decode(ids)
    assert len(ids) <= 96 - 16 and max_new == 16 and dropped > 0 and dropped % 2 == 0
    assert "You are Tiny." in text and text.rstrip().endswith("last question<|im_end|>\n<|im_start|>assistant")
    assert "question 0 " not in text and "answer 29" in text
    assert isinstance(small.generate(messages, settings), str)


def test_a_too_long_last_message_is_cut_from_the_left_and_a_too_long_system_prompt_said(engine):
    small = ChatEngine(engine.model, engine.tokenizer, max_context=64)
    settings = GenerationSettings(system_prompt="You are Tiny.", temperature=0, max_new_tokens=8)
    long_question = " ".join(f"word{i}" for i in range(200)) + " THE END"
    ids, _, _ = small.prompt(ask(long_question), settings)
    text = engine.tokenizer.decode(ids)
    assert len(ids) <= 56 and "You are Tiny." in text and "THE END<|im_end|>" in text and "word0 " not in text
    # a system prompt longer than the window was cut from the left with the message, <s> and its marker with it,
    # and `chat` called it a too long message
    huge_system = GenerationSettings(system_prompt="rules " * 300, temperature=0, max_new_tokens=8)
    with pytest.raises(EngineError, match=r"the system prompt takes [\d,]+ of the 56 tokens a prompt may have here"):
        small.prompt(ask(long_question), huge_system)


def test_concurrent_streams_each_get_their_own_complete_reply(engine):
    # Chats share each decode step (chat.batch); with int8 weights (the CPU default) each reply is
    # exactly what the chat gets alone: activations are quantised per row (chat.quant), and the int8
    # matmul is exact whatever the batch (tests/test_fast_decode.py covers unquantised weights).
    questions = ["Who are you?", CHINESE, "What is 2 + 2?", "Hello"]
    expected = {q: engine.generate(ask(q), GREEDY) for q in questions}
    results: dict[int, tuple[str, str, int]] = {}

    def run(i: int, q: str) -> None:
        stats = GenerationStats()
        results[i] = (q, "".join(engine.stream(ask(q), GREEDY, stats=stats)), stats.new_tokens)

    threads = [threading.Thread(target=run, args=(i, q)) for i, q in enumerate(questions * 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    deadline = time.monotonic() + 60  # the scheduler frees a finished chat's row at its next turn, after the reader ends
    while engine.batch is not None and any(engine.batch.chats) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(results) == 2 * len(questions) and engine.batch is not None and not any(engine.batch.chats)
    for q, reply, tokens in results.values():
        assert 0 < tokens <= GREEDY.max_new_tokens
        assert reply == expected[q]


def test_load_failures_and_bad_settings_are_user_errors(tmp_path, tiny_dir):
    with pytest.raises(EngineError, match="missing: no such model folder") as info:
        ChatEngine.from_pretrained(tmp_path / "missing")
    assert info.type.user_error
    with pytest.raises(EngineError, match="no adapter_config.json"):
        ChatEngine.from_pretrained(tiny_dir, adapter=tmp_path)
    with pytest.raises(EngineError, match="dtype='int3'"):
        ChatEngine.from_pretrained(tiny_dir, dtype="int3")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(EngineError, match=str(tmp_path)):
        ChatEngine.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="top_p=0"):
        GenerationSettings(top_p=0)


def test_base_plus_adapter_is_merged_at_load(tmp_path, tiny_dir, engine):
    from peft import LoraConfig, get_peft_model

    base = ChatEngine.from_pretrained(tiny_dir, device="cpu", quantize="none").model
    lora = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")
    x = torch.tensor([[1, 5, 9, 42, 7]])
    with torch.no_grad():
        want = lora(x).logits
    merged = ChatEngine.from_pretrained(tiny_dir, adapter=tmp_path / "adapter", device="cpu", quantize="none")
    with torch.no_grad():
        got = merged.model(x).logits
        plain = engine.model(x).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, plain, atol=1e-3)


def run_cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "myassistant.scripts.cli", "chat", *args], cwd=ROOT, input=stdin,
                          capture_output=True, text=True, timeout=120, env={"OMP_NUM_THREADS": "1", "PATH": ""})


def test_chat_cli_one_shot_and_interactive(tiny_dir, engine):
    done = run_cli(str(tiny_dir), "--prompt", "Who are you?", "--temperature", "0", "--max-new-tokens", "12",
                   "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert done.stdout == engine.generate(ask("Who are you?"), GREEDY, max_new_tokens=12) + "\n"
    assert "tokens/s" in done.stderr
    done = run_cli(str(tiny_dir), "--max-new-tokens", "4", stdin="hello\n/reset\nagain\n/help\n/quit\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count(">>> ") == 5 and done.stderr.count("tokens/s") == 2 and "[new conversation]" in done.stderr
    assert "/help: not a command; /reset starts over" in done.stderr  # not sent to the model (2 answers, not 3)
    # a pasted text of several lines between """ marks is one message; 、 (a Chinese input method's /) starts a command
    done = run_cli(str(tiny_dir), "--max-new-tokens", "4", stdin='"""\nline one\n\nline two\n"""\n、reset\n、quit\n')
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("tokens/s") == 1 and "[new conversation]" in done.stderr and "prompt 1" not in done.stderr
    # a terminal in GBK (or latin-1) sends bytes that are not UTF-8: Python keeps them as lone surrogates, which the
    # tokenizer refused with a TypeError that ended the chat
    gbk = "你好".encode("gb18030")
    done = subprocess.run([sys.executable, "-m", "myassistant.scripts.cli", "chat", str(tiny_dir), "--max-new-tokens",
                           "4", "--prompt", b"hi " + gbk], cwd=ROOT, capture_output=True, timeout=120,
                          env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert done.returncode == 0 and b"tokens/s" in done.stderr and b"not UTF-8 text" in done.stderr, done.stderr
    done = subprocess.run([sys.executable, "-m", "myassistant.scripts.cli", "chat", str(tiny_dir), "--max-new-tokens",
                           "4"], cwd=ROOT, input=gbk + b"\nagain\n/quit\n", capture_output=True, timeout=120,
                          env={"OMP_NUM_THREADS": "1", "PATH": ""})
    assert done.returncode == 0 and done.stderr.count(b"tokens/s") == 2, done.stderr


def test_chat_cli_reports_a_bad_model_folder_in_one_line(tmp_path):
    done = cli("chat", str(tmp_path), "--prompt", "hi")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == f"assistant chat: error: {tmp_path}: no config.json here; " \
        "pass a model folder (e.g. the output of `assistant merge`)"
    gone = cli("chat", str(tmp_path / "alcie"), "--prompt", "hi")  # a misspelt folder: as export and report say it
    assert gone.returncode == 1 and gone.stderr.strip().splitlines()[-1] == (
        f"assistant chat: error: {tmp_path / 'alcie'}: no such model folder")
    bad = cli("chat", str(tmp_path), "--prompt", "hi", "--max-new-tokens", "0", "--top-p", "2")  # the usage block
    assert bad.returncode == 2 and bad.stderr == (  # and GenerationSettings' field names hid which flag it was
        "assistant chat: error: --top-p 2.0: must be in (0, 1]; --max-new-tokens 0: must be >= 1\n"), bad.stderr
