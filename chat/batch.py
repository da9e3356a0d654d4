"""Batched decoding: every chat being answered shares each decode step (continuous batching).

A decode step of a 1.8B model reads all 3.8 GB of weights whether it advances one chat or eight,
so concurrent chats are decoded together: each chat owns a row of one `KVCache`; a scheduler
thread prefills new chats into free rows between steps and advances rows ``0..b-1`` by one token
per step. On a GPU each step is a CUDA graph, one per (row bucket, cache-length bucket, sampling
mode), its tokens sampled inside it (chat.sampler: greedy, sampled, with a repetition penalty) as
the next step's inputs. Steps are pipelined: step k+1 is launched before the host reads step k's
tokens, so the host's work (stop checks, queues, detokenising in the consumers' threads) overlaps
the GPU's. A chat that stops wastes at most that one step. (Four steps a graph launch measured no
faster for one chat on an H200 and slower for eight: benchmarks/README.md, session 20.)

The consumer side is a plain generator (`BatchDecoder.generate`): closing it (the Stop button)
frees the chat's row at the next step.
"""
from __future__ import annotations

import atexit
import ctypes
import logging
import queue
import secrets
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from myassistant.chat.decode import Embed, GenerationSettings
from myassistant.chat.fast import KVCache, StaticCacheDecoder
from myassistant.chat.prefill import PrefillGraphs
from myassistant.chat.sampler import RowParams, apply_repetition_penalty, argmax_rows, sample_rows
from myassistant.chat.step_tail import finish_step, handoff_works

log = logging.getLogger(__name__)

MIN_BUCKET = 256  # shortest cache length a step attends over
AHEAD = 4  # tokens a chat may have waiting unread; when every chat has as many, the scheduler waits
ROW_BUCKETS = (1, 2, 4, 8, 16, 32)
PACKED_TOKENS = 2048  # most prompt tokens prefilled in one pass on a CPU
CPU_LENGTH_STEP = 16  # without CUDA graphs a step attends over the longest row rounded up to this, not a bucket


def bucket(length: int, limit: int) -> int:
    size = MIN_BUCKET
    while size < length:
        size *= 2
    return min(size, limit)


@dataclass(eq=False)
class Chat:
    prompt_ids: list[int]
    settings: GenerationSettings
    stops: frozenset[int]
    cancel: threading.Event
    out: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    row: int = -1
    position: int = 0  # cache position of the token the next step feeds
    produced: int = 0
    done: bool = False
    seed: int = 0  # the sampling noise's (chat.sampler)
    embed: Embed | None = None  # the prompt's input embeddings, made when the chat is admitted (images)


def release_openmp_workers() -> None:
    """Free the calling thread's idle OpenMP workers (libgomp, which torch and chat.int8_blocks share).

    libgomp keeps a team of workers per thread that ran a parallel region, and while it manages more
    threads than there are cores it all but stops spin-waiting between regions. The thread that loaded
    the model keeps such a team, so the scheduler thread's products would each wait for their workers
    to wake: a decode step of the 1.8B shape on 2 cores took 56 ms instead of 47 ms. Another OpenMP
    runtime (or none) has nothing to free here."""
    try:
        ctypes.CDLL("libgomp.so.1").omp_pause_resource_all(1)  # omp_pause_soft
    except (OSError, AttributeError):
        pass


