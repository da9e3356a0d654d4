"""LLaVA data: records with pictures → token ids with the image tokens expanded, and batches with pixels.

A LLaVA file is JSON or JSONL of ``{"id", "image": "relative/path.jpg", "conversations": [{"from": "human",
"value": "<image>\\nWhat is in the picture?"}, {"from": "gpt", "value": "..."}]}`` (XTuner's and LLaVA's own
shape; ``image`` may also be a list). Records without ``image`` are text chats in the same file. Paths are
relative to ``data.image_folder`` (default: the data file's folder).

Every record is checked before anything trains, each problem one ``DataError`` naming file:line and the
path: a missing image, an unreadable one (``check`` decodes every picture, training reads headers), an
``<image>`` placeholder without an image, an image without a placeholder, more placeholders than images.

Token ids come from ``trainer.data.tokenize_records`` (chat template, loss on assistant turns only); each
``<image>`` id then becomes as many ids as the encoder has patches (576 for ViT-L/14-336), never with a
label. ``trainer.data.pack`` joins rows and their ``images`` lists in order, which is the order Llava
puts the pictures' features into the image tokens, so text-only and picture samples pack together.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Callable, Sequence

import datasets
from PIL import Image

from myassistant.model import IMAGE_TOKEN, add_image_token
from myassistant.model.pictures import TOO_LARGE, open_picture
from myassistant.trainer.data import IGNORE_INDEX, DataError, describe, tokenize_records
from myassistant.trainer.data.dataset import warn_duplicates
from myassistant.trainer.data.dataset import token_stats
from myassistant.trainer.data.formats import PARSERS, _Where, detect_format
from myassistant.trainer.data.jsonfile import read_json_records

log = logging.getLogger(__name__)


def has_images(path: str | Path, encoding: str = "utf-8") -> bool:
    """Whether any record of a JSON/JSONL data file names an image (a LLaVA file)."""
    path = Path(path)
    if path.suffix not in (".json", ".jsonl") or not path.is_file():
        return False
    return any(isinstance(obj, dict) and (obj.get("image") or obj.get("images"))
               for _, obj in read_json_records(path, encoding))


def open_image(path: str | Path, where: str = "") -> Image.Image:
    """The picture at ``path`` as RGB (grayscale, palette and RGBA converted), or one DataError line."""
    return _open(path, where, decode=True)


def _open(path: str | Path, where: str, decode: bool) -> Image.Image | None:
    """The picture decoded (``decode``), or only its header read (None); a missing or unreadable file is one
    DataError line naming ``where`` and the path."""
    at = f"{where}: " if where else ""
    try:
        return open_picture(path, decode)
    except FileNotFoundError:
        raise DataError(f"{at}image {path} not found; check data.image_folder (`data check` / `report`: "
                        "--image-folder)") from None
    except Image.DecompressionBombError:
        raise DataError(f"{at}image {path}: {TOO_LARGE}") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(f"{at}image {path} cannot be read ({err}); replace the file or drop the record") from None


def _image_names(where: _Where, obj: dict) -> list[str]:
    key = "image" if "image" in obj else "images"  # LLaVA's key, or LLaMA-Factory's
    value = obj.get(key)
    if value is None:
        return []
    names = value if isinstance(value, list) else [value]
    if not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise where.error(key, "must be a file path (or a list of them) relative to the image folder")
    if url := next((n for n in names if n.lower().startswith(("http://", "https://"))), None):
        raise where.error(key, f"{url} is a web address; pictures are read from files: download them into the "
                               "image folder and name them by their path there")
    return names


def _in_folder(folder: Path, name: str) -> Path:
    """A picture's path; a Windows path (``images\\cat.jpg``) is read with forward slashes where it is not a file."""
    path = folder / name
    if "\\" in name and not path.exists():
        return folder / name.replace("\\", "/")
    return path


