"""A synthetic picture set: coloured shapes drawn with PIL, answers like "a red circle".

What the multimodal proof trains and measures on, offline: every picture is one shape (circle, square,
triangle) in one colour (red, green, blue, yellow) with a jittered size, place and background shade, so
held-out pictures are new drawings of known classes. The folder holds LLaVA-format files:

    pretrain.jsonl   stage 1: short captions ("<image>\\n" -> "a red circle")
    finetune.jsonl   stage 2: questions about the picture, plus a few text-only chats (mixed files pack)
    eval.jsonl       held-out pictures, never trained on, with the reference answer
    images/          the PNG files        meta.json   the counts and the classes
"""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

from PIL import Image, ImageDraw

from myassistant.trainer.data.formats import DataError

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 70), "blue": (40, 80, 220), "yellow": (235, 205, 40)}
SHAPES = ("circle", "square", "triangle")
QUESTIONS = ["What is in the picture?", "Describe the picture.", "What shape is shown, and in which colour?",
             "Which colour and shape do you see?"]
TEXT_CHATS = [("Hello!", "Hello! Show me a picture and I will tell you what it shows."),
              ("What can you do?", "I can name the colour and the shape in a picture.")]
FILES = {"pretrain": "pretrain.jsonl", "finetune": "finetune.jsonl", "eval": "eval.jsonl", "meta": "meta.json"}


def draw_shape(colour: str, shape: str, rng: random.Random, size: int = 64) -> Image.Image:
    """One picture: ``shape`` in ``colour`` on a light grey background, size and place jittered."""
    shade = rng.randint(200, 250)
    img = Image.new("RGB", (size, size), (shade, shade, shade))
    pen = ImageDraw.Draw(img)
    r = rng.uniform(0.32, 0.37) * size  # jittered, not so much that a small square fills like a big circle
    cx, cy = (size / 2 + rng.uniform(-0.04, 0.04) * size for _ in range(2))
    fill = tuple(min(255, max(0, c + rng.randint(-15, 15))) for c in COLOURS[colour])
    if shape == "circle":
        pen.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        pen.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        pen.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return img


def answer(colour: str, shape: str) -> str:
    return f"a {colour} {shape}"


def _record(rid: str, image: str, question: str, reply: str) -> dict:
    return {"id": rid, "image": image, "conversations": [{"from": "human", "value": f"<image>\n{question}"},
                                                         {"from": "gpt", "value": reply}]}


def _is_picture_set(folder: Path) -> bool:
    try:
        return json.loads((folder / FILES["meta"]).read_text(encoding="utf-8")).get("kind") == "pictures"
    except (OSError, ValueError, AttributeError):
        return False


def write_shapes_dataset(out_dir: str | Path, *, per_class: int = 24, eval_per_class: int = 4, seed: int = 0,
                         size: int = 64) -> Path:
    """Write the picture set (``per_class`` training and ``eval_per_class`` held-out pictures per class); an earlier
    set in `out_dir` is replaced, any other non-empty folder refused."""
    out_dir = Path(out_dir).resolve()
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not _is_picture_set(out_dir):
        raise DataError(f"{out_dir}: is not empty and holds no picture set (meta.json); choose a new --out folder")
    rng = random.Random(seed)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "images").mkdir(parents=True)
    rows: dict[str, list[dict]] = {"pretrain": [], "finetune": [], "eval": []}
    for colour in COLOURS:
        for shape in SHAPES:
            for i in range(per_class + eval_per_class):
                name = f"images/{colour}_{shape}_{i}.png"
                draw_shape(colour, shape, rng, size).save(tmp / name)
                rid = f"{colour}_{shape}_{i}"
                if i >= per_class:
                    rows["eval"].append(_record(rid, name, rng.choice(QUESTIONS), answer(colour, shape)))
                    continue
                rows["pretrain"].append(_record(rid, name, "", answer(colour, shape)))
                rows["finetune"].append(_record(rid, name, rng.choice(QUESTIONS), answer(colour, shape) + "."))
    for question, reply in TEXT_CHATS:
        rows["finetune"].append({"id": f"text_{len(rows['finetune'])}", "conversations": [
            {"from": "human", "value": question}, {"from": "gpt", "value": reply}]})
    for key in ("pretrain", "finetune"):
        rng.shuffle(rows[key])
    for key, records in rows.items():
        (tmp / FILES[key]).write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    meta = {"kind": "pictures", "colours": list(COLOURS), "shapes": list(SHAPES), "size": size, "seed": seed,
            **{key: len(records) for key, records in rows.items()}}
    (tmp / FILES["meta"]).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir
