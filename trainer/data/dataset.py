"""Records → token ids with labels on assistant turns only, packing, and the batch collator.

Data flows: ``load_records`` (any supported file, validated, see ``trainer.formats``) →
``tokenize_records`` (chat template; labels -100 outside assistant turns) → optional ``pack`` (several
samples per row, positions restarting per sample) → ``collate`` (the Trainer's data collator).
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from statistics import mean
from typing import Sequence

import datasets
import torch

from .formats import FORMATS, DataError, read_records

__all__ = ["DataError", "FORMATS", "IGNORE_INDEX", "load_records", "tokenize_records", "pack", "collate",
           "count_duplicates", "describe", "render_conversation"]

log = logging.getLogger(__name__)

IGNORE_INDEX = -100  # the label value torch's cross-entropy (and transformers' loss) skips
DUPLICATE_SHARE = 0.5  # warn when more than this share of a file's records are copies


def warn_duplicates(path: str | Path, records: Sequence[dict]) -> None:
    """A warning when most of a file's records are copies of others (the one pair x 10,000 that self-cognition
    data often is)."""
    duplicates = count_duplicates(records)
    if duplicates > DUPLICATE_SHARE * len(records):
        log.warning("%s: %d of %d records are copies of others (%d distinct); the model will over-fit them "
                    "(deduplicate, or mix in other data)", path, duplicates, len(records), len(records) - duplicates)


def load_records(path: str | Path, fmt: str = "auto", encoding: str = "utf-8") -> list[dict]:
    """Read and validate a data file; each record is ``{"messages": [...]}`` or ``{"text": ...}``."""
    records, used = read_records(path, fmt, encoding)
    log.info("%s: %d records (format %s)", path, len(records), used)
    warn_duplicates(path, records)
    opening = sum(1 for r in records if r.get("messages") and r["messages"][0]["role"] == "assistant")
    if opening:
        log.warning("%s: %d of %d records open with an assistant turn; no question asks for it, so it is context, "
                    "not learned", path, opening, len(records))
    unanswered = sum(1 for r in records if r.get("messages") and r["messages"][-1]["role"] == "user")
    if unanswered:  # only assistant turns carry labels
        log.warning("%s: %d of %d records end with a user message that no reply follows; that last message "
                    "teaches nothing (only assistant turns are learned)", path, unanswered, len(records))
    return records


WHERE_KEYS = ("image_where",)  # where a record was read (file:line), which its copies differ in


def count_duplicates(records: Sequence[dict]) -> int:
    """How many records are a copy of an earlier one (what they say, not where they were read)."""
    unique = {json.dumps({k: v for k, v in r.items() if k not in WHERE_KEYS}, sort_keys=True, ensure_ascii=False)
              for r in records}
    return len(records) - len(unique)


def render_conversation(messages: list[dict], tokenizer) -> tuple[str, list[tuple[int, int]]]:
    """The chat-template text of a conversation and the character spans the model must learn to write.

    Each span runs from the end of the prompt that asks for an assistant turn (the template rendered with
    ``add_generation_prompt``) to the end of that turn including its end-of-turn token (``<|im_end|>``),
    so the model learns to stop. Rendering prefix by prefix works for any template whose output grows
    by appending; templates without ``{% generation %}`` markers (internlm2_chat) need it.
    """
    def render(msgs: list[dict], prompt: bool = False) -> str:
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=prompt)

    text = render(messages)
    spans = []
    for i, message in enumerate(messages):
        # weight 0: context, not taught; so is an assistant turn that opens the conversation (no prompt asks for it)
        if message["role"] != "assistant" or message.get("weight", 1) == 0 or i == 0:
            continue
        before, through = render(messages[:i], prompt=True), render(messages[: i + 1])
        if not (through.startswith(before) and text.startswith(through)):
            raise ValueError("the tokenizer's chat template does not render conversations prefix by prefix; "
                             "assistant turns cannot be located for the loss mask")
        # The whitespace after the end-of-turn token is the template's, not the model's to write.
        spans.append((len(before), len(through.rstrip())))
    return text, spans


def _labels(ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """Keep the ids of tokens that overlap an assistant span; -100 elsewhere."""
    labels = [IGNORE_INDEX] * len(ids)
    for i, (start, end) in enumerate(offsets):
        if any(end > s and start < e or start == end and s <= start < e for s, e in spans):
            labels[i] = ids[i]
    return labels


def tokenize_records(records: Sequence[dict], tokenizer, max_length: int) -> datasets.Dataset:
    """Token ids and labels for each record (``input_ids``, ``labels``).

    Conversations go through the tokenizer's chat template and train on every assistant turn (all of
    them, multi-turn) including the end-of-turn token; raw text trains on every token, with bos and eos
    added. Samples longer than ``max_length`` are cut to it and counted in a warning, never dropped.
    Pre-training corpora do not come here: ``trainer.data.blocks`` keeps every token of raw text.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("tokenize_records needs a fast tokenizer (character offsets); load it with model.load_tokenizer")
    texts, spans = [], []
    for record in records:
        if "text" in record:
            texts.append(record["text"])
            spans.append(None)
        else:
            text, turn_spans = render_conversation(record["messages"], tokenizer)
            texts.append(text)
            spans.append(turn_spans)
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)

    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    all_ids, all_labels, lengths, untrained = [], [], [], []
    for ids, offsets, turn_spans in zip(encoded["input_ids"], encoded["offset_mapping"], spans):
        if turn_spans is None:
            ids = bos + ids + eos
            labels = list(ids)
        else:
            labels = _labels(ids, offsets, turn_spans)
        lengths.append(len(ids))
        ids, labels = ids[:max_length], labels[:max_length]
        if all(label == IGNORE_INDEX for label in labels[1:]):
            untrained.append(len(lengths))
        all_ids.append(ids)
        all_labels.append(labels)

    long = sum(n > max_length for n in lengths)
    if long:
        log.warning("%d of %d samples are longer than max_length=%d tokens and were truncated (longest %d); "
                    "raise max_length to keep them whole", long, len(lengths), max_length, max(lengths))
    if untrained:
        log.warning("%d of %d samples have no token to learn after truncation (records %s, counted from 1 in the "
                    "file); they add nothing to the loss: raise max_length or shorten their prompts", len(untrained),
                    len(lengths), numbers(untrained))
    return datasets.Dataset.from_dict({"input_ids": all_ids, "labels": all_labels})


