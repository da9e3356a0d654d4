"""The fast decoder: a preallocated (static) KV cache with rows, written in place, around the model's weights.

``model(...)`` with a ``DynamicCache`` grows the cache by concatenation every step and, on a GPU,
launches a few hundred small kernels per token from Python: a batch-1 decode is then bound by the
host, not the GPU. Here the Llama-layout model's own modules (norms, activation, rotary tables;
int8 projections too) run around our attention over a cache whose tensors never move, so a decode
step can be captured as a CUDA graph (`chat.batch`). Two things make the captured step short:
- q/k/v and gate/up projections are one matmul each: their weights are concatenated once and the
  model's own Linear weights become views into the result (no extra memory; the model still works);
- on a GPU the per-layer step is compiled (`torch.compile`, one compile shared by all layers), so the
  norms, rotary embedding and SwiGLU are a few fused kernels instead of dozens of tiny ones; a bf16 / fp16
  decode step is five kernels a layer and nothing else (`chat.gemv` products with the norms, SiLU*mul and
  residual adds fused in; `chat.attention.rotary_split_attention`: rotary, cache writes and attention), so
  that layer runs uncompiled (a CUDA graph replays it).

A cache has rows: row r holds one chat. A prefill writes one row; a decode step advances rows
``0..b-1`` by one token each, every row at its own position, attending over the first `attend_len`
cache entries with a mask hiding the rest. Greedy output equals ``model.generate``
(tests/test_fast_decode.py); models of another layout go through the plain loop in `chat.decode`.
"""
from __future__ import annotations

import logging

import torch
from torch.nn import functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from myassistant.chat import attention, gemv, int_weights, weight_only
from myassistant.chat.attention import decode_attention
from myassistant.chat.decode import Embed, Forward
from myassistant.chat.quant import Int8Linear
from myassistant.chat.scratch import scratch

log = logging.getLogger(__name__)

# Rotary types whose tables depend on the position only (dynamic NTK only beyond
# max_position_embeddings, which the engine never goes past).
STATIC_ROPE_TYPES = {"default", "linear", "dynamic", "yarn", "llama3"}
# a fused projection: concatenated weights (weight-only quantised ones: chat.int_weights.QuantWeight), or a module (an
# int8 layer, a layer that is not a plain Linear)
Projection = torch.Tensor | int_weights.QuantWeight | torch.nn.Module
SILU = ("SiLU", "SiLUActivation")  # torch's and transformers' modules: the activation chat.gemv fuses
# a decode layer's rows' sums of squares, int64 [b] each (chat.gemv_epilogue): of its input (None where nothing wrote
# them), of its attention's residual sum, and of its output
Squares = tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]
# bytes of the products after a decode step's attention read into L2 by its spare programs (`warm_after_attention`)
WARM_BYTES = 16 << 20


def fast_decode_problem(model: torch.nn.Module) -> str | None:
    """Why `model` cannot use the fast decoder (None when it can)."""
    if type(model).__name__ != "LlamaForCausalLM":
        return f"{type(model).__name__} is not the Llama layout"
    rope_type = getattr(model.model.rotary_emb, "rope_type", "default")
    if rope_type not in STATIC_ROPE_TYPES:
        return f"rope type {rope_type!r} depends on the sequence length"
    return None


