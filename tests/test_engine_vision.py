"""Chats about pictures (chat.vision): a tiny Llava served by the chat engine and the chat CLI, on the CPU."""
from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from conftest import run_cli

from myassistant.chat import ChatEngine, EngineError, GenerationSettings, ServeConfig

GREEDY = GenerationSettings(temperature=0, max_new_tokens=24)


def draw(path: Path, shape: str, colour: str, mode: str = "RGB", size: tuple[int, int] = (64, 48)) -> Path:
    image = Image.new("RGB", size, "white")
    box = (size[0] // 5, size[1] // 5, size[0] * 4 // 5, size[1] * 4 // 5)
    (ImageDraw.Draw(image).ellipse if shape == "circle" else ImageDraw.Draw(image).rectangle)(box, fill=colour)
    image.convert(mode).save(path)
    return path


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pictures")
    return {"red_circle": draw(folder / "red_circle.png", "circle", "red"),
            "blue_square": draw(folder / "blue_square.jpg", "square", "blue")}


@pytest.fixture(scope="module")
def engine(tiny_llava) -> ChatEngine:
    return ChatEngine.from_pretrained(tiny_llava, device="cpu", quantize="none")  # fp32: exact


def ask_about(image, text: str = "What is in the picture?") -> list[dict]:
    return [{"role": "user", "content": [{"type": "image", "image": str(image)}, {"type": "text", "text": text}]}]


def llava_generate(engine: ChatEngine, prompt_ids: list[int], images: list[Path], max_new_tokens: int) -> list[int]:
    """transformers' own LlavaForConditionalGeneration.generate for the same prompt and pictures."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(engine.vision.model.name_or_path)
    pixels = processor.image_processor(images=[Image.open(p).convert("RGB") for p in images],
                                       return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        out = engine.vision.model.generate(input_ids=torch.tensor([prompt_ids], device=engine.model.device),
                                           pixel_values=pixels.to(engine.model.device, engine.model.dtype),
                                           max_new_tokens=max_new_tokens, do_sample=False,
                                           eos_token_id=engine.stop_ids, pad_token_id=engine.stop_ids[0])
    new = out[0, len(prompt_ids):].tolist()
    return new[: next((i for i, t in enumerate(new) if t in engine.stop_ids), len(new))]


@pytest.mark.parametrize("decoder", ["static_cache", "batched", "model_forward"])
def test_an_image_chat_streams_the_tokens_of_llava_generate(engine, pictures, decoder):
    served = {"static_cache": ChatEngine(engine.model, engine.tokenizer, batched=False, vision=engine.vision),
              "batched": engine,  # the default
              "model_forward": ChatEngine(engine.model, engine.tokenizer, config=ServeConfig(fast_decode=False),
                                          vision=engine.vision)}[decoder]
    answers = {}
    for name, image in pictures.items():
        messages = ask_about(image)
        ids, _, _ = served.prompt(messages, GREEDY)
        ids, embed = served.vision.prepare(ids, [image])
        assert ids.count(engine.vision.image_token_id) == engine.vision.tokens_per_image == 16
        tokens = list(served.tokens(ids, GREEDY, embed=embed))
        assert tokens == llava_generate(engine, ids, [image], GREEDY.max_new_tokens)
        deltas = list(served.stream(messages, GREEDY))
        assert len(deltas) > 1  # streamed
        full = engine.tokenizer.decode(tokens, skip_special_tokens=True)
        if "\ufffd" not in full:  # random weights emit invalid byte runs, which streaming holds back
            assert "".join(deltas) == full
        answers[name] = tokens
    assert answers["red_circle"] != answers["blue_square"]  # the picture reaches the model


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_image_chats_share_the_graphed_batched_steps_and_stream_llava_generate_tokens(tiny_llava, pictures):
    engine = ChatEngine.from_pretrained(tiny_llava, dtype="fp32")  # fp32: exact against generate
    assert engine.batch is not None and engine.batch.cuda_graphs
    engine.warm_up()
    runs = {}

    def run(name: str) -> None:
        runs[name] = list(engine.stream(ask_about(pictures[name]), GREEDY))

    threads = [threading.Thread(target=run, args=(name,)) for name in pictures]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, image in pictures.items():
        ids, _, _ = engine.prompt(ask_about(image), GREEDY)
        ids, embed = engine.vision.prepare(ids, [image])
        tokens = list(engine.tokens(ids, GREEDY, embed=embed))
        assert tokens == llava_generate(engine, ids, [image], GREEDY.max_new_tokens)
        assert "".join(runs[name]) == engine.generate(ask_about(image), GREEDY)
    # a picture-sized prompt: a cache bucket of 1024+ entries
    long_question = [{"role": "user", "content": " ".join(f"word{i}" for i in range(600))}]
    ids, _, _ = engine.prompt(long_question, GREEDY)
    assert len(ids) >= 1024
    with torch.inference_mode():
        out = engine.model.generate(torch.tensor([ids], device="cuda"), max_new_tokens=GREEDY.max_new_tokens,
                                    do_sample=False, eos_token_id=engine.stop_ids, pad_token_id=engine.stop_ids[0])
    want = out[0, len(ids):].tolist()
    assert list(engine.tokens(ids, GREEDY)) == want[: next((i for i, t in enumerate(want) if t in engine.stop_ids),
                                                          len(want))]
    assert engine.batch.graphs and engine.batch.broken is None


def test_text_chats_on_a_multimodal_model_equal_its_language_model(engine):
    messages = [{"role": "user", "content": "Who are you?"}]
    ids, _, _ = engine.prompt(messages, GREEDY)
    with torch.inference_mode():
        out = engine.vision.model.generate(input_ids=torch.tensor([ids]), max_new_tokens=GREEDY.max_new_tokens,
                                           do_sample=False, eos_token_id=engine.stop_ids,
                                           pad_token_id=engine.stop_ids[0])
    want = out[0, len(ids):].tolist()
    want = want[: next((i for i, t in enumerate(want) if t in engine.stop_ids), len(want))]
    assert engine.generate(messages, GREEDY) == engine.tokenizer.decode(want, skip_special_tokens=True)


def test_history_keeps_its_picture_and_a_trimmed_one_is_dropped(engine, pictures):
    first = ask_about(pictures["red_circle"])
    reply = engine.generate(first, GREEDY)
    # Gradio 6 hands the history back with file parts
    history = [{"role": "user", "content": [{"type": "file", "file": {"path": str(pictures["red_circle"])}},
                                            {"type": "text", "text": "What is in the picture?"}]},
               {"role": "assistant", "content": [{"type": "text", "text": reply}]}]
    follow_up = history + [{"role": "user", "content": "And its colour?"}]
    ids, _, _ = engine.prompt(follow_up, GREEDY)
    ids, embed = engine.vision.prepare(ids, [pictures["red_circle"]])
    assert ids.count(engine.vision.image_token_id) == 16
    assert engine.generate(follow_up, GREEDY) == engine.tokenizer.decode(
        llava_generate(engine, ids, [pictures["red_circle"]], GREEDY.max_new_tokens), skip_special_tokens=True)
    # A window too small for the first turn: the picture goes with it, the rest is served as text.
    small = ChatEngine(engine.model, engine.tokenizer, max_context=64, vision=engine.vision)
    long_history = history + [{"role": "user", "content": "word " * 20}, {"role": "assistant", "content": "ok"}]
    messages = long_history + [{"role": "user", "content": "And now?"}]
    ids, _, dropped = small.prompt(messages, GREEDY)
    assert dropped >= 2 and small.vision.prepare(ids, [pictures["red_circle"]]) == (ids, None)
    assert isinstance(small.generate(messages, GREEDY), str)


def test_grey_transparent_huge_and_tiny_pictures_are_read(engine, tmp_path):
    for name, mode, size in (("grey.png", "L", (40, 30)), ("rgba.png", "RGBA", (30, 40)),
                             ("huge.jpg", "RGB", (3000, 2000)), ("tiny.bmp", "RGB", (2, 2))):
        picture = draw(tmp_path / name, "circle", "green", mode, size)
        assert engine.generate(ask_about(picture), GREEDY, max_new_tokens=4)


def test_unreadable_pictures_and_text_only_models_are_one_line_errors(engine, tmp_path, tiny_checkpoint):
    with pytest.raises(EngineError, match=f"^image {tmp_path / 'missing.png'}: no such file$"):
        engine.generate(ask_about(tmp_path / "missing.png"), GREEDY)
    (tmp_path / "fake.png").write_text("not a picture")
    with pytest.raises(EngineError, match=f"^image {tmp_path / 'fake.png'}: not a readable image"):
        engine.generate(ask_about(tmp_path / "fake.png"), GREEDY)
    Image.new("1", (14000, 13500)).save(tmp_path / "huge.png")  # 189 megapixels: over Pillow's limit, said so
    with pytest.raises(EngineError, match="huge.png: more pixels than Pillow opens .*; downscale it$"):
        engine.generate(ask_about(tmp_path / "huge.png"), GREEDY)
    text_only = ChatEngine.from_pretrained(tiny_checkpoint, device="cpu")
    with pytest.raises(EngineError, match="is a text-only model: it cannot read images"):
        text_only.generate(ask_about(tmp_path / "fake.png"), GREEDY)


def chat_cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return run_cli("chat", *args, env={"OMP_NUM_THREADS": "1"}, timeout=120, input=stdin)


def test_chat_cli_asks_about_a_picture(tiny_llava, pictures, engine, tmp_path):
    greedy = ("--temperature", "0", "--max-new-tokens", "12", "--device", "cpu", "--quantize", "none")
    done = chat_cli(str(tiny_llava), "--image", str(pictures["red_circle"]), "--prompt", "What is in the picture?",
                   *greedy)
    assert done.returncode == 0, done.stderr
    assert done.stdout == engine.generate(ask_about(pictures["red_circle"]), GREEDY, max_new_tokens=12) + "\n"

    dropped = tmp_path / "my photo.jpg"  # a file dropped on a terminal is pasted quoted (or its spaces escaped)
    dropped.write_bytes(pictures["blue_square"].read_bytes())
    done = chat_cli(str(tiny_llava), *greedy, stdin=f"/image {tmp_path / 'nope.png'}\n/image\n/image {tmp_path}\n"
                   f"/image '{dropped}'\nWhat is in the picture?\nAnd now?\n/exit\n")
    assert done.returncode == 0, done.stderr
    assert f"image {tmp_path / 'nope.png'}: no such file" in done.stderr
    assert "no image path given: /image PATH" in done.stderr and f"image {tmp_path}: a folder" in done.stderr
    first_reply = engine.generate(ask_about(pictures["blue_square"]), GREEDY, max_new_tokens=12)
    assert done.stdout.split(">>> ")[5] == first_reply + "\n"

    done = chat_cli(str(tiny_llava), "--image", str(tmp_path / "nope.png"), "--prompt", "hi", *greedy)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == f"assistant chat: error: image {tmp_path / 'nope.png'}: no such file"
