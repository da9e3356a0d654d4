"""The chat engine shared by the Gradio app and the chat CLI.

``ChatEngine.from_pretrained(folder)`` loads a merged model (or base + LoRA adapter) through
``model/``; ``engine.stream(messages, settings)`` yields the reply as text deltas. A multimodal
(Llava) folder is served the same way, its images entering in the prefill (`chat.vision`). `ChatEngine.tokens`
picks the fastest decoder the model allows: `chat.batch` (all concurrent chats share each step over
one static cache; CUDA-graphed on a GPU); for a request longer than the batch cache's rows,
`chat.decode.generate_tokens` over a static cache of its own (`chat.fast`); for a model of another
layout, over the model's own forward. On the CPU, linear layers get int8 weights (`chat.quant`) unless
``quantize="none"``; on a GPU ``quantize="int8" | "int4"`` makes the decoder layers weight-only int8 / int4
(`chat.weight_only`: loaded a layer at a time, no bf16 copy kept). How to serve (device, dtype, int8, decoder,
rows) is a `chat.config.ServeConfig`;
what to answer with by default (`engine.defaults`) comes from the model folder's ``generation_config.json``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from myassistant.chat import weight_only
from myassistant.chat.batch import BatchDecoder
from myassistant.chat.config import ServeConfig
from myassistant.chat.decode import Embed, GenerationSettings, dynamic_cache_forward, generate_tokens
from myassistant.chat.errors import EngineError
from myassistant.chat.fast import KVCache, StaticCacheDecoder, fast_decode_problem
from myassistant.chat.guard import guard_identity
from myassistant.chat.history import Message, build_prompt, normalize_messages, utf8_text
from myassistant.chat.prefill import BUCKETS as PREFILL_BUCKETS
from myassistant.chat.quant import quantize_int8, resolve_quantize
from myassistant.chat.stream import IncrementalDetokenizer
from myassistant.chat.vision import ImageEncoder, find_images
from myassistant.model import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, MERGE_INFO, PROJECTOR_WEIGHTS, CheckpointError,
                               build_tiny_checkpoint, file_sha256, is_llava, load_adapter, load_llava, load_model,
                               load_tokenizer, stop_token_ids)

log = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
          "fp32": torch.float32, "float32": torch.float32}


@dataclasses.dataclass
class GenerationStats:
    """Filled in while a reply streams (for the CLI's tokens/s line and the benchmark)."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    dropped_messages: int = 0  # history messages trimmed to fit the context window
    message_cut: bool = False  # the new message itself was cut from its start to fit
    first_token_s: float | None = None  # from the request (templating included) to the first token
    elapsed_s: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        decode_s = self.elapsed_s - (self.first_token_s or 0.0)
        return (self.new_tokens - 1) / decode_s if self.new_tokens > 1 and decode_s > 0 else 0.0


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise EngineError(f"device={device!r} is not a torch device; use 'auto', 'cpu' or 'cuda[:N]'") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise EngineError(f"device {device!r} asked for, but no CUDA GPU is visible; use cpu or auto "
                          "(assistant chat --device cpu)")
    return resolved


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """GPU: bf16 where supported, else fp16. CPU: fp32 (fp16 matmuls are slow or missing on CPUs;
    bf16 halves the memory traffic of a bandwidth-bound decode, so it is worth asking for; int8
    linear layers, the CPU default, halve it again)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in DTYPES:
        raise EngineError(f"dtype={dtype!r} is not supported; use one of auto, {', '.join(DTYPES)}")
    if device.type == "cpu" and DTYPES[dtype] is torch.float16:
        log.warning("float16 on the CPU is slow or unsupported; bfloat16 or float32 are the usual choices")
    return DTYPES[dtype]


def available_memory(device: torch.device) -> float:
    """Bytes free for a cache on `device`: free GPU memory, or MemAvailable of the host's RAM."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as fh:
            fields = dict(line.split(":", 1) for line in fh)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return float("inf")


def batch_cache_plan(model: Any, max_context: int, rows: int = 8) -> tuple[int, int]:
    """(rows, tokens per row) of the batched decoder's cache: `rows` x 8192 on a GPU where it takes at
    most a third of the free memory, else fewer tokens (down to 2048), then fewer rows. On a CPU
    `rows` x 2048 within a quarter of the available RAM (the cache is fp32 there: 3.2 GB for
    InternLM2-1.8B at 8 rows); a longer chat decodes alone over a cache of its own."""
    cpu = model.device.type == "cpu"
    length = min(max_context, 2048 if cpu else 8192)
    budget = available_memory(model.device) / (4 if cpu else 3)
    per_token = KVCache.bytes_per_token(model.config, model.model.embed_tokens.weight.dtype)
    while rows * length * per_token > budget and (length > 2048 or rows > 1):
        if length > 2048:
            length //= 2
        else:
            rows //= 2
    return max(rows, 1), length


def read_generation_config(folder: Path) -> dict:
    """The folder's ``generation_config.json`` ({} when absent or unreadable: the defaults serve)."""
    path = folder / "generation_config.json"
    try:
        gen = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError) as err:
        log.warning("%s: not read (%s); default sampling settings", path, err)
        return {}
    return gen if isinstance(gen, dict) else {}