def llava_paths(path: str | Path, image_folder: str | Path | None = None) -> tuple[Path, Path]:
    """The LLaVA file and the folder its pictures are relative to, each checked to be there."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    folder = Path(image_folder) if image_folder else path.parent
    if folder.is_file():
        raise DataError(f"{folder}: a file; the image folder (data.image_folder / --image-folder) is the folder the "
                        "records' image paths are relative to")
    if not folder.is_dir():
        raise DataError(f"{folder}: the image folder does not exist (data.image_folder / --image-folder)")
    return path, folder


def load_llava_records(path: str | Path, image_folder: str | Path | None = None, *, fmt: str = "auto",
                       decode: bool = False) -> list[dict]:
    """Read and check a LLaVA file; records are ``{"messages": [...], "images": [absolute paths], "image_where":
    [the record's file:line, once a picture]}``.

    ``decode``: open every picture fully (``assistant data check``); otherwise only its header is read.
    """
    path, folder = llava_paths(path, image_folder)
    records, parse = [], None
    for line, obj in read_json_records(path):
        where = _Where(path, line)
        if parse is None:
            parse = PARSERS[detect_format(path, obj) if fmt == "auto" else fmt]
        record = parse(where, obj)
        names = _image_names(where, obj) if isinstance(obj, dict) else []
        placeholders = sum(m["content"].count(IMAGE_TOKEN) for m in record.get("messages", []))
        if placeholders != len(names):
            problem = (f"has {placeholders} {IMAGE_TOKEN} placeholder(s) but no image" if not names else
                       f"names {len(names)} image(s) but has no {IMAGE_TOKEN} placeholder" if not placeholders else
                       f"has {placeholders} {IMAGE_TOKEN} placeholders for {len(names)} image(s)")
            fix = (f"give the record an \"image\" field, or take the {IMAGE_TOKEN} out" if not names else
                   f"put one {IMAGE_TOKEN} in the question for each image")
            raise DataError(f"{where.prefix}: {problem}; {fix}")
        images = [_in_folder(folder, name) for name in names]
        for image in images:
            _open(image, where.prefix, decode)
        records.append({**record, "images": [str(p) for p in images], "image_where": [where.prefix] * len(images)})
    if not records:
        raise DataError(f"{path}: the file holds no records (an empty JSON array)")
    log.info("%s: %d records, %d with pictures (images from %s)", path, len(records),
             sum(bool(r["images"]) for r in records), folder)
    warn_duplicates(path, records)
    return records


def tokenize_llava(records: Sequence[dict], tokenizer, max_length: int, image_tokens: int) -> datasets.Dataset:
    """``input_ids``, ``labels`` and ``images`` per record, each ``<image>`` expanded to ``image_tokens`` ids.

    A sample longer than ``max_length`` is cut there, never inside a picture: a picture that would not fit
    whole is dropped with the text after it.
    """
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if image_id is None or image_id == tokenizer.unk_token_id:
        raise ValueError(f"the tokenizer has no {IMAGE_TOKEN} token; build it with model.build_llava")
    data = tokenize_records(records, tokenizer, sys.maxsize)
    # image_where: each picture's record (file:line), so that a picture training cannot open names its record
    out: dict[str, list] = {"input_ids": [], "labels": [], "images": [], "image_where": []}
    cut = 0
    for ids, labels, record in zip(data["input_ids"], data["labels"], records):
        new_ids, new_labels = [], []
        for token, label in zip(ids, labels):
            if token == image_id:
                new_ids += [image_id] * image_tokens
                new_labels += [IGNORE_INDEX] * image_tokens
            else:
                new_ids.append(token)
                new_labels.append(label)
        images = list(record["images"])
        wheres = list(record["image_where"])
        if len(new_ids) > max_length:
            cut += 1
            new_ids, new_labels = new_ids[:max_length], new_labels[:max_length]
            whole = new_ids.count(image_id) // image_tokens
            if whole < len(images):  # end the sample before the first picture that does not fit
                start = [i for i, t in enumerate(new_ids) if t == image_id][whole * image_tokens]
                new_ids, new_labels, images, wheres = new_ids[:start], new_labels[:start], images[:whole], wheres[:whole]
        if len(new_ids) > 1:
            out["input_ids"].append(new_ids)
            out["labels"].append(new_labels)
            out["images"].append(images)
            out["image_where"].append(wheres)
    if cut:
        log.warning("%d of %d samples are longer than max_length=%d tokens (with %d tokens a picture) and were cut",
                    cut, len(records), max_length, image_tokens)
    return datasets.Dataset.from_dict(out, features=datasets.Features({
        "input_ids": datasets.Sequence(datasets.Value("int32")), "labels": datasets.Sequence(datasets.Value("int32")),
        "images": datasets.Sequence(datasets.Value("string")),
        "image_where": datasets.Sequence(datasets.Value("string"))}))


def collate(features: Sequence[dict], *, text_collate: Callable, image_processor) -> dict:
    """The text collator's batch plus ``pixel_values`` of the batch's pictures, in token order."""
    batch = text_collate(features)
    paths = [(p, where) for f in features for p, where in zip(f["images"], f["image_where"])]
    if paths:
        pictures = [open_image(p, where) for p, where in paths]
        batch["pixel_values"] = image_processor(images=pictures, return_tensors="pt")["pixel_values"]
    return batch


def describe_llava(records: Sequence[dict], tokenizer=None, max_length: int = 2048,
                   image_tokens: int | None = None) -> dict:
    """``trainer.data.describe``'s counts plus the pictures'. Token figures need ``image_tokens`` (what a picture
    costs with the run's vision encoder, ``model.picture_tokens``): without it they would leave out most of a
    sample (576 tokens a picture for CLIP ViT-L/14-336), so they are not given."""
    with_images = [r for r in records if r["images"]]
    stats = {**describe(records, None, max_length), "with_images": len(with_images),
             "text_only": len(records) - len(with_images), "images": sum(len(r["images"]) for r in records),
             "distinct_images": len({p for r in records for p in r["images"]})}
    if tokenizer is not None and image_tokens is None:
        return {**stats, "tokens": "not counted: give the vision encoder (--vision-encoder, the run's vision.encoder); "
                                   "each picture is as many tokens as it has patches"}
    if tokenizer is not None:
        add_image_token(tokenizer)  # as model.build_llava gives the run's tokenizer
        data = tokenize_llava(records, tokenizer, sys.maxsize, image_tokens)
        stats.update(tokens_per_picture=image_tokens, **token_stats(data, max_length))
    return stats
