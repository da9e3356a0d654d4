"""LLaVA data: `assistant data check` on real picture files, image-token expansion, labels, packing."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from conftest import cli
from myassistant.model import IMAGE_TOKEN, load_llava
from myassistant.trainer.data import IGNORE_INDEX, DataError, pack
from myassistant.trainer.multimodal import load_llava_records, tokenize_llava, write_shapes_dataset
from myassistant.trainer.multimodal.data import collate


def _chat(question: str, answer: str, image: str | list | None = None) -> dict:
    record = {"id": "x", "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}
    if image is not None:
        record["image"] = image
    return record


def _write(folder: Path, records: list[dict], name: str = "data.jsonl") -> Path:
    path = folder / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def pictures(tmp_path) -> Path:
    folder = tmp_path / "pics"
    folder.mkdir()
    Image.new("RGB", (640, 480), "red").save(folder / "big.jpg")
    Image.new("L", (20, 30), 90).save(folder / "gray.png")
    Image.new("RGBA", (33, 17), (0, 0, 255, 80)).save(folder / "rgba.png")
    Image.new("RGB", (1, 1), "green").save(folder / "dot.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return folder


def test_data_check_accepts_a_llava_file_with_text_chats(tmp_path, pictures):
    path = _write(tmp_path, [_chat("<image>\nWhat colour?", "Red.", "pics/big.jpg"), _chat("Hi", "Hello!"),
                             _chat("Describe <image> please", "Grey.", "pics/gray.png"),
                             _chat("<image>\n<image>\nCompare.", "Blue and green.", ["pics/rgba.png", "pics/dot.png"])])
    proc = cli("data", "check", str(path))
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout)
    assert (stats["records"], stats["with_images"], stats["text_only"], stats["images"]) == (4, 3, 1, 4)
    assert stats["duplicates"] == 0 and "copies of others" not in proc.stderr

    copies = _write(tmp_path, [_chat("<image>\nWhat colour?", "Red.", "pics/big.jpg")] * 5 + [_chat("Hi", "Hello!")],
                    name="copies.jsonl")  # one picture question x 5: each copy was read at its own line
    proc = cli("data", "check", str(copies))
    assert json.loads(proc.stdout)["duplicates"] == 4 and "4 of 6 records are copies of others (2 distinct)" in \
        proc.stderr, proc.stderr


def test_data_check_counts_each_picture_as_its_tokens(tmp_path, pictures, tiny_checkpoint, tiny_vision_encoder):
    """The check's token figures left the pictures out (16 tokens each with the tiny CLIP, 576 with ViT-L/14-336):
    it could say nothing is cut where training cuts many samples. With the run's encoder it counts what training
    does; without it, it gives no token figures rather than wrong ones."""
    path = _write(tmp_path, [_chat("<image>\nWhat colour?", "Red.", "pics/big.jpg"), _chat("Hi", "Hello!"),
                             _chat("<image>\n<image>\nCompare.", "Blue and green.", ["pics/rgba.png", "pics/dot.png"])])
    proc = cli("data", "check", str(path), "--tokenizer", str(tiny_checkpoint), "--max-length", "30")
    assert proc.returncode == 0 and "give the vision encoder (--vision-encoder" in json.loads(proc.stdout)["tokens"]
    proc = cli("data", "check", str(path), "--tokenizer", str(tiny_checkpoint), "--max-length", "30",
               "--vision-encoder", str(tiny_vision_encoder))
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout)
    assert stats["tokens_per_picture"] == 16 and stats["longer_than_max_length"] == 2  # the two picture records
    assert stats["tokens_max"] > 2 * 16


def test_llama_factorys_images_key_and_windows_paths_are_read(tmp_path, pictures):
    """LLaMA-Factory's "images" was "field 'image' is missing"; images\\cat.jpg (written on Windows) "not found"."""
    factory = {"images": ["pics\\big.jpg"], "conversations": [{"from": "human", "value": "<image>\nWhat colour?"},
                                                                {"from": "gpt", "value": "Red."}]}
    proc = cli("data", "check", str(_write(tmp_path, [factory])))
    assert proc.returncode == 0 and json.loads(proc.stdout)["images"] == 1, proc.stderr