class KVCache:
    """Keys and values of every layer for `rows` sequences of at most `max_len` tokens each."""

    def __init__(self, layers: int, rows: int, kv_heads: int, head_dim: int, max_len: int, dtype: torch.dtype,
                 device: torch.device) -> None:
        shape = (layers, rows, kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.rows, self.max_len = rows, max_len

    @staticmethod
    def bytes_per_token(config, dtype: torch.dtype) -> int:
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * dtype.itemsize


def _plain_linear(module: torch.nn.Module) -> bool:
    return type(module) is torch.nn.Linear and module.bias is None


def fuse_projections(layer: torch.nn.Module) -> tuple[Projection, ...] | None:
    """The [q;k;v], [gate;up], o_proj and down_proj projections of `layer`, the model's own layers made views into
    them: concatenated weights where they are plain bias-free Linear layers (or weight-only quantised ones,
    `chat.weight_only.QuantLinear`: one stacked `QuantWeight`), one `Int8Linear` each where they are int8 on the
    blocks kernel (the input is then quantised once, not per projection); o_proj and down_proj as their weights
    where plain or weight-only quantised, else as the modules themselves.

    None otherwise (LoRA on q/k/v or gate/up, another int8 kernel, ...).
    """
    attn, mlp = layer.self_attn, layer.mlp
    groups = ((attn.q_proj, attn.k_proj, attn.v_proj), (mlp.gate_proj, mlp.up_proj))
    outs = tuple(m.weight if _plain_linear(m) else m.quant if type(m) is weight_only.QuantLinear else m
                 for m in (attn.o_proj, mlp.down_proj))
    if all(type(m) is weight_only.QuantLinear for group in groups for m in group):
        return (*(weight_only.stack(list(group)) for group in groups), *outs)
    if all(type(m) is Int8Linear for group in groups for m in group):
        stacked = [Int8Linear.stacked(list(group)) for group in groups]
        return None if None in stacked else (stacked[0], stacked[1], *outs)
    if not all(_plain_linear(m) for group in groups for m in group):
        return None
    fused = []
    with torch.no_grad():
        for group in groups:
            weight = torch.cat([m.weight for m in group])
            start = 0
            for m in group:
                rows = m.weight.shape[0]
                m.weight = torch.nn.Parameter(weight[start:start + rows], requires_grad=False)
                start += rows
            fused.append(weight)
    return (fused[0], fused[1], *outs)


def project(x: torch.Tensor, fused: Projection) -> torch.Tensor:
    """x through a projection of `fuse_projections`."""
    if isinstance(fused, int_weights.QuantWeight):
        return weight_only.linear(x, fused)
    return F.linear(x, fused) if isinstance(fused, torch.Tensor) else fused(x)


def fused_products(layer: torch.nn.Module, fused: tuple[Projection, ...] | None, rows: int) -> bool:
    """Whether a decode step of `rows` rows multiplies with chat.gemv's kernels, norms and SiLU*mul fused in."""
    return (fused is not None and not any(isinstance(p, torch.nn.Module) for p in fused)  # weights, not modules
            and gemv.usable(fused[0], rows) and type(layer.mlp.act_fn).__name__ in SILU)


def warm_after_attention(fused: tuple[Projection, ...], rows: int, budget: int | None = None) -> list[torch.Tensor]:
    """What a decode step's attention kernel reads into L2 for the products after it (the attention reads a few MB
    and leaves the memory idle meanwhile): o_proj's weight, then as many first rows of gate and of up (the rows the
    gate/up product's first programs read) as `budget` (WARM_BYTES) leaves. Only one-row steps over bf16 / fp16
    weights whose o_proj fits the budget: on an H200 the 1.8B one-chat decode went from 839-842 to 857-859 tokens/s
    with 16 MiB (o_proj and 4 MiB each of gate and up; three calls), while o_proj alone, gate / up alone, 20-32 MiB
    or 64 KiB a program were no faster, the 8-row step took 1.423 ms against 1.410, and every budget tried slowed the
    7B int8 step by 1-3 % (benchmarks/warm_gpu.py)."""
    budget = WARM_BYTES if budget is None else budget
    o_proj, gate_up = fused[2], fused[1]
    if (rows > 1 or not (isinstance(o_proj, torch.Tensor) and isinstance(gate_up, torch.Tensor))
            or o_proj.nbytes > budget):
        return []
    half = gate_up.shape[0] // 2
    first = min(half, (budget - o_proj.nbytes) // (2 * gate_up[0].nbytes))
    return [o_proj, gate_up[:first], gate_up[half:half + first]]


def _fused_rest(layer: torch.nn.Module, fused: tuple[Projection, ...], x: torch.Tensor, o: torch.Tensor,
                squares: Squares | None) -> torch.Tensor:
    """A decode step's layer output after its attention `o`: o_proj + residual, then the MLP, in three kernels."""
    b = x.shape[0]
    _, mid, out = squares or (None, None, None)
    x = gemv.product(o.view(b, -1), fused[2], residual=x.view(b, -1), squares_out=mid)
    act = gemv.product(x, fused[1], norm=layer.post_attention_layernorm, gated=True, squares_in=mid)
    return gemv.product(act, fused[3], residual=x, squares_out=out).view(b, 1, -1)


def decoder_layer(layer: torch.nn.Module, fused: tuple[Projection, ...] | None, x: torch.Tensor,
                  cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                  rows: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None,
                  segments: tuple[int, ...] | None = None, squares: Squares | None = None) -> torch.Tensor:
    """One decoder layer over `x` [b, n, hidden] that writes its keys and values into the cache.

    Decode (mask given): n == 1, row i of `x` is cache row rows[i] at positions[i]; attention over
    the first mask.shape[-1] entries of rows 0..b-1. Prefill (mask None): b == 1, `positions` [n]
    from 0 in cache row rows[0]; causal attention over the new tokens. Packed prefill (`segments`,
    the prompts' lengths, summing to n): several prompts one after the other, `rows` and `positions`
    given per token; each prompt attends causally to itself only. `squares` (decode with chat.gemv's kernels): the
    rows' sums of squares of the layer's input (None: not handed on), of its attention's residual sum and of its
    output, zeroed int64 [b] each (chat.gemv_epilogue).
    """
    attn, mlp = layer.self_attn, layer.mlp
    b, n, _ = x.shape
    kv_heads, head_dim = k_cache.shape[1], k_cache.shape[-1]
    fused_kernels = mask is not None and fused_products(layer, fused, b)
    if fused_kernels:  # norms, SiLU*mul and residual adds inside the matrix products (chat.gemv)
        qkv = gemv.product(x.view(b, -1), fused[0], norm=layer.input_layernorm,
                           squares_in=None if squares is None else squares[0])
        length = mask.shape[-1]
        if attention.uses_split(k_cache, length):  # rotary, cache writes and attention in one kernel
            o = attention.rotary_split_attention(qkv, cos.view(b, -1), sin.view(b, -1), k_cache[:b, :, :length],
                                                 v_cache[:b, :, :length], positions, attn.scaling,
                                                 warm_after_attention(fused, b))
            return _fused_rest(layer, fused, x, o, squares)
        q, k, v = qkv.split([attn.q_proj.out_features, kv_heads * head_dim, kv_heads * head_dim], -1)
        q, k, v = q[:, None], k[:, None], v[:, None]
    else:
        h = layer.input_layernorm(x)
        if fused is not None:
            q, k, v = project(h, fused[0]).split([attn.q_proj.out_features, kv_heads * head_dim, kv_heads * head_dim],
                                                  -1)
        else:
            q, k, v = attn.q_proj(h), attn.k_proj(h), attn.v_proj(h)
    q = q.reshape(b, n, -1, head_dim).transpose(1, 2)
    k = k.reshape(b, n, kv_heads, head_dim).transpose(1, 2)
    v = v.reshape(b, n, kv_heads, head_dim).transpose(1, 2)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    rows = rows.expand_as(positions)  # prefill: one row for every position
    k_cache[rows, :, positions] = k.transpose(1, 2).reshape(-1, kv_heads, head_dim)
    v_cache[rows, :, positions] = v.transpose(1, 2).reshape(-1, kv_heads, head_dim)
    if mask is None:
        repeat = q.shape[1] // kv_heads
        k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        if segments is None:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=attn.scaling)
        else:  # each prompt alone: the same attention, in the same shapes, as its own prefill
            o = torch.cat([F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=attn.scaling)
                           for qs, ks, vs in zip(*(t.split(segments, dim=2) for t in (q, k, v)))], dim=2)
        o = o.transpose(1, 2).reshape(b, n, -1)
    else:
        # The query heads sharing a kv head are attended as rows of one query block:
        # grouped-query attention with no copy of the cache (split over many blocks on long caches).
        length = mask.shape[-1]
        o = decode_attention(q.reshape(b, kv_heads, -1, head_dim), k_cache[:b, :, :length], v_cache[:b, :, :length],
                             mask, positions, attn.scaling)
        o = o.reshape(b, 1, -1)
    if fused_kernels:
        return _fused_rest(layer, fused, x, o, squares)
    if fused is None:
        x = x + attn.o_proj(o)
        h = layer.post_attention_layernorm(x)
        return x + mlp.down_proj(mlp.act_fn(mlp.gate_proj(h)) * mlp.up_proj(h))
    x = x + project(o, fused[2])
    gate, up = project(layer.post_attention_layernorm(x), fused[1]).chunk(2, dim=-1)
    return x + project(mlp.act_fn(gate) * up, fused[3])


