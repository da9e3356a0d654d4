"""Decode attention (one new token per cache row) over long caches: split-KV ("flash-decoding") on a GPU.

A decode step's attention reads each row's whole cache for one query token. SDPA's kernels give one
thread block to each (row, kv head) and walk the cache inside it: at batch 1 that is 8 blocks on 132
SMs for InternLM2-1.8B, so a 1k-token cache (an image chat: 576 image tokens) costs latency, not
bandwidth (its keys and values are 4 MB a layer). Here the cache is split into chunks of `SPLIT_KEYS`
keys, one program per (row, kv head, chunk) computes the chunk's softmax-weighted values and its
log-sum-exp, and the last of a row's chunks to finish (a counter per row and kv head) combines them in a
fixed order: one kernel, deterministic; a row whose keys all lie in its first chunk has that program write
the answer (the combination of one chunk, the same bits), without the counter's round trips. Chunks past a
row's position are skipped, so the cost follows the row's real length, not its cache bucket.

`rotary_split_attention` (the bf16 / fp16 decode step of chat.fast) takes the rows of the qkv product
itself: each program applies the rotary embedding to its queries, and the program whose chunk holds the new
token writes the rotated key and the value into the cache, so a layer's rotary, cache writes and
attention are one kernel (they were four: rotary, two cache writes, split and combine; H200, 1.8B shape,
1 row: 176 us a step for the 24 layers against 217). A one-tile chunk's keys and values are loaded before its
queries are rotated, and the new token's key and value are used from registers, not read back from the cache
(H200, 1.8B shape, one chat: 698.6 tokens/s against 679.8 in the same call, measured in a form that also prefetched
a chunk's next tile, which spilled registers for chunks of two tiles: since removed, checked with ptxas only,
benchmarks/README.md, session 23).

A step's attention reads a few MB and leaves the memory idle for microseconds a layer, so its launch can also carry
warm programs (`warm`, chat.fast.warm_after_attention): grid rows after the attention's that read the next products'
weights into L2 meanwhile (H200, 1.8B one chat: 842 -> 859 tokens/s in one call; benchmarks/warm_gpu.py).

The query heads that share a kv head are the rows of one query block (grouped-query attention with
no copy of the cache), padded to 16 for the tensor cores. For bf16 / fp16 caches the dots run on the cache's
own dtype (`SPLIT_DOTS`): q.k is exact there (the queries are rounded to it, as the model rounds them, and a
product of two bf16 numbers is exact in the fp32 sum), and the softmax weights enter the second dot as the
sum of a high and a low bf16 part, 16 bits of mantissa where tf32 keeps 11. The earlier form made fp32 copies of
each tile for tf32 dots: H200, 1.8B shape, one row, 1.1-1.9 us a layer slower (4.1 against 5.4 us at 30 keys, 6.5
against 7.6 at 150, 10.1 against 12.0 at 2,000; benchmarks/attention_gpu.py). fp32 caches take IEEE fp32 dots
(the engine's fp32 replies equal ``generate``'s). Row i attends to keys 0..positions[i],
the same as the engine's mask. Used for cache buckets of `SPLIT_FROM` keys and more on CUDA; shorter
buckets and machines without Triton keep SDPA; on a CPU fp32 caches take a C kernel (`chat.attention_cpu`)
where it builds. The kernels run under Triton's interpreter on a
CPU (TRITON_INTERPRET=1), which is how tests check them without a GPU.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F

from myassistant.chat import attention_cpu
from myassistant.chat.scratch import scratch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: SDPA everywhere
    triton = None
else:
    from myassistant.chat.arrival import last_to_arrive

SPLIT_FROM = 256  # every cache bucket (chat.batch's shortest is 256): SDPA's flash kernel took 8.6 us a layer
# at 256 keys on an H200 (benchmarks/decode_profile.py), 13 % of a batch-1 step
SPLIT_KEYS = 64  # keys per program at least; more for more than MAX_CHUNKS chunks or MAX_PROGRAMS programs
# A row's chunks are combined by one program with every chunk's loads at once (unrolled; a loop of 32 chunks took a
# 2048-key bucket's layer 17.2 us against 11.5 in 16 chunks of 128 keys, benchmarks/attention_gpu.py on an H200)
MAX_CHUNKS = 16
MAX_PROGRAMS = 1024
TILE_KEYS = 128  # keys a loop trip at most (a chunk's keys in one load up to here)
WARPS = 8  # 1.8B shape, H200: 7.9 against 9.2 us a layer at 4 warps (150 keys), 9.3 / 11.0 (600)
SPLIT_DOTS = True  # bf16 / fp16 caches: dots on the cache dtype (off: tf32 on fp32 copies, attention_gpu's ":tf32")
# A step's attention reads a few MB at most and leaves the memory idle for microseconds: spare programs of its launch
# (beside the attention's) read the next products' weights into L2 meanwhile, WARM_BLOCK int32 words a program.
WARM_BLOCK = 8192
WARM_SPANS = 3
HEAD_DIMS = (16, 32, 64, 128, 256)  # widths the kernel takes (powers of two, >= 16 for tensor-core dots)


if triton is not None:
    @triton.jit
    def _rotated(ptr, d, cos, sin, HALF: tl.constexpr, HEAD_DIM: tl.constexpr, dtype: tl.constexpr):
        """x * cos + rotate_half(x) * sin for the head vectors at `ptr` (column d of each; rotate_half(x)[d] is
        -x[d + HALF] in the first half, x[d - HALF] in the second), each product and the sum rounded to `dtype`
        as the model's apply_rotary_pos_emb on `dtype` tensors rounds them."""
        x = tl.load(ptr + d).to(tl.float32)
        partner = tl.load(ptr + (d + HALF) % HEAD_DIM).to(tl.float32)
        partner = tl.where(d < HALF, -partner, partner)
        a = (x * cos).to(dtype).to(tl.float32)
        b = (partner * sin).to(dtype).to(tl.float32)
        return (a + b).to(dtype)

    @triton.jit
    def _warm_block(ptr, start, n, sink_ptr, BLOCK: tl.constexpr):
        """Read BLOCK words of `ptr` from `start` (of n) into L2: their largest is stored only if it is a value no
        weight word is likely to be (never, in practice), which keeps the loads."""
        offs = start + tl.arange(0, BLOCK)
        largest = tl.max(tl.load(ptr + offs, mask=offs < n, other=0), 0)
        tl.store(sink_ptr, largest, mask=largest == 0x7F7F7F7F)

    @triton.jit
    def _warm(w, warm0, warm1, warm2, n0, n1, n2, sink_ptr, BLOCK: tl.constexpr):
        """Warm program w reads its block of the spans warm0, warm1, warm2 (n0, n1, n2 words), one after another."""
        blocks0 = tl.cdiv(n0, BLOCK)
        blocks1 = tl.cdiv(n1, BLOCK)
        if w < blocks0:
            _warm_block(warm0, w * BLOCK, n0, sink_ptr, BLOCK)
        elif w < blocks0 + blocks1:
            _warm_block(warm1, (w - blocks0) * BLOCK, n1, sink_ptr, BLOCK)
        else:
            _warm_block(warm2, (w - blocks0 - blocks1) * BLOCK, n2, sink_ptr, BLOCK)

    @triton.jit
    def _split_kernel(q_ptr, k_ptr, v_ptr, pos_ptr, o_ptr, lse_ptr, out_ptr, count_ptr, new_k_ptr, new_v_ptr,
                      cos_ptr, sin_ptr, scale, sq_b, sq_h, sq_g, sk_b, sk_h, sk_l, sv_b, sv_h, sv_l, so_b, so_h, so_s,
                      so_g, sl_b, sl_h, sl_s, snew_b, sc_b, kv_heads, group, warm0_ptr, warm1_ptr, warm2_ptr,
                      warm_n0, warm_n1, warm_n2, sink_ptr, attention_rows, HEAD_DIM: tl.constexpr,
                      BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr, CHUNKS: tl.constexpr,
                      ROTARY: tl.constexpr, PRECISION: tl.constexpr, WARM_BLOCK: tl.constexpr):
        s = tl.program_id(0)
        bh = tl.program_id(1)
        if bh >= attention_rows:  # a warm program: the next products' weights into L2 while the memory is idle
            _warm((bh - attention_rows) * CHUNKS + s, warm0_ptr, warm1_ptr, warm2_ptr, warm_n0, warm_n1, warm_n2,
                  sink_ptr, WARM_BLOCK)
        else:
            _attention(s, bh, q_ptr, k_ptr, v_ptr, pos_ptr, o_ptr, lse_ptr, out_ptr, count_ptr, new_k_ptr, new_v_ptr,
                       cos_ptr, sin_ptr, scale, sq_b, sq_h, sq_g, sk_b, sk_h, sk_l, sv_b, sv_h, sv_l, so_b, so_h, so_s,
                       so_g, sl_b, sl_h, sl_s, snew_b, sc_b, kv_heads, group, HEAD_DIM, BLOCK_G, BLOCK_N, SPLIT, CHUNKS,
                       ROTARY, PRECISION)

    @triton.jit
    def _attention(s, bh, q_ptr, k_ptr, v_ptr, pos_ptr, o_ptr, lse_ptr, out_ptr, count_ptr, new_k_ptr, new_v_ptr,
                   cos_ptr, sin_ptr, scale, sq_b, sq_h, sq_g, sk_b, sk_h, sk_l, sv_b, sv_h, sv_l, so_b, so_h, so_s,
                   so_g, sl_b, sl_h, sl_s, snew_b, sc_b, kv_heads, group, HEAD_DIM: tl.constexpr,
                   BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr, CHUNKS: tl.constexpr,
                   ROTARY: tl.constexpr, PRECISION: tl.constexpr):
        """Program (chunk s, row and kv head bh) of the split kernel: its chunk's softmax-weighted values, and the
        row's answer where it is the only live chunk or the last to arrive."""
        b = bh // kv_heads
        h = bh % kv_heads
        position = tl.load(pos_ptr + b)
        end = position + 1  # keys 0..position
        start = s * SPLIT
        if start < end:
            stop = tl.minimum(start + SPLIT, end)
            g = tl.arange(0, BLOCK_G)
            d = tl.arange(0, HEAD_DIM)
            rows = g < group
            k_rows = k_ptr + b * sk_b + h * sk_h + d[None, :]
            v_rows = v_ptr + b * sv_b + h * sv_h + d[None, :]
            if SPLIT == BLOCK_N:  # a chunk of one tile: its keys and values in flight while the queries are made
                n = start + tl.arange(0, BLOCK_N)
                k = tl.load(k_rows + n[:, None] * sk_l, mask=(n < stop)[:, None], other=0.0)
                v = tl.load(v_rows + n[:, None] * sv_l, mask=(n < stop)[:, None], other=0.0)
            q_rows = q_ptr + b * sq_b + h * sq_h + tl.where(rows, g, 0)[:, None] * sq_g  # padding rows: row 0
            if ROTARY:  # q rows of a qkv product: rotary here; the new key (rotated) and value into the cache
                dtype = k_ptr.dtype.element_ty
                cos = tl.load(cos_ptr + b * sc_b + d).to(tl.float32)
                sin = tl.load(sin_ptr + b * sc_b + d).to(tl.float32)
                q = _rotated(q_rows, d[None, :], cos[None, :], sin[None, :], HEAD_DIM // 2, HEAD_DIM, dtype)
                new_k = _rotated(new_k_ptr + b * snew_b + h * HEAD_DIM, d, cos, sin, HEAD_DIM // 2, HEAD_DIM, dtype)
                new_v = tl.load(new_v_ptr + b * snew_b + h * HEAD_DIM + d)
                if start <= position and position < stop:  # the chunk that holds the new token: for later steps
                    tl.store(k_ptr + b * sk_b + h * sk_h + position * sk_l + d, new_k)
                    tl.store(v_ptr + b * sv_b + h * sv_h + position * sv_l + d, new_v)
            else:
                q = tl.load(q_rows + d[None, :], mask=rows[:, None], other=0.0)
            if PRECISION != "split":
                q = q.to(tl.float32)
            m = tl.full([BLOCK_G], float("-inf"), tl.float32)
            l = tl.zeros([BLOCK_G], tl.float32)
            acc = tl.zeros([BLOCK_G, HEAD_DIM], tl.float32)
            for n0 in range(0, SPLIT, BLOCK_N):  # constexpr bounds: Triton's interpreter (numpy 2) needs them
                if SPLIT > BLOCK_N:  # a chunk of several tiles (long caches): a tile's loads where it is used
                    n = start + n0 + tl.arange(0, BLOCK_N)
                    k = tl.load(k_rows + n[:, None] * sk_l, mask=(n < stop)[:, None], other=0.0)
                    v = tl.load(v_rows + n[:, None] * sv_l, mask=(n < stop)[:, None], other=0.0)
                valid = n < stop
                if ROTARY:  # this step's key and value from registers (the cache row was read before it was written)
                    here = (n == position)[:, None]
                    k = tl.where(here, new_k[None, :], k)
                    v = tl.where(here, new_v[None, :], v)
                if PRECISION == "split":  # the cache dtype's products are exact in fp32: no fp32 copy of the tile
                    scores = tl.dot(q, tl.trans(k)) * scale
                else:
                    scores = tl.dot(q, tl.trans(k.to(tl.float32)), input_precision=PRECISION) * scale
                scores = tl.where(valid[None, :], scores, float("-inf"))
                m_new = tl.maximum(m, tl.max(scores, 1))
                alpha = tl.exp(m - m_new)
                p = tl.exp(scores - m_new[:, None])
                l = l * alpha + tl.sum(p, 1)
                if PRECISION == "split":  # p as a sum of two cache-dtype numbers (16 bits of mantissa, tf32 has 11)
                    p_high = p.to(v.dtype)
                    p_low = (p - p_high.to(tl.float32)).to(v.dtype)
                    acc = acc * alpha[:, None] + tl.dot(p_high, v) + tl.dot(p_low, v)
                else:
                    acc = acc * alpha[:, None] + tl.dot(p, v.to(tl.float32), input_precision=PRECISION)
                m = m_new
            live = (position + SPLIT) // SPLIT  # the chunks holding keys 0..position
            out_at = out_ptr + bh * group * HEAD_DIM + g[:, None] * HEAD_DIM + d[None, :]
            if live == 1:  # the only live chunk: its result is the answer (the combination of one chunk, same bits)
                tl.store(out_at, (acc / l[:, None]).to(out_ptr.dtype.element_ty), mask=rows[:, None])
            else:
                tl.store(o_ptr + b * so_b + h * so_h + s * so_s + g[:, None] * so_g + d[None, :], acc / l[:, None],
                         mask=rows[:, None])
                tl.store(lse_ptr + b * sl_b + h * sl_h + s * sl_s + g, m + tl.log(l), mask=rows)
                # The last of the row's live chunks to arrive (a counter per row and kv head) combines them all in a
                # fixed order and zeroes the counter for the next launch: one kernel, deterministic.
                if last_to_arrive(count_ptr, bh, live):
                    tl.debug_barrier()
                    m = tl.full([BLOCK_G], float("-inf"), tl.float32)
                    weight = tl.zeros([BLOCK_G], tl.float32)
                    acc = tl.zeros([BLOCK_G, HEAD_DIM], tl.float32)
                    lse_at = lse_ptr + b * sl_b + h * sl_h + g
                    part_at = o_ptr + b * so_b + h * so_h + g[:, None] * so_g + d[None, :]
                    # unrolled: every chunk's loads issued at once, not one round trip a chunk (MAX_CHUNKS: no
                    # register spilled, ptxas for sm_90; tests/test_decode_attention.py)
                    for c in tl.static_range(CHUNKS):
                        m, weight, acc = _merged(m, weight, acc, lse_at + c * sl_s, part_at + c * so_s, rows, c < live)
                    out = acc / weight[:, None]
                    tl.store(out_at, out.to(out_ptr.dtype.element_ty), mask=rows[:, None])
                    tl.atomic_xchg(count_ptr + bh, 0)

    @triton.jit
    def _merged(m, weight, acc, lse_ptr, part_ptr, rows, on):
        """The running combination (max, softmax weight, weighted sum) with one more chunk's (`on`: a live one)."""
        lse = tl.load(lse_ptr, mask=rows & on, other=float("-inf"), cache_modifier=".cg")
        part = tl.load(part_ptr, mask=rows[:, None] & on, other=0.0, cache_modifier=".cg")
        m_new = tl.maximum(m, lse)  # chunk 0 always holds a key: m is finite from there on
        alpha = tl.exp(m - m_new)
        w = tl.exp(lse - m_new)
        return m_new, weight * alpha + w, acc * alpha[:, None] + part * w[:, None]


def precision(q_dtype: torch.dtype, cache_dtype: torch.dtype) -> str:
    """The split kernel's dots: IEEE fp32 for fp32 caches; for bf16 / fp16 caches with queries of the same dtype,
    "split" (the dots on the cache dtype: q.k exact, softmax weights as a high and a low part) where SPLIT_DOTS,
    else tf32 on fp32 copies of the tiles."""
    if cache_dtype == torch.float32:
        return "ieee"
    return "split" if SPLIT_DOTS and q_dtype == cache_dtype else "tf32"


def split_size(rows: int, kv_heads: int, length: int) -> int:
    """Keys per program: SPLIT_KEYS, doubled until a row's kv head has at most MAX_CHUNKS chunks and the grid at most
    MAX_PROGRAMS programs."""
    split = SPLIT_KEYS
    while -(-length // split) > MAX_CHUNKS or rows * kv_heads * -(-length // split) > MAX_PROGRAMS:
        split *= 2
    return split


def _warm_words(warm: Sequence[torch.Tensor], like: torch.Tensor) -> list[torch.Tensor]:
    """The spans to read into L2 (at most WARM_SPANS contiguous tensors) as flat int32 words, padded with empty ones
    on `like`'s device."""
    assert len(warm) <= WARM_SPANS and all(t.is_contiguous() and t.nbytes % 4 == 0 for t in warm)
    spans = [t.reshape(-1).view(torch.int32) for t in warm if t.numel()]
    return spans + [like.new_empty(0, dtype=torch.int32)] * (WARM_SPANS - len(spans))


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, scale: float,
            out: torch.Tensor, rotary: tuple[torch.Tensor, ...] | None = None,
            warm: Sequence[torch.Tensor] = ()) -> None:
    """The split kernel over q [b, kv_heads, group, d] (a strided view) into `out` (its shape, contiguous);
    `rotary`: (new keys, new values [b, kv_heads * d] views, cos, sin [b, d]) when q is unrotated; `warm`: tensors
    its spare programs read into L2 (the products after it)."""
    b, kv_heads, group, head_dim = q.shape
    length = k.shape[2]
    assert k.stride(-1) == 1 and v.stride(-1) == 1 and q.stride(-1) == 1, "head dimensions must be contiguous"
    split = split_size(b, kv_heads, length)
    chunks = -(-length // split)
    block_g = max(16, triton.next_power_of_2(group))
    part = torch.empty(b, kv_heads, chunks, group, head_dim, dtype=torch.float32, device=q.device)
    lse = torch.empty(b, kv_heads, chunks, group, dtype=torch.float32, device=q.device)
    new_k, new_v, cos, sin = rotary if rotary is not None else (q, q, q, q)  # unread without the rotary
    # a zeroed arrival counter per (row, kv head): the last chunk to arrive combines them (each launch leaves 0)
    count = scratch("attention counters", q.device, torch.int32, max(b * kv_heads, 64), zeroed=True)
    spans = _warm_words(warm, q)
    warm_rows = -(-sum(-(-t.numel() // WARM_BLOCK) for t in spans) // chunks)  # rows of `chunks` warm programs
    _split_kernel[(chunks, b * kv_heads + warm_rows)](
        q, k, v, positions, part, lse, out, count, new_k, new_v, cos, sin, scale,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *part.stride()[:4], *lse.stride()[:3],
        new_k.stride(0), cos.stride(0), kv_heads, group, *spans, *(t.numel() for t in spans),
        scratch("attention warm sink", q.device, torch.int32, 1), b * kv_heads, HEAD_DIM=head_dim, BLOCK_G=block_g,
        BLOCK_N=min(split, TILE_KEYS),
        SPLIT=split, CHUNKS=chunks, ROTARY=rotary is not None,
        PRECISION=precision(q.dtype, k.dtype), WARM_BLOCK=WARM_BLOCK, num_warps=WARPS,
        # the rotary embedding's products rounded before their sum, as the model's modules do (a fused
        # multiply-add of bf16 values would round once)
        enable_fp_fusion=rotary is None)


@torch.library.custom_op("myassistant::split_kv_attention", mutates_args=())
def split_kv_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                       scale: float) -> torch.Tensor:
    """Attention of q [b, kv_heads, group, d] over k, v [b, kv_heads, L, d] (strided views of a cache),
    row i over keys 0..positions[i] (< L): [b, kv_heads, group, d]. One Triton kernel (interpreted on a CPU)."""
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    _attend(q if q.stride(-1) == 1 else q.contiguous(), k, v, positions, scale, out)
    return out


@split_kv_attention.register_fake
def _(q, k, v, positions, scale):
    return torch.empty_like(q, memory_format=torch.contiguous_format)


@torch.library.custom_op("myassistant::rotary_split_attention", mutates_args=("k", "v"))
def rotary_split_attention(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           positions: torch.Tensor, scale: float,
                           warm: list[torch.Tensor]) -> torch.Tensor:
    """A decode step's attention from its qkv product's rows `qkv` [b, (heads + 2 kv_heads) * d] in one kernel:
    the rotary embedding (cos, sin [b, d]: each row's at its position) on the queries and the new keys, the new
    keys and values written at positions[i] of cache row i (k, v [b, kv_heads, L, d] views), then attention as
    `split_kv_attention`: [b, heads * d]. The embedding rounds as the model's modules do on its dtype. `warm`: up
    to WARM_SPANS contiguous tensors (the weights of the products after it) that spare programs of the same launch
    read into L2 while the attention leaves the memory idle."""
    b, kv_heads, _, head_dim = k.shape
    heads = qkv.shape[1] // head_dim - 2 * kv_heads
    q = qkv[:, :heads * head_dim].view(b, kv_heads, heads // kv_heads, head_dim)
    new_k, new_v = qkv[:, heads * head_dim:].split(kv_heads * head_dim, 1)
    out = qkv.new_empty(b, heads * head_dim)
    _attend(q, k, v, positions, scale, out, (new_k, new_v, cos, sin), warm)
    return out


@rotary_split_attention.register_fake
def _(qkv, cos, sin, k, v, positions, scale, warm):
    return qkv.new_empty(qkv.shape[0], qkv.shape[1] - 2 * k.shape[1] * k.shape[3])


def uses_split(q: torch.Tensor, length: int) -> bool:
    """Whether a decode step over `length` cache keys attends with the split kernel."""
    return triton is not None and q.is_cuda and length >= SPLIT_FROM and q.shape[-1] in HEAD_DIMS


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                     scale: float) -> torch.Tensor:
    """One decode step's attention: q [b, kv_heads, group, d] over the cache k, v [b, kv_heads, L, d];
    `mask` [b, 1, 1, L] (0 / -inf) hides keys past each row's position (positions [b]). The kernels take
    `positions` instead: the engine's mask is exactly keys 0..positions[i] (chat.fast.StaticCacheDecoder.decode)."""
    if uses_split(q, k.shape[2]):
        return split_kv_attention(q, k, v, positions, scale)
    if attention_cpu.takes(q, k, v, positions):
        return attention_cpu.attend(q, k, v, positions, scale)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