@pytest.mark.parametrize("record, line_problem", [
    (_chat("<image>\nWhat?", "A cat.", "pics/missing.jpg"), "pics/missing.jpg not found"),
    (_chat("<image>\nWhat?", "A cat.", "pics/broken.jpg"), "pics/broken.jpg cannot be read"),
    (_chat("<image>\nWhat?", "A cat."), "has 1 <image> placeholder(s) but no image"),
    (_chat("What is it?", "A cat.", "pics/big.jpg"), "names 1 image(s) but has no <image> placeholder"),
    (_chat("<image> and <image>?", "Cats.", "pics/big.jpg"), "has 2 <image> placeholders for 1 image(s)"),
    (_chat("<image>\nWhat?", "A cat.", "https://example.com/cat.jpg"), "field 'image' https://example.com/cat.jpg is "
     "a web address; pictures are read from files"),  # it was joined into the folder: "pics/https:/example.com/..."
])
def test_data_check_names_file_line_and_picture(tmp_path, pictures, record, line_problem):
    path = _write(tmp_path, [_chat("<image>\nOk?", "Yes.", "pics/dot.png"), record])
    proc = cli("data", "check", str(path), "--image-folder", str(tmp_path))
    assert proc.returncode == 1
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert f"{path}:2:" in err and line_problem in err