class BatchDecoder:
    """Decodes up to `rows` chats at once over one cache; thread-safe, one scheduler thread."""

    def __init__(self, decoder: StaticCacheDecoder, rows: int = 8, max_len: int = 8192,
                 cuda_graphs: bool = True) -> None:
        self.decoder = decoder
        self.device = decoder.device
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        self.cache = decoder.new_cache(max_len, rows=rows)
        self.rows, self.max_len = rows, self.cache.max_len
        with torch.inference_mode():
            self.tokens = torch.zeros(rows, dtype=torch.long, device=self.device)  # next input per row
            self.positions = torch.zeros(rows, dtype=torch.long, device=self.device)
            self.live = torch.zeros(rows, dtype=torch.long, device=self.device)  # 1 = a chat owns the row
            self.key_index = torch.arange(self.max_len, device=self.device)
            self.params = RowParams.empty(rows, self.device)
            self.seen: torch.Tensor | None = None  # [rows, vocab] for repetition penalties, made when needed
        # each step's tokens for the host, slot k % 2 for step k: stored by the step's last kernel (chat.step_tail)
        # where it can, else copied after the step
        handoff = handoff_works(self.device, rows) if self.cuda_graphs else None
        self.host_tokens, self.handed = handoff or (torch.zeros(2, rows, dtype=torch.long,
                                                                pin_memory=self.cuda_graphs), None)
        self.graphs: dict[tuple[int, int, str], torch.cuda.CUDAGraph] = {}
        self.pool = torch.cuda.graph_pool_handle() if self.cuda_graphs else None
        self.broken: str | None = None  # why graphs were given up, if they were
        self.prefills = PrefillGraphs(decoder, self.cache, self.pool) if self.cuda_graphs else None
        self.steps = 0
        self.prefill_passes = 0  # prefills run (several chats may share one on a CPU)
        self.chats: list[Chat | None] = [None] * rows
        self.pending: list[Chat] = []
        self.wake = threading.Condition()
        self.thread: threading.Thread | None = None
        self.closing = False
        if self.device.type == "cpu":
            release_openmp_workers()  # this thread loaded the model; the scheduler thread computes from now on

    # -- consumer side ---------------------------------------------------------------------------
    def fits(self, length: int) -> bool:
        return length <= self.max_len

    def generate(self, prompt_ids: list[int], settings: GenerationSettings, stop_ids: list[int],
                 cancel: threading.Event | None = None, embed: Embed | None = None) -> Iterator[int]:
        """Yield new token ids until a stop id (not yielded), `max_new_tokens`, `cancel`, or close."""
        seed = secrets.randbits(62) if settings.seed is None else settings.seed % 2 ** 62
        chat = Chat(list(prompt_ids), settings, frozenset(stop_ids), cancel or threading.Event(), seed=seed,
                    embed=embed)
        with self.wake:
            self.pending.append(chat)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="batch-decoder", daemon=True)
                self.thread.start()
                atexit.register(_close_at_exit, weakref.ref(self))
            self.wake.notify()
        try:
            while (item := chat.out.get()) is not None:
                if isinstance(item, BaseException):
                    raise RuntimeError(f"decoding failed: {item}") from item
                if chat.cancel.is_set():
                    return
                if chat.out.qsize() < AHEAD:
                    with self.wake:
                        self.wake.notify()
                yield item
        finally:
            chat.done = True  # the scheduler frees the row before its next step
            with self.wake:
                self.wake.notify()

    def close(self) -> None:
        """Stop the scheduler thread between two steps and wait for it. Run at interpreter exit: a daemon
        thread still inside a torch op when Python finalizes is ended there, and the process aborts
        ("terminate called without an active exception", exit code -6)."""
        with self.wake:
            self.closing = True
            self.wake.notify_all()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout=30)

    # -- scheduler thread ------------------------------------------------------------------------
    def _run(self) -> None:
        inflight: tuple[list[Chat | None], torch.Tensor, torch.cuda.Event | None] | None = None
        while True:
            with self.wake:
                while (not self.closing and not self.pending and inflight is None
                       and (not any(self.chats) or self._all_ahead())):
                    self.wake.wait(timeout=None if not any(self.chats) else 0.5)
                if self.closing:
                    return
                free = [r for r, c in enumerate(self.chats) if c is None]
                admit, self.pending = self.pending[:len(free)], self.pending[len(free):]
            try:
                with torch.inference_mode():
                    self._admit_all(admit, free)
                    self._free_finished()
                    launched = self._launch() if any(self.chats) else None
                    if inflight is not None:
                        self._deliver(*inflight)
                    inflight = launched
                    if inflight is not None and inflight[2] is None:  # no GPU to overlap with: deliver now
                        self._deliver(*inflight)
                        inflight = None
            except Exception as err:  # noqa: BLE001 - handed to every waiting consumer
                log.exception("batched decoding failed")
                for chat in [*admit, *(c for c in self.chats if c)]:
                    chat.out.put(err)
                    chat.done = True
                self._free_finished()
                inflight = None

    def _all_ahead(self) -> bool:
        """Every live chat has AHEAD tokens unread (its reader is slow or gone): no step until one reads.
        Checked again every half second, so a cancelled or closed chat is freed even when nobody reads."""
        live = [c for c in self.chats if c is not None]
        return all(c.out.qsize() >= AHEAD and not (c.done or c.cancel.is_set()) for c in live)

    def _finish(self, chat: Chat) -> None:
        chat.done = True
        chat.out.put(None)

    def _free_finished(self) -> None:
        for row, chat in enumerate(self.chats):
            if chat is not None and (chat.done or chat.cancel.is_set() or chat.position >= self.max_len):
                if not chat.done:
                    self._finish(chat)
                self.chats[row] = None
                self.live[row] = 0
                self.positions[row] = 0

    def _admit_all(self, chats: list[Chat], free: list[int]) -> None:
        """Prefill `chats` into the `free` rows. On a CPU, text chats that arrived together share one pass
        (`StaticCacheDecoder.prefill_packed`, up to PACKED_TOKENS tokens each): a prefill there is
        bound by the weights' reads for short prompts and by arithmetic for long ones, so packing saves
        a pass over the weights per chat. On a GPU each has its own (compiled) prefill."""
        waiting = []
        for chat, row in zip(chats, free):
            if chat.done or chat.cancel.is_set():
                self._finish(chat)
            elif self.cuda_graphs or self.device.type != "cpu" or chat.embed is not None:
                self._admit(chat, row, self._prefill(chat, row))
            else:
                waiting.append((chat, row))
        while waiting:
            group, tokens = [], 0
            while waiting and (not group or tokens + len(waiting[0][0].prompt_ids) <= PACKED_TOKENS):
                group.append(waiting.pop(0))
                tokens += len(group[-1][0].prompt_ids)
            if len(group) == 1:
                self._admit(*group[0], self._prefill(*group[0]))
                continue
            logits = self.decoder.prefill_packed([c.prompt_ids for c, _ in group], self.cache, [r for _, r in group])
            self.prefill_passes += 1
            for i, (chat, row) in enumerate(group):
                self._admit(chat, row, logits[i:i + 1])

    def _prefill(self, chat: Chat, row: int) -> torch.Tensor:
        self.prefill_passes += 1
        if self.prefills is not None and chat.embed is None and not self.broken:
            if (logits := self.prefills.run(chat.prompt_ids, row)) is not None:  # one graph replay (chat.prefill)
                return logits
        ids = torch.tensor([chat.prompt_ids], device=self.device)
        return self.decoder.prefill(ids, self.cache, row, None if chat.embed is None else chat.embed(ids))

    def _admit(self, chat: Chat, row: int, logits: torch.Tensor) -> None:
        """Chat takes `row`, its prompt prefilled there (`logits` [1, vocab] after it): the first token."""
        s = chat.settings
        self.params.set_row(row, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                            penalty=s.repetition_penalty, seed=chat.seed)
        if s.repetition_penalty != 1.0:
            if self.seen is None:
                self.seen = torch.zeros(self.rows, self.decoder.model.config.vocab_size, dtype=torch.bool,
                                        device=self.device)
            self.seen[row] = False
            self.seen[row, torch.tensor(chat.prompt_ids, device=self.device)] = True
            logits = apply_repetition_penalty(logits, self.seen[row:row + 1], self.params.penalty[row:row + 1])
        # the noise of the token after position p is drawn for p: the last prompt token's here, as a step's
        last = torch.tensor([len(chat.prompt_ids) - 1], device=self.device)
        first = sample_rows(logits, self.params.rows(row), last)
        if s.repetition_penalty != 1.0:
            self.seen[row, first] = True
        chat.row, chat.position = row, len(chat.prompt_ids)
        self.chats[row] = chat
        self.tokens[row] = first[0]
        self.positions[row] = chat.position
        self.live[row] = 1
        self._emit(chat, int(first[0]))

    def _step_logits(self, b: int, length: int) -> torch.Tensor:
        return self.decoder.decode(self.tokens[:b], self.positions[:b], self.cache, length, self.key_index)

    def _step(self, b: int, length: int, mode: str) -> None:
        """One decode step of rows 0..b-1 and its tail: each row's next token (`mode`: "greedy" the argmax,
        "sample" chat.sampler's draw per row, "penalty" the same after the repetition penalty) written as its
        next input, the live rows' positions advanced and the tokens stored for the host (chat.step_tail). All on
        the device, so a CUDA graph holds it.
        (torch's argmax reduced the 92,544 logits of a row in one thread block: 27 us of an H200's step;
        `argmax_rows` spreads it.)"""
        finish_step(self._next_tokens(b, length, mode), self.tokens, self.positions, self.live,
                    None if self.handed is None else self.host_tokens, self.handed)
        if mode == "penalty":  # a scalar scatter: indexing with `= True` copies the value from the host, which no
            self.seen[:b].scatter_(1, self.tokens[:b, None], True)  # graph capture allows

    def _next_tokens(self, b: int, length: int, mode: str) -> torch.Tensor:
        """Rows 0..b-1's next tokens [b] after one step (the step's state writes left to `_step`)."""
        logits = self._step_logits(b, length)
        if mode == "penalty":
            logits = apply_repetition_penalty(logits, self.seen[:b], self.params.penalty[:b])
        if mode == "greedy":
            return argmax_rows(logits)
        return sample_rows(logits, self.params, self.positions[:b])

    def _graph(self, b: int, length: int, mode: str) -> torch.cuda.CUDAGraph:
        # Warm-up on a side stream (compilation, cuBLAS workspaces, chat.scratch's buffers grown), then capture.
        # Both run the real step on the current state, so the cache entries they write are the right ones; the
        # warm-up leaves out the state writes, which would advance the rows. A capture must find every scratch
        # buffer grown: what a capture allocates lies in the memory the graphs share for their temporaries.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._next_tokens(b, length, mode)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            self._step(b, length, mode)
        log.info("captured the decode step for %d rows, cache length %d, %s", b, length, mode)
        return graph

    def graph(self, b: int, length: int, mode: str = "greedy") -> torch.cuda.CUDAGraph | None:
        """The CUDA graph of a step of rows 0..b-1 over `length` cache entries (captured at its first use; a
        capture runs nothing: replay it), or None without graphs."""
        if not self.cuda_graphs or self.broken:
            return None
        key = (b, length, mode)
        if key not in self.graphs:
            try:
                self.graphs[key] = self._graph(b, length, mode)
            except RuntimeError as err:  # an op that cannot be captured: stay correct without graphs
                self.broken = f"CUDA graph capture failed: {err}"
                log.warning("%s; decoding without graphs", self.broken)
                return None
        return self.graphs[key]

    def _launch(self) -> tuple[list[Chat | None], torch.Tensor, torch.cuda.Event | None]:
        """Queue one decode step for every live row; the sampled tokens stay on the device as next inputs."""
        top = max(r for r, c in enumerate(self.chats) if c is not None) + 1
        b = min(next((size for size in ROW_BUCKETS if size >= top), self.rows), self.rows) if self.cuda_graphs else top
        chats = self.chats[:b]
        longest = max(c.position for c in chats if c) + 1
        if self.cuda_graphs:
            length = bucket(longest, self.max_len)
        else:  # the cache read is what costs a CPU step's attention: no more of it than needed
            length = min(-(-longest // CPU_LENGTH_STEP) * CPU_LENGTH_STEP, self.max_len)
        live = [c for c in chats if c]
        mode = ("penalty" if any(c.settings.repetition_penalty != 1.0 for c in live)
                else "greedy" if all(c.settings.greedy for c in live) else "sample")
        slot = self.steps % 2  # the host buffer's slot of this step's tokens
        if (graph := self.graph(b, length, mode)) is not None:
            graph.replay()
        else:
            self._step(b, length, mode)
        for chat in live:
            chat.position += 1
        self.steps += 1
        tokens = self.tokens[:b]
        if not self.cuda_graphs:
            return chats, tokens.cpu(), None
        host = self.host_tokens[slot]
        if self.handed is None:  # else the step's last kernel stored them
            host[:b].copy_(tokens, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return chats, host, event

    def _deliver(self, chats: list[Chat | None], tokens: torch.Tensor, event: torch.cuda.Event | None) -> None:
        if event is not None:
            event.synchronize()
        for chat, token in zip(chats, tokens[:len(chats)].tolist()):
            if chat is not None and not chat.done:
                self._emit(chat, token)

    def _emit(self, chat: Chat, token: int) -> None:
        if token in chat.stops:
            return self._finish(chat)
        chat.out.put(token)
        chat.produced += 1
        if chat.produced >= chat.settings.max_new_tokens or chat.position + 1 >= self.max_len:
            self._finish(chat)


def _close_at_exit(ref: weakref.ref) -> None:
    if (decoder := ref()) is not None:
        decoder.close()

