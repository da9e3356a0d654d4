"""The fast decoder: a preallocated (static) KV cache and, on a GPU, CUDA graphs of the decode step.

``model(...)`` with a ``DynamicCache`` grows the cache by concatenation every step and, on a GPU,
launches a few hundred small kernels per token from Python: a batch-1 decode is then bound by the
host, not the GPU. Here the Llama-layout model's own modules (projections, norms, MLP, rotary
tables, lm_head; int8 ones too) run around our attention over a cache written in place, so every
tensor of a decode step keeps its address and the whole step can be captured once as a CUDA graph
and replayed per token. One graph per cache-length bucket (powers of two): the step attends over
the bucket with a mask, so short chats do not pay for the longest context.

Greedy output equals ``model.generate`` (tests/test_fast_decode.py); models of another layout go
through the plain loop in `chat.decode`.
"""
from __future__ import annotations

import logging
import os
import threading

import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from chat.decode import Forward

log = logging.getLogger(__name__)

FAST_DECODE_ENV = "ASSISTANT_FAST_DECODE"  # "0" = always the plain transformers loop
# Rotary types whose tables depend on the position only (dynamic NTK only beyond
# max_position_embeddings, which the engine never goes past).
STATIC_ROPE_TYPES = {"default", "linear", "dynamic", "yarn", "llama3"}
MIN_BUCKET = 256
GRAPH_MAX_LEN = 8192  # longest context the graphed slot holds; longer requests decode eagerly

def fast_decode_problem(model: torch.nn.Module) -> str | None:
    """Why `model` cannot use the fast decoder (None when it can)."""
    if os.environ.get(FAST_DECODE_ENV, "1").strip() == "0":
        return f"{FAST_DECODE_ENV}=0"
    if type(model).__name__ != "LlamaForCausalLM":
        return f"{type(model).__name__} is not the Llama layout"
    rope_type = getattr(model.model.rotary_emb, "rope_type", "default")
    if rope_type not in STATIC_ROPE_TYPES:
        return f"rope type {rope_type!r} depends on the sequence length"
    return None