def test_tokens_expand_pictures_without_loss_and_pack_with_text(tiny_llava, tmp_path, pictures):
    _, processor = load_llava(tiny_llava)
    tok = processor.tokenizer
    image_id = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    path = _write(tmp_path, [_chat("<image>\nWhat colour?", "Red.", "pics/big.jpg"), _chat("Hi", "Hello!"),
                             _chat("<image>\nAnd this?", "Grey, a long answer " * 6, "pics/gray.png")])
    records = load_llava_records(path)
    data = tokenize_llava(records, tok, max_length=512, image_tokens=16)
    first = data[0]
    assert first["input_ids"].count(image_id) == 16
    assert all(label == IGNORE_INDEX for t, label in zip(first["input_ids"], first["labels"]) if t == image_id)
    learned = tok.decode([t for t, label in zip(first["input_ids"], first["labels"]) if label != IGNORE_INDEX])
    assert learned == "Red.<|im_end|>"  # the assistant turn only
    assert data["images"][1] == []
    packed = pack(data, 512)
    assert len(packed) == 1 and packed[0]["images"] == [str(pictures / "big.jpg"), str(pictures / "gray.png")]
    batch = collate([packed[0]], text_collate=lambda f: {"input_ids": f[0]["input_ids"]},
                    image_processor=processor.image_processor)
    assert tuple(batch["pixel_values"].shape) == (2, 3, 56, 56)
    # a sample cut at max_length never keeps part of a picture: the picture goes, with the text after it
    cut = tokenize_llava(records[2:], tok, max_length=15, image_tokens=16)
    assert cut[0]["images"] == [] and image_id not in cut[0]["input_ids"]
    # a picture that only training decodes whole (a cut-off file's header reads fine) names its record
    whole = (pictures / "big.jpg").read_bytes()
    (pictures / "big.jpg").write_bytes(whole[:len(whole) // 2])
    with pytest.raises(DataError, match=rf"^{path}:1: image {pictures / 'big.jpg'} cannot be read \(image file is "
                                        "truncated"):
        collate([packed[0]], text_collate=lambda f: {}, image_processor=processor.image_processor)


def test_shapes_refuses_counts_that_make_no_data(tmp_path):
    """--per-class 0 wrote an empty pretrain.jsonl."""
    for flag in ("--per-class", "--eval-per-class"):
        made = cli("data", "shapes", "--out", str(tmp_path / "s"), flag, "0")
        assert made.returncode == 2 and f"argument {flag}: 0: " in made.stderr and not (tmp_path / "s").exists()


def test_shapes_set_is_llava_data_with_held_out_pictures(tmp_path):
    out = write_shapes_dataset(tmp_path / "shapes", per_class=2, eval_per_class=1)
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["pretrain"], meta["eval"]) == (24, 12)
    train = {r["images"][0] for r in load_llava_records(out / "finetune.jsonl") if r["images"]}
    held_out = load_llava_records(out / "eval.jsonl")
    assert len(train) == 24 and not train & {r["images"][0] for r in held_out}
    assert held_out[0]["messages"][-1]["content"].startswith("a ")
    with pytest.raises(DataError, match="image folder does not exist"):
        load_llava_records(out / "eval.jsonl", tmp_path / "nowhere")


def test_pictures_open_as_a_viewer_shows_them(tmp_path):
    """Transparent parts on white (a dark logo on a transparent background was all black), 16-bit grayscale scaled
    (a 16-bit PNG was nearly all white), EXIF orientation applied (phone photos came sideways); training and chat
    open pictures the same way."""
    import numpy as np

    from myassistant.chat.vision import read_image
    from myassistant.model.pictures import open_picture

    logo = np.zeros((40, 80, 4), np.uint8)
    logo[10:30, 20:40, 3] = 255  # an opaque black square, the rest transparent black
    Image.fromarray(logo, "RGBA").save(tmp_path / "logo.png")
    Image.fromarray(np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)).save(tmp_path / "deep.png")
    photo = Image.new("RGB", (80, 40), (200, 0, 0))
    exif = photo.getexif()
    exif[0x0112] = 6  # "rotate 90 clockwise to show"
    photo.save(tmp_path / "phone.jpg", exif=exif)

    for opened in (open_picture(tmp_path / "logo.png"), read_image(Image.open(tmp_path / "logo.png"))):
        pixels = np.asarray(opened)
        assert opened.mode == "RGB" and pixels[0, 0].tolist() == [255, 255, 255] and pixels[15, 25].tolist() == [0, 0, 0]
    deep = np.asarray(open_picture(tmp_path / "deep.png"))
    assert deep.min() == 0 and deep.max() == 255 and abs(float(deep.mean()) - 127.5) < 2
    assert open_picture(tmp_path / "phone.jpg").size == (40, 80) and read_image(tmp_path / "phone.jpg").size == (40, 80)


def test_the_picture_report_scores_every_answer_of_a_record():
    """A 2-turn record: the colour question is scored as well as the text-only follow-up after it."""
    from myassistant.trainer.multimodal.report import _turns

    chat = [{"role": "user", "content": "<image>\nWhat colour is the circle?"}, {"role": "assistant", "content": "Red."},
            {"role": "user", "content": "Is it big?"}, {"role": "assistant", "content": "It is small."}]
    record = {"messages": chat, "images": ["a.png"]}
    assert [(shown, len(before), ref) for shown, before, ref in _turns([record])] == [
        (["a.png"], 1, "Red."), (["a.png"], 3, "It is small.")]
    # a picture that comes in a later question is not handed to the earlier answers (the processor refused: 1
    # <image> token and 2 images), and a second picture joins at its own question
    later = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
             {"role": "user", "content": "<image>\nWhat?"}, {"role": "assistant", "content": "A circle."},
             {"role": "user", "content": "<image>\nAnd this?"}, {"role": "assistant", "content": "A square."}]
    assert [(shown, ref) for shown, _, ref in _turns([{"messages": later, "images": ["a.png", "b.png"]}])] == [
        ([], "hello"), (["a.png"], "A circle."), (["a.png", "b.png"], "A square.")]