def numbers(found: list[int], shown: int = 5) -> str:
    """'2, 7, 9' or '2, 7, 9, 11, 12 and 40 more': which records (1-based) a warning is about."""
    return ", ".join(map(str, found[:shown])) + (f" and {len(found) - shown} more" if len(found) > shown else "")


def pack(dataset: datasets.Dataset, max_length: int) -> datasets.Dataset:
    """Concatenate consecutive samples into rows of at most ``max_length`` tokens (``+ position_ids``).

    Positions restart at 0 for each sample. That is how transformers tells the samples of a row apart
    when ``attention_mask`` is None (``masking_utils.find_packed_sequence_indices`` for sdpa/eager: a
    block-diagonal causal mask; flash-attention varlen for a batch of one row, see ``collate(flatten=True)``),
    so no token attends across samples. The label of each sample's first token is -100: it would
    otherwise be predicted from the previous sample's last token. Detection is skipped when the model
    runs with a KV cache: train with ``model.config.use_cache = False`` (the Trainer sets it from
    ``TrainingArguments.use_cache``, False by default).
    """
    # other list columns (a sample's images) are joined per row too, in the samples' order
    extra = {c: dataset[c] for c in dataset.column_names if c not in ("input_ids", "labels", "position_ids")}
    rows: dict[str, list[list]] = {key: [] for key in ["input_ids", "labels", "position_ids", *extra]}
    row: dict[str, list] = {key: [] for key in rows}
    samples = 0
    for i, (ids, labels) in enumerate(zip(dataset["input_ids"], dataset["labels"])):
        if len(ids) > max_length:
            raise ValueError(f"a sample of {len(ids)} tokens does not fit max_length={max_length}; "
                             "tokenize with the same max_length before packing")
        if row["input_ids"] and len(row["input_ids"]) + len(ids) > max_length:
            for key in rows:
                rows[key].append(row[key])
            row = {key: [] for key in rows}
        row["input_ids"] += ids
        row["labels"] += [IGNORE_INDEX] + list(labels[1:])
        row["position_ids"] += range(len(ids))
        for key, column in extra.items():
            row[key] += column[i]
        samples += 1
    if row["input_ids"]:
        for key in rows:
            rows[key].append(row[key])
    tokens = sum(map(len, rows["input_ids"]))
    log.info("packed %d samples into %d rows of <= %d tokens (%.0f%% filled)", samples, len(rows["input_ids"]),
             max_length, 100 * tokens / max(1, len(rows["input_ids"]) * max_length))
    return datasets.Dataset.from_dict(rows)