class KVCache:
    """Keys and values of every layer for one sequence of at most `max_len` tokens, written in place."""

    def __init__(self, layers: int, kv_heads: int, head_dim: int, max_len: int, dtype: torch.dtype,
                 device: torch.device) -> None:
        shape = (layers, 1, kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len


class StaticCacheDecoder:
    """Batch-1 prefill and decode steps of a ``LlamaForCausalLM`` over a `KVCache`."""

    def __init__(self, model: torch.nn.Module, max_len: int) -> None:
        self.model = model
        self.layers = list(model.model.layers)
        attn = self.layers[0].self_attn
        self.head_dim, self.n_rep, self.scaling = attn.head_dim, attn.num_key_value_groups, attn.scaling
        self.kv_heads = model.config.num_key_value_heads
        self.max_len = max_len
        self.device = model.device
        self.dtype = model.model.embed_tokens.weight.dtype
        with torch.inference_mode():
            positions = torch.arange(max_len, device=self.device)[None]
            probe = torch.zeros(1, dtype=self.dtype, device=self.device)
            cos, sin = model.model.rotary_emb(probe, positions)  # the same tables the model computes
            self.cos, self.sin = cos[0], sin[0]  # [max_len, head_dim]

    def new_cache(self, max_len: int | None = None) -> KVCache:
        with torch.inference_mode():
            return KVCache(len(self.layers), self.kv_heads, self.head_dim, min(max_len or self.max_len, self.max_len),
                           self.dtype, self.device)

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, cache: KVCache, attend_len: int | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [1, vocab] (float32) of the last of `ids` [1, n] at `positions` [n].

        n > 1 is a prefill from position 0 (causal attention over the new tokens); n == 1 is a
        decode step attending over the first `attend_len` cache entries, `mask` hiding the unused.
        """
        n = ids.shape[1]
        x = self.model.model.embed_tokens(ids)
        cos, sin = self.cos[positions][None], self.sin[positions][None]
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(1, n, -1, self.head_dim).transpose(1, 2)
            k = attn.k_proj(h).view(1, n, -1, self.head_dim).transpose(1, 2)
            v = attn.v_proj(h).view(1, n, -1, self.head_dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            cache.k[i].index_copy_(2, positions, k)
            cache.v[i].index_copy_(2, positions, v)
            if n > 1:
                k_all = cache.k[i][:, :, :n].repeat_interleave(self.n_rep, dim=1)
                v_all = cache.v[i][:, :, :n].repeat_interleave(self.n_rep, dim=1)
                o = torch.nn.functional.scaled_dot_product_attention(q, k_all, v_all, is_causal=True,
                                                                     scale=self.scaling)
                o = o.transpose(1, 2).reshape(1, n, -1)
            else:
                # The query heads sharing a kv head are attended as rows of one query block:
                # grouped-query attention with no copy of the cache.
                q = q.view(1, self.kv_heads, self.n_rep, self.head_dim)
                o = torch.nn.functional.scaled_dot_product_attention(
                    q, cache.k[i][:, :, :attend_len], cache.v[i][:, :, :attend_len], attn_mask=mask,
                    scale=self.scaling)
                o = o.reshape(1, 1, -1)
            x = x + attn.o_proj(o)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.model.lm_head(self.model.model.norm(x[:, -1:]))[:, -1].float()

    def eager(self, cache: KVCache) -> Forward:
        """A step function over `cache` without graphs (CPU, or a GPU slot that is busy)."""
        pos = 0

        def step(ids: torch.Tensor) -> torch.Tensor:
            nonlocal pos
            n = ids.shape[1]
            assert n == 1 or pos == 0, "a prompt is prefilled at the start of the cache only"
            positions = torch.arange(pos, pos + n, device=self.device)
            logits = self.forward(ids, positions, cache, attend_len=pos + n)
            pos += n
            return logits

        return step


class DecodeSlot:
    """One cache with static step buffers; on a GPU, the decode step is a CUDA graph per length bucket.

    A chat takes the slot for its whole reply (`busy`); a concurrent chat that finds it taken
    decodes eagerly with a cache of its own. With ``cuda_graphs=False`` the same bucketed, masked
    step runs without capture (how the CPU tests cover this logic).
    """

    def __init__(self, decoder: StaticCacheDecoder, cuda_graphs: bool = True) -> None:
        self.decoder = decoder
        self.cuda_graphs = cuda_graphs
        self.cache = decoder.new_cache(min(decoder.max_len, GRAPH_MAX_LEN))
        self.busy = threading.Lock()
        device = decoder.device
        with torch.inference_mode():
            self.token = torch.zeros(1, 1, dtype=torch.long, device=device)
            self.position = torch.zeros(1, dtype=torch.long, device=device)
            self.key_index = torch.arange(self.cache.max_len, device=device)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.broken: str | None = None  # set when a capture failed: no graphs from then on

    def bucket(self, length: int) -> int:
        size = MIN_BUCKET
        while size < length:
            size *= 2
        return min(size, self.cache.max_len)

    def _step(self, size: int) -> torch.Tensor:
        """The decode step on the static buffers, attending over the first `size` cache entries."""
        mask = torch.where(self.key_index[:size] <= self.position, 0.0, float("-inf")).to(self.decoder.dtype)
        mask = mask.view(1, 1, 1, size)
        return self.decoder.forward(self.token, self.position, self.cache, attend_len=size, mask=mask)

    def _capture(self, size: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        # Warm-up on a side stream (cuBLAS/attention workspaces), then capture. Both run the real
        # step at the current position, so the cache entries they write are the right ones.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._step(size)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits = self._step(size)
        log.info("captured the decode step for cache length %d", size)
        return graph, logits

    def _replay(self, size: int) -> torch.Tensor:
        if size not in self.graphs:
            try:
                self.graphs[size] = self._capture(size)
            except RuntimeError as err:  # an op that cannot be captured: stay correct without graphs
                self.broken = f"CUDA graph capture failed: {err}"
                log.warning("%s; decoding without graphs", self.broken)
                return self._step(size)
        graph, logits = self.graphs[size]
        graph.replay()
        return logits

    def forward(self) -> Forward:
        """A step function over this slot's cache: prefill, then bucketed (graphed) decode steps."""
        pos = 0

        def step(ids: torch.Tensor) -> torch.Tensor:
            nonlocal pos
            n = ids.shape[1]
            if n > 1:
                assert pos == 0, "a prompt is prefilled at the start of the cache only"
                positions = torch.arange(n, device=self.decoder.device)
                logits = self.decoder.forward(ids, positions, self.cache)
            else:
                self.token.copy_(ids)
                self.position.fill_(pos)
                size = self.bucket(pos + 1)
                logits = self._replay(size) if self.cuda_graphs and not self.broken else self._step(size)
            pos += n
            return logits

        return step