class StaticCacheDecoder:
    """Prefill and decode steps of a ``LlamaForCausalLM`` over a `KVCache`."""

    def __init__(self, model: torch.nn.Module, max_len: int, compile: bool | None = None) -> None:
        """compile: torch.compile the per-layer step (None = on a GPU: on a CPU it does not pay)."""
        self.model = model
        self.layers = list(model.model.layers)
        self.max_len = max_len
        self.device = model.device
        self.dtype = model.model.embed_tokens.weight.dtype
        self.kv_heads = model.config.num_key_value_heads
        self.head_dim = self.layers[0].self_attn.head_dim
        self.fused = [fuse_projections(layer) for layer in self.layers]
        compile = self.device.type == "cuda" if compile is None else compile
        # dynamic: one compile covers every batch size, cache length and prompt length (b == 1 and
        # the prefill get their own).
        self.decode_layer = torch.compile(decoder_layer, dynamic=True) if compile else decoder_layer
        with torch.inference_mode():
            positions = torch.arange(max_len, device=self.device)[None]
            probe = torch.zeros(1, dtype=self.dtype, device=self.device)
            cos, sin = model.model.rotary_emb(probe, positions)  # the same tables the model computes
            self.cos, self.sin = cos[0], sin[0]  # [max_len, head_dim]

    def new_cache(self, max_len: int | None = None, rows: int = 1) -> KVCache:
        with torch.inference_mode():
            return KVCache(len(self.layers), rows, self.kv_heads, self.head_dim,
                           min(max_len or self.max_len, self.max_len), self.dtype, self.device)

    def _logits(self, x: torch.Tensor, squares: torch.Tensor | None = None) -> torch.Tensor:
        """Float32 logits [b, vocab] of the last token of each row of `x` [b, n, hidden] (`squares`: its rows' sums
        of squares, handed on by the last layer's kernels)."""
        head, norm = self.model.lm_head, self.model.model.norm
        if _plain_linear(head) and gemv.usable(head.weight, x.shape[0]):  # norm, product and cast in one kernel
            return gemv.product(x[:, -1], head.weight, norm=norm, out_float=True, squares_in=squares)
        return self.model.lm_head(self.model.model.norm(x[:, -1:]))[:, -1].float()

    def prefill(self, ids: torch.Tensor, cache: KVCache, row: int = 0,
                embeds: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [1, vocab] (float32) after prompt `ids` [1, n], written from position 0 of cache row `row`.

        `embeds` [1, n, hidden]: the prompt's input embeddings when they are not the table's (images).
        """
        n = ids.shape[1]
        x = self.model.model.embed_tokens(ids) if embeds is None else embeds.to(self.dtype)
        return self.prefill_rows(x, cache, torch.tensor([row], device=self.device), torch.arange(n, device=self.device))

    def prefill_rows(self, x: torch.Tensor, cache: KVCache, rows: torch.Tensor, positions: torch.Tensor,
                     last: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [1, vocab] after the input embeddings `x` [1, n] written at `positions` (arange(n)) of cache row
        rows[0]: of the token at index `last` [1] (default the last one). Tensors only: a CUDA graph captures it
        (chat.prefill)."""
        n = x.shape[1]
        cos, sin = self.cos[:n][None], self.sin[:n][None]
        for i, layer in enumerate(self.layers):  # compiled too: fewer launches from a slow host
            x = self.decode_layer(layer, self.fused[i], x, cos, sin, cache.k[i], cache.v[i], rows, positions, None)
        return self._logits(x if last is None else x.index_select(1, last))

    def prefill_packed(self, prompts: list[list[int]], cache: KVCache, rows: list[int]) -> torch.Tensor:
        """Logits [len(prompts), vocab] after each prompt, prompt i written from position 0 of cache row rows[i].

        One pass for all: every weight is read once for all the prompts' tokens (linear layers see
        one matrix of all their rows), attention stays per prompt. Each prompt's numbers are those of
        its own `prefill` where the linear layers compute each row on its own (int8 on the CPU).
        """
        lengths = [len(p) for p in prompts]
        ids = torch.tensor([[t for p in prompts for t in p]], device=self.device)
        positions = torch.cat([torch.arange(n, device=self.device) for n in lengths])
        token_rows = torch.cat([torch.full((n,), r, device=self.device) for n, r in zip(lengths, rows)])
        x = self.model.model.embed_tokens(ids)
        cos, sin = self.cos[positions][None], self.sin[positions][None]
        for i, layer in enumerate(self.layers):  # eager: a compiled layer would recompile for each set of lengths
            x = decoder_layer(layer, self.fused[i], x, cos, sin, cache.k[i], cache.v[i], token_rows, positions, None,
                              tuple(lengths))
        last = torch.tensor(lengths, device=self.device).cumsum(0) - 1
        return self._logits(x[0, last][:, None])

    def decode(self, tokens: torch.Tensor, positions: torch.Tensor, cache: KVCache, attend_len: int,
               key_index: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [b, vocab] after one token per cache row 0..b-1: `tokens` [b] at `positions` [b].

        Attends over the first `attend_len` cache entries (a bucket: the steps of one bucket have
        the same shapes, so one CUDA graph serves them all).
        """
        b = tokens.shape[0]
        key_index = torch.arange(attend_len, device=self.device) if key_index is None else key_index[:attend_len]
        mask = torch.where(key_index[None] <= positions[:, None], 0.0, float("-inf")).to(self.dtype)
        mask = mask.view(b, 1, 1, attend_len)
        rows = torch.arange(b, device=self.device)
        x = self.model.model.embed_tokens(tokens[:, None])
        cos, sin = self.cos[positions][:, None], self.sin[positions][:, None]
        # a layer of kernels only (chat.gemv, chat.attention) has nothing left to compile; it hands its rows' sums
        # of squares on to the next norm (the compiled layers, on caches shorter than a bucket, compute their own)
        kernels_only = [fused_products(layer, self.fused[i], b) and attention.uses_split(cache.k, attend_len)
                        for i, layer in enumerate(self.layers)]
        squares = self._squares(b) if any(kernels_only) else None
        handed = None  # the sums of squares of x, where the layer before wrote them
        for i, layer in enumerate(self.layers):
            args = (layer, self.fused[i], x, cos, sin, cache.k[i], cache.v[i], rows, positions, mask)
            if kernels_only[i]:
                x = decoder_layer(*args, squares=(handed, squares[2 * i], squares[2 * i + 1]))
                handed = squares[2 * i + 1]
            else:
                x = self.decode_layer(*args)
                handed = None
        return self._logits(x, handed)

    def _squares(self, b: int) -> torch.Tensor:
        """Zeroed sums of squares [2 * layers, b] for a decode step of b rows: per layer, its attention's residual sum's
        and its output's (the next layer's input); zeroed inside the step's graph where the step is one."""
        size = 2 * len(self.layers) * gemv.MAX_ROWS
        squares = scratch("decode squares", self.device, torch.int64, size)[:size].view(-1, gemv.MAX_ROWS)[:, :b]
        return squares.zero_()

    def eager(self, cache: KVCache, embed: Embed | None = None) -> Forward:
        """A step function over row 0 of `cache` for `chat.decode.generate_tokens` (no graphs, no batching);
        `embed` makes the prompt's input embeddings."""
        pos = 0

        def step(ids: torch.Tensor) -> torch.Tensor:
            nonlocal pos
            n = ids.shape[1]
            if n > 1:
                assert pos == 0, "a prompt is prefilled at the start of the cache only"
                logits = self.prefill(ids, cache, embeds=None if embed is None else embed(ids))
            else:
                logits = self.decode(ids[0], torch.tensor([pos], device=self.device), cache, pos + 1)
            pos += n
            return logits

        return step
