"""CUDA graphs of the prefill, one per prompt-length bucket: the first token without the host's launches.

A 512-token prefill of a 1.8B model is ~2 TFLOP, ~3 ms of matrix work on an H100/H200, but run from
Python it launches ~24 compiled layers' kernels one by one, and the host (guards, launches) took most
of the ~15 ms to a first token. Here a prompt is padded with token 0 up to a bucket (64 ... 2048
tokens) and the whole prefill of that bucket is one graph replay. Padding is harmless: attention is
causal, so no prompt token sees a pad; the pads' keys and values land in cache positions past the
prompt, which the decode steps overwrite (each step writes its own position before attending) and
never attend to before that (the mask and the split kernel stop at each row's position); the logits
are read at the last prompt token. Longer prompts, images and CPUs keep the plain prefill.
"""
from __future__ import annotations

import logging

import torch

from myassistant.chat.fast import KVCache, StaticCacheDecoder

log = logging.getLogger(__name__)

BUCKETS = (64, 128, 256, 384, 512, 640, 768, 1024, 1536, 2048)  # steps of 128 keep the padding small


class PrefillGraphs:
    """Graphed prefills of text prompts into any row of `cache`; `run` returns None where it does not apply."""

    def __init__(self, decoder: StaticCacheDecoder, cache: KVCache, pool) -> None:
        self.decoder, self.cache, self.pool = decoder, cache, pool
        self.buckets = [b for b in BUCKETS if b <= cache.max_len]
        device = decoder.device
        size = self.buckets[-1] if self.buckets else 0
        self.ids = torch.zeros(1, size, dtype=torch.long, device=device)  # the graphs' inputs, written before a replay
        self.positions = torch.arange(size, device=device)
        self.row = torch.zeros(1, dtype=torch.long, device=device)
        self.last = torch.zeros(1, dtype=torch.long, device=device)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.broken: str | None = None

    def _step(self, size: int) -> torch.Tensor:
        x = self.decoder.model.model.embed_tokens(self.ids[:, :size])
        return self.decoder.prefill_rows(x, self.cache, self.row, self.positions[:size], self.last)

    def _capture(self, size: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        stream = torch.cuda.Stream()  # warm-up (compilation, workspaces) off the capture, as chat.batch does
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._step(size)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            logits = self._step(size)
        log.info("captured the prefill of %d tokens", size)
        return graph, logits

    def run(self, prompt_ids: list[int], row: int) -> torch.Tensor | None:
        """Logits [1, vocab] after `prompt_ids`, prefilled into cache row `row`; None when no bucket holds the prompt
        (or capturing failed once: the caller then prefills without a graph)."""
        n = len(prompt_ids)
        size = next((b for b in self.buckets if b >= n), None)
        if size is None or self.broken:
            return None
        self.ids[0, :n].copy_(torch.tensor(prompt_ids))
        self.ids[0, n:size] = 0
        self.row.fill_(row)
        self.last.fill_(n - 1)
        if size not in self.graphs:
            try:
                self.graphs[size] = self._capture(size)
            except RuntimeError as err:  # an op that cannot be captured: stay correct without graphs
                self.broken = f"prefill graph capture failed: {err}"
                log.warning("%s; prefilling without graphs", self.broken)
                return None
        graph, logits = self.graphs[size]
        graph.replay()
        return logits