def collate(features: Sequence[dict], *, pad_token_id: int = 0, flatten: bool = False,
            pad_to_multiple_of: int | None = None) -> dict[str, torch.Tensor]:
    """Batch samples for the model.

    Unpacked samples are right-padded with an ``attention_mask``. Packed samples (with ``position_ids``)
    get no attention mask: padding becomes one more segment whose positions restart at 0, and its labels
    are -100. ``flatten=True`` joins all samples into a single row (positions restarting per sample), the
    form flash-attention's varlen path reads packed sequences from.
    """
    def positions(f: dict) -> list[int]:
        return list(f["position_ids"]) if "position_ids" in f else list(range(len(f["input_ids"])))

    if flatten:
        ids = [t for f in features for t in f["input_ids"]]
        labels = [t for f in features for t in [IGNORE_INDEX] + list(f["labels"][1:])]
        pos = [p for f in features for p in positions(f)]
        return {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]), "position_ids": torch.tensor([pos])}

    width = max(len(f["input_ids"]) for f in features)
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    packed = "position_ids" in features[0]
    batch: dict[str, list[list[int]]] = {"input_ids": [], "labels": [], ("position_ids" if packed else "attention_mask"): []}
    for f in features:
        n, pad = len(f["input_ids"]), width - len(f["input_ids"])
        batch["input_ids"].append(list(f["input_ids"]) + [pad_token_id] * pad)
        batch["labels"].append(list(f["labels"]) + [IGNORE_INDEX] * pad)
        if packed:
            batch["position_ids"].append(positions(f) + list(range(pad)))
        else:
            batch["attention_mask"].append([1] * n + [0] * pad)
    return {key: torch.tensor(value) for key, value in batch.items()}


def describe(records: Sequence[dict], tokenizer=None, max_length: int = 2048) -> dict:
    """Counts for ``assistant data check``: records, turns, duplicates and, with a tokenizer, token stats."""
    conversations = [r["messages"] for r in records if "messages" in r]
    stats = {
        "records": len(records),
        "conversations": len(conversations),
        "texts": len(records) - len(conversations),
        "assistant_turns": sum(m["role"] == "assistant" and m.get("weight", 1) != 0 and i > 0  # (as render_conversation:
                               for c in conversations for i, m in enumerate(c)),  # an opening one is context)
        "with_system_prompt": sum(c[0]["role"] == "system" for c in conversations),
        "duplicates": count_duplicates(records),
    }
    if tokenizer is not None:
        stats.update(token_stats(tokenize_records(records, tokenizer, sys.maxsize), max_length))  # whole samples
    return stats


def token_stats(data: datasets.Dataset, max_length: int) -> dict:
    """``describe``'s token figures of whole tokenised samples (``input_ids`` / ``labels``) against ``max_length``:
    how long they are, how many training would cut, and which keep no answer token within it."""
    lengths = [len(ids) for ids in data["input_ids"]]
    trained = sum(label != IGNORE_INDEX for labels in data["labels"] for label in labels[:max_length])
    lost = [i + 1 for i, labels in enumerate(data["labels"])
            if len(labels) > max_length and all(label == IGNORE_INDEX for label in labels[1:max_length])]
    if lost:
        log.warning("%d of %d records keep no answer token within max_length=%d (records %s, counted from 1 in "
                    "the file): training learns nothing from them; raise max_length or shorten their prompts",
                    len(lost), len(lengths), max_length, numbers(lost))
    return dict(tokens=sum(lengths), tokens_min=min(lengths), tokens_mean=round(mean(lengths), 1),
                tokens_max=max(lengths), max_length=max_length,
                longer_than_max_length=sum(n > max_length for n in lengths), trained_tokens=trained,
                no_answer_within_max_length=len(lost))
