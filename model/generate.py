"""Batched greedy replies for evaluation (eval prompts during training, the fine-tune report).

Serving streams one conversation at a time through ``chat.engine``; evaluation wants many short
answers at once, so it left-pads a batch and calls ``generate`` once per batch.
"""
from __future__ import annotations

import torch

from .tokenizer import stop_token_ids


@torch.no_grad()
def generate_replies(model, tokenizer, conversations: list[list[dict]], *, max_new_tokens: int = 64,
                     batch_size: int = 16, processor=None, images: list[list] | None = None) -> list[str]:
    """Greedy assistant replies, one per conversation (OpenAI-style message lists).

    Multimodal (a Llava model): ``processor`` and, per conversation, its pictures (PIL images) in the
    order of the ``<image>`` placeholders in its messages.
    """
    replies: list[str] = []
    stops = stop_token_ids(tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    for start in range(0, len(conversations), batch_size):
        batch = conversations[start : start + batch_size]
        prompts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in batch]
        if processor is None:
            encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
            width = max(map(len, encoded))
            inputs = {"input_ids": torch.tensor([[pad_id] * (width - len(e)) + e for e in encoded]),
                      "attention_mask": torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded])}
        else:
            pictures = [p for row in (images or [])[start : start + batch_size] for p in row]
            inputs = dict(processor(text=prompts, images=pictures or None, padding=True, padding_side="left",
                                    add_special_tokens=False, return_tensors="pt"))
            width = inputs["input_ids"].shape[1]
        inputs = {k: v.to(param.device, param.dtype if v.is_floating_point() else v.dtype) for k, v in inputs.items()}
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops,
                             pad_token_id=pad_id)
        for row in out[:, width:].tolist():
            cut = next((i for i, t in enumerate(row) if t in stops), len(row))
            replies.append(tokenizer.decode(row[:cut], skip_special_tokens=True).strip())
    if was_training:
        model.train()
    return replies