def ensure_demo_model(out_dir: str | Path) -> Path:
    """The project's embedded demo model (a tiny random InternLM2-format checkpoint), built if absent."""
    out_dir = Path(out_dir)
    if not (out_dir / "config.json").is_file():
        log.info("building the demo model in %s", out_dir)
        build_tiny_checkpoint(out_dir)
    return out_dir


def _merged_in(folder: Path, adapter: Path) -> bool:
    """Whether `folder` is a merge of `adapter` (the adapter weights' sha256 that merge.json records)."""
    merged = folder / MERGE_INFO
    weights = adapter / ADAPTER_WEIGHTS
    if not merged.is_file() or not weights.is_file():
        return False
    try:
        recorded = json.loads(merged.read_text(encoding="utf-8")).get("weights_sha256")
    except (OSError, ValueError, AttributeError):
        return False
    return recorded == file_sha256(weights)


class ChatEngine:
    """A loaded model + tokenizer that streams chat replies; safe to share between threads."""

    def __init__(self, model: Any, tokenizer: Any, *, name: str = "model", max_context: int | None = None,
                 config: ServeConfig | None = None, defaults: GenerationSettings | None = None,
                 batched: bool | None = None, cuda_graphs: bool = True, vision: ImageEncoder | None = None) -> None:
        """model: the causal LM that decodes (for a multimodal model, `vision.text_model`);
        config: the decoder switches (`fast_decode`, `compile`, `decode_rows`) are read from it;
        defaults: the settings a request starts from; batched: decode concurrent chats together
        (`chat.batch`; default on: a decode step reads every weight once whether it advances one chat
        or eight, on a CPU as on a GPU); vision: the image side of a multimodal model (None = text only)."""
        config = config or ServeConfig()
        self.model = model
        self.vision = vision
        self.tokenizer = tokenizer
        self.name = name
        self.defaults = defaults or GenerationSettings()
        self.stop_ids = stop_token_ids(tokenizer)
        self.max_context = max_context or getattr(model.config, "max_position_embeddings", None) or 2048
        # One forward at a time on the shared model; taken per decode step (see chat.decode).
        self.lock = threading.Lock()
        # The fast decoder (chat.fast) where the model allows it, else model(...) per step.
        self.decoder: StaticCacheDecoder | None = None
        self.batch: BatchDecoder | None = None
        problem = fast_decode_problem(model) if config.fast_decode else "switched off (fast_decode=False)"
        if problem is None:
            self.decoder = StaticCacheDecoder(model, self.max_context, compile=config.compile)
            if batched is not False:
                rows, length = batch_cache_plan(model, self.max_context, config.decode_rows)
                self.batch = BatchDecoder(self.decoder, rows, length, cuda_graphs=cuda_graphs)
        else:
            log.info("static-cache decoder off (%s): decoding with the model's own forward", problem)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, adapter: str | Path | None = None, config: ServeConfig | None = None, **changes: Any,
    ) -> ChatEngine:
        """Load a merged model folder, or a base model folder plus a peft LoRA adapter folder.

        `changes` replace fields of `config` (``device="cpu"``, ``quantize="none"``, ...).
        """
        try:
            config = dataclasses.replace(config or ServeConfig(), **changes)
        except TypeError as err:  # an unknown field
            raise EngineError(f"serving config: {err}") from None
        path = Path(path)
        if not (path / "config.json").is_file():
            if (path / ADAPTER_CONFIG).is_file():  # a LoRA run folder
                over_base = ("" if (path / PROJECTOR_WEIGHTS).is_file()  # a LLaVA run: its base reads no pictures
                             else f", or chat over its base with `assistant chat BASE --adapter {path}`")
                raise EngineError(f"{path}: a training run's adapter, not a model; merge it first (`assistant merge "
                                  f"{path} --out MERGED`) and serve MERGED{over_base}")
            if (path / PROJECTOR_WEIGHTS).is_file():  # LLaVA stage 1: no language model of its own
                raise EngineError(f"{path}: a LLaVA stage-1 run (the projector alone), not a model; stage 2 trains from "
                                  f"it (vision.projector={path}), and its merged folder chats about pictures")
            if path.is_file() and path.suffix == ".gguf":
                raise EngineError(f"{path}: a GGUF file, for llama.cpp / Ollama / LM Studio (README, CPU export); "
                                  "chat here takes the model folder it was exported from")
            if path.is_file():
                raise EngineError(f"{path}: a file; give the model's folder (the one with config.json)")
            if not path.is_dir():
                raise EngineError(f"{path}: no such model folder")
            raise EngineError(f"{path}: no config.json here; "
                              "pass a model folder (e.g. the output of `assistant merge`)")
        if adapter is not None and not (Path(adapter) / ADAPTER_CONFIG).is_file():
            raise EngineError(f"{adapter}: no {ADAPTER_CONFIG} here; pass the adapter folder of a training run")
        if adapter is not None and _merged_in(path, Path(adapter)):
            raise EngineError(f"{path}: {adapter}'s adapter is merged into it already ({MERGE_INFO}): chat with "
                              f"{path} alone (its adapter would be added twice), or give its base with --adapter")
        torch_device = resolve_device(config.device)
        quantize = resolve_quantize(config.quantize, torch_device, config.int8_kernel)
        torch_dtype = resolve_dtype(config.dtype, torch_device)
        # Weights about to be quantised are read in bf16: half the peak memory of fp32.
        load_dtype = torch.bfloat16 if quantize != "none" and torch_dtype == torch.float32 else torch_dtype
        # GPU int8 / int4: read into host memory, then moved to the GPU a layer at a time, quantised as it goes
        gpu_bits = weight_only.BITS[quantize] if torch_device.type == "cuda" and quantize != "none" else None
        load_device = torch.device("cpu") if gpu_bits else torch_device
        try:
            tokenizer = load_tokenizer(path)
            processor = None
            if is_llava(path):
                model, processor = load_llava(path, dtype=load_dtype, device=load_device)
            else:
                model = load_model(path, dtype=load_dtype, device=load_device)
            if adapter is not None:
                # Merged once at load: decoding then costs the same as a merged model.
                model = load_adapter(model, adapter).merge_and_unload()
            vision = None if processor is None else ImageEncoder(model, processor)
            text_model = model if vision is None else vision.text_model
            if gpu_bits:
                weight_only.to_device(model, torch_device, gpu_bits, text_model.model.layers)
            elif quantize != "none":
                # the vision tower stays as loaded
                quantize_int8(text_model, config.int8_kernel,
                              two_pass=quantize == "int8_two_pass", bits=4 if quantize == "int4" else 8)
                model.to(torch_dtype)  # what is left (embeddings, norms) computes in torch_dtype
        except CheckpointError as err:
            raise EngineError(str(err)) from err
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            what = f"{path} + adapter {adapter}" if adapter else str(path)
            raise EngineError(f"cannot load the model from {what}: {err}") from err
        model.eval()
        log.info("loaded %s on %s in %s%s", path.name, torch_device, str(torch_dtype).removeprefix("torch."),
                 f", {quantize} linear weights" if quantize != "none" else "")
        defaults = GenerationSettings.from_generation_config(read_generation_config(path))
        return cls(model if vision is None else vision.text_model, tokenizer, name=path.name, config=config,
                   defaults=defaults, vision=vision)

    def prompt(self, messages: list[Message], settings: GenerationSettings,
               stats: GenerationStats | None = None) -> tuple[list[int], int, int]:
        """(prompt ids, max new tokens, messages dropped) for the messages within the context window.

        At least half the window is kept for the prompt, so a large `max_new_tokens` cannot
        squeeze the conversation out; the reply is then capped by what is left.
        """
        if self.vision is not None:
            messages = self.vision.placeholders(messages)
        messages = normalize_messages(messages, settings.system_prompt)
        if settings.identity_guard:
            messages = guard_identity(messages)
        budget = self._prompt_budget(settings)
        ids, dropped = build_prompt(self.tokenizer, messages, budget)
        if stats is not None:
            turns = len(messages) - (bool(messages) and messages[0]["role"] == "system")
            stats.dropped_messages, stats.message_cut = dropped, dropped > 0 and dropped >= turns
        return ids, min(settings.max_new_tokens, self.max_context - len(ids)), dropped

    def _prompt_budget(self, settings: GenerationSettings) -> int:
        """Most prompt tokens kept: what the reply leaves of the context, and at least half of it."""
        return max(self.max_context - settings.max_new_tokens, self.max_context // 2)

    def tokens(
        self, prompt_ids: list[int], settings: GenerationSettings, cancel: threading.Event | None = None,
        embed: Embed | None = None,
    ) -> Iterator[int]:
        """Generated token ids for ready prompt ids (`embed`: their input embeddings, for images).

        A request longer than the batched cache's rows decodes alone over a static cache sized to it.
        """
        if self.batch is not None and self.batch.fits(len(prompt_ids) + settings.max_new_tokens + 1):
            return self.batch.generate(prompt_ids, settings, self.stop_ids, cancel, embed)
        forward = None if embed is None else dynamic_cache_forward(self.model, embed)
        if self.decoder is not None:
            forward = self.decoder.eager(self.decoder.new_cache(len(prompt_ids) + settings.max_new_tokens), embed)
        return generate_tokens(self.model, prompt_ids, settings, self.stop_ids, lock=self.lock, cancel=cancel,
                               forward=forward)

    def warm_up(self) -> None:
        """Compile and capture the decode steps a first chat and two concurrent ones need (seconds to
        a minute on a GPU; nothing to do elsewhere), so the first user does not wait for it."""
        if self.model.device.type != "cuda":
            return
        if self.vision is not None:
            self.vision.warm_up()
        if self.batch is None:
            return
        settings = GenerationSettings(temperature=0, max_new_tokens=4)
        ids = self.tokenizer.encode("hello, how are you today?", add_special_tokens=False) or [0, 0]
        list(self.tokens(ids, settings))
        if not self.defaults.greedy:  # the graphs of the app's own sampling settings (chat.batch: a mode each)
            list(self.tokens(ids, dataclasses.replace(self.defaults, max_new_tokens=4, seed=0)))
        for size in PREFILL_BUCKETS:  # the graphed prefills of prompts up to 1024 tokens (chat.prefill)
            if 64 < size <= min(1024, self.batch.max_len // 2):
                list(self.tokens((ids * size)[:size - 8], dataclasses.replace(settings, max_new_tokens=1)))
        first, second = self.tokens(ids, settings), self.tokens(ids, settings)
        next(first, None)
        list(second)
        list(first)

    def stream(
        self,
        messages: list[Message],
        settings: GenerationSettings | None = None,
        *,
        cancel: threading.Event | None = None,
        stats: GenerationStats | None = None,
        **overrides: Any,
    ) -> Iterator[str]:
        """Yield the assistant's reply to `messages` as text deltas.

        Images are content parts of the messages (`chat.vision`); a text-only model refuses them.
        Stops at the model's stop tokens, `max_new_tokens`, when `cancel` is set, or when the
        caller closes the generator (the decode loop runs inside it, so nothing keeps computing).
        """
        settings = dataclasses.replace(settings or self.defaults, **overrides)
        stats = stats if stats is not None else GenerationStats()
        start = time.perf_counter()
        images = find_images(messages)
        if images and self.vision is None:
            raise EngineError(f"{self.name} is a text-only model: it cannot read images")
        prompt_ids, max_new, _ = self.prompt(messages, settings, stats)
        embed = None
        if images:
            prompt_ids, embed = self.vision.prepare(prompt_ids, images)
        yield from self._text(prompt_ids, dataclasses.replace(settings, max_new_tokens=max(max_new, 1)), cancel, stats,
                              embed, start)

    def complete(self, text: str, settings: GenerationSettings | None = None, *,
                 cancel: threading.Event | None = None, stats: GenerationStats | None = None,
                 **overrides: Any) -> Iterator[str]:
        """Yield the model's continuation of plain `text` (no chat template) as text deltas: what a pre-trained
        model, or one pre-trained further on raw text, writes next. A text longer than the context keeps its end."""
        settings = dataclasses.replace(settings or self.defaults, **overrides)
        stats = stats if stats is not None else GenerationStats()
        start = time.perf_counter()
        ids = self.tokenizer(utf8_text(text))["input_ids"]  # with BOS, as pre-training saw each document
        keep = self._prompt_budget(settings)
        stats.message_cut = len(ids) > keep
        prompt_ids = ids[:1] + ids[len(ids) - keep + 1:] if stats.message_cut else ids
        max_new = max(1, min(settings.max_new_tokens, self.max_context - len(prompt_ids)))
        yield from self._text(prompt_ids, dataclasses.replace(settings, max_new_tokens=max_new), cancel, stats,
                              None, start)

    def _text(self, prompt_ids: list[int], settings: GenerationSettings, cancel: threading.Event | None,
              stats: GenerationStats, embed: Embed | None, start: float) -> Iterator[str]:
        """The new tokens after `prompt_ids` as text deltas, counted in `stats` from `start`."""
        stats.prompt_tokens = len(prompt_ids)
        detokenizer = IncrementalDetokenizer(self.tokenizer)
        tokens = self.tokens(prompt_ids, settings, cancel, embed)
        try:
            for token_id in tokens:
                stats.new_tokens += 1
                if stats.first_token_s is None:
                    stats.first_token_s = time.perf_counter() - start
                stats.elapsed_s = time.perf_counter() - start
                if delta := detokenizer.push(token_id):
                    yield delta
            if tail := detokenizer.flush():
                yield tail
        finally:
            if close := getattr(tokens, "close", None):
                close()
            stats.elapsed_s = time.perf_counter() - start

    def generate(self, messages: list[Message], settings: GenerationSettings | None = None, **overrides: Any) -> str:
        """The whole reply at once."""
        return "".join(self.stream(messages, settings, **overrides))
