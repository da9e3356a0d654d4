"""The decode loop: prompt ids in, generated token ids out, one at a time.

This is the one place that samples tokens while chatting. What runs the model is a `Forward`
(new token ids -> logits of the last one): `dynamic_cache_forward` here (any model), or the static-cache
/ CUDA-graph decoder of `chat.fast` that the engine picks where the model allows it.

Why our own loop around ``model(...)`` with a ``DynamicCache`` rather than ``model.generate`` with a
``TextIteratorStreamer`` in a thread: the loop runs in the consumer's own generator, so when the
consumer stops (the Stop button closes the generator, Ctrl-C, a cancel event) there is simply no
next step; a generate thread would keep computing until a stopping criterion notices. It also keeps
the token ids in our hands (incremental detokenisation) and needs no thread per request. The
sampling uses transformers' own logits processors, so greedy output equals ``model.generate``.
"""
from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.generation.logits_process import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)


log = logging.getLogger(__name__)

# generation_config.json keys that GenerationSettings takes over (the same names)
GENERATION_KEYS = ("temperature", "top_p", "top_k", "repetition_penalty", "max_new_tokens")
Forward = Callable[[torch.Tensor], torch.Tensor]  # new token ids [1, n] -> logits of the last one [1, vocab]
# Prompt ids [1, n] -> the prompt's input embeddings [1, n, hidden]: how an image enters a chat (chat.vision);
# None = the model's embedding table.
Embed = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class GenerationSettings:
    """What a user can set for one reply. These defaults are the project's only ones: the app and
    `assistant chat` start from them, as the model's ``generation_config.json`` changes them."""

    system_prompt: str | None = None  # used when the messages bring no system message
    temperature: float = 0.8  # 0 = greedy (deterministic)
    top_p: float = 0.8  # nucleus sampling; 1 = off
    top_k: int = 0  # 0 = off
    repetition_penalty: float = 1.0  # 1 = off; >1 discourages repeats
    max_new_tokens: int = 512  # upper bound; also capped by the context window
    seed: int | None = None  # fixed seed for reproducible sampling; None = fresh randomness
    identity_guard: bool = False  # system-prompt sentences naming the assistant only on turns asking about it (chat.guard)

    def __post_init__(self) -> None:
        problems = []
        if self.temperature < 0:
            problems.append(f"temperature={self.temperature} must be >= 0 (0 = greedy)")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p={self.top_p} must be in (0, 1]")
        if self.top_k < 0:
            problems.append(f"top_k={self.top_k} must be >= 0 (0 = off)")
        if self.repetition_penalty <= 0:
            problems.append(f"repetition_penalty={self.repetition_penalty} must be > 0 (1 = off)")
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens={self.max_new_tokens} must be >= 1")
        if problems:
            raise ValueError("GenerationSettings: " + "; ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @classmethod
    def from_generation_config(cls, gen: dict) -> GenerationSettings:
        """The defaults a model asks for in its ``generation_config.json`` (transformers' names):
        the keys it sets replace this class's defaults; ``do_sample: false`` means greedy."""
        values = {key: gen[key] for key in GENERATION_KEYS if gen.get(key) is not None}
        if gen.get("do_sample") is False:
            values["temperature"] = 0.0
        try:
            return cls(**values)
        except (TypeError, ValueError) as err:
            log.warning("generation_config.json: %s; using the default sampling settings", err)
            return cls()


def logits_processors(settings: GenerationSettings) -> LogitsProcessorList:
    """The same processors, in the same order, that ``model.generate`` builds for these settings."""
    processors = LogitsProcessorList()
    if settings.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(settings.repetition_penalty))
    if not settings.greedy:
        if settings.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(settings.temperature))
        if settings.top_k:
            processors.append(TopKLogitsWarper(settings.top_k))
        if settings.top_p < 1.0:
            processors.append(TopPLogitsWarper(settings.top_p))
    return processors


def dynamic_cache_forward(model: PreTrainedModel, embed: Embed | None = None) -> Forward:
    """The model's own forward with a growing ``DynamicCache``: works for every causal LM.

    `embed` makes the prompt's input embeddings (the first call's ids); later tokens use the model's table.
    """
    cache = DynamicCache(config=model.config)
    # transformers 5.2x renamed forward's past_key_values to cache; the old name warns, and goes in 5.40
    cache_keyword = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def forward(ids: torch.Tensor) -> torch.Tensor:
        if embed is not None and cache.get_seq_length() == 0:
            inputs = {"inputs_embeds": embed(ids)}
        else:
            inputs = {"input_ids": ids}
        return model(**inputs, **{cache_keyword: cache}, use_cache=True, logits_to_keep=1).logits[:, -1].float()

    return forward


def generate_tokens(
    model: PreTrainedModel,
    prompt_ids: list[int],
    settings: GenerationSettings,
    stop_ids: list[int],
    *,
    lock: threading.Lock | None = None,
    cancel: threading.Event | None = None,
    forward: Forward | None = None,
) -> Iterator[int]:
    """Yield new token ids until a stop id (not yielded), `max_new_tokens`, or `cancel` is set.

    `forward` runs the model (default: `dynamic_cache_forward`). The lock is held for one
    forward step at a time, never across a yield: concurrent streams interleave step by step,
    and a consumer that stops reading blocks nobody.
    """
    device = model.device
    forward = forward or dynamic_cache_forward(model)
    processors = logits_processors(settings)
    generator = None
    if settings.seed is not None:
        generator = torch.Generator(device=device).manual_seed(settings.seed)
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    keep_ids = settings.repetition_penalty != 1.0  # the only processor that reads the ids so far
    step_input = ids
    stop = set(stop_ids)
    for _ in range(settings.max_new_tokens):
        if cancel is not None and cancel.is_set():
            return
        # inference_mode per step, not around the loop: Gradio resumes a generator on any
        # worker thread, and grad-mode state is per thread.
        with lock or nullcontext(), torch.inference_mode():
            scores = processors(ids, forward(step_input))
            if settings.greedy:
                token = scores.argmax(dim=-1)
            else:
                token = torch.multinomial(scores.softmax(dim=-1), num_samples=1, generator=generator)[:, 0]
        token_id = int(token)
        if token_id in stop:
            return
        yield token_id
        step_input = token[:, None]
        if keep_ids:
            ids = torch.cat([ids, step_input], dim=1)
