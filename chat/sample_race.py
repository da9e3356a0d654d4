"""Top-p / top-k sampling on a GPU without a sort: chat.sampler's exponential race, run in rounds.

The race draws argmin over the kept tokens of E_i / p_i (E_i ~ Exp(1), chat.sampler's hash of the row's seed,
position and token id). The kept tokens (top-p's nucleus, top-k's head) are the tokens whose mass and count of
strictly larger logits stay under top-p and top-k: an upper set by value. So the race can run over every token
above a pivot and check only its winner: if the winner is kept, it is the race's winner over the kept tokens too
(the minimum of a superset, lying in the subset); if not, the pivot rises to the winner's logit (every kept token
lies above it) and the race runs again with the same noise. The winner is the token the sorted form draws (the
same noise, the same kept set), found by passes over the logits that spread over the whole GPU, where torch's
sort of 92,544 logits took 53 us of an H200's step for one row (119 us for eight).

A round is two kernels over chunks of a row (the race, then the mass and count above its winner), the last chunk
of a row to finish combining the chunks' results in a fixed order (deterministic; a counter per row). The first
kernel also finds the row's largest logit, its first index (greedy rows) and the softmax normaliser. A round
keeps the winner with probability at least top-p (the nucleus holds that much of the mass above any pivot), so
ROUNDS rounds are launched and a last kernel, one program a row, finishes the rare row still undecided.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from myassistant.chat.arrival import last_to_arrive
from myassistant.chat.sampler import M32, MIX1, MIX2, RowParams
from myassistant.chat.scratch import scratch

CHUNK = 2048  # logits a program reads
ROUNDS = 3  # rounds launched; P(a row still undecided after them) <= (1 - top_p)^3 (0.008 at top-p 0.8)

_M32 = tl.constexpr(M32)  # a kernel reads module constants as constexprs only
_MIX1 = tl.constexpr(MIX1)
_MIX2 = tl.constexpr(MIX2)
_INF = tl.constexpr(float("inf"))


@triton.jit
def _mix32(x):
    """chat.sampler's `_mix` on uint32 tensors (their products wrap at 2^32)."""
    x = x ^ (x >> 16)
    x = x * _MIX1
    x = x ^ (x >> 15)
    x = x * _MIX2
    return x ^ (x >> 16)


@triton.jit
def _row_key(seed_ptr, pos_ptr, row):
    seed = tl.load(seed_ptr + row)
    position = tl.load(pos_ptr + row)
    return _mix32((seed & _M32).to(tl.uint32) ^ _mix32(((seed >> 32) & _M32).to(tl.uint32)
                                                      ^ _mix32((position & _M32).to(tl.uint32))))


@triton.jit
def _race_keys(x, idx, key, scale, pivot):
    """log E_i - l_i / T for the tokens above `pivot` (+inf elsewhere): the race's winner has the smallest."""
    bits = _mix32(key ^ idx.to(tl.uint32))
    noise = -tl.log(((bits >> 8).to(tl.float32) + 0.5) * 5.9604644775390625e-08)  # chat.sampler.token_noise
    return tl.where(x > pivot, tl.log(noise) - x * scale, _INF)


@triton.jit
def _keep(mass, count, top_p_ptr, top_k_ptr, row, V: tl.constexpr):
    """Whether a token with `mass` and `count` of strictly larger logits is kept (top-p / top-k off: 1 / 0)."""
    top_p = tl.load(top_p_ptr + row)
    top_k = tl.load(top_k_ptr + row)
    return (mass < tl.where(top_p >= 1, 2.0, top_p)) & (count < tl.where(top_k == 0, V + 1, top_k))


@triton.jit
def _first_kernel(logits_ptr, part_ptr, part_i_ptr, count_ptr, state_ptr, won_ptr, greedy_ptr, temp_ptr,
                  seed_ptr, pos_ptr, stride, V: tl.constexpr, C: tl.constexpr, CP: tl.constexpr,
                  CHUNK: tl.constexpr):
    """A chunk's largest logit, its first index, its softmax sum and its race winner; the row's last chunk combines
    them: state [largest, normaliser, pivot, winner's logit], won [decided, winner]; greedy rows are decided."""
    row = tl.program_id(0)
    c = tl.program_id(1)
    idx = c * CHUNK + tl.arange(0, CHUNK)
    x = tl.load(logits_ptr + row * stride + idx, mask=idx < V, other=-float("inf")).to(tl.float32)
    scale = 1.0 / tl.load(temp_ptr + row)
    m = tl.max(x, 0)
    keys = _race_keys(x, idx, _row_key(seed_ptr, pos_ptr, row), scale, -float("inf"))
    part = part_ptr + (row * C + c) * 4
    tl.store(part, m)
    tl.store(part + 1, tl.sum(tl.exp((x - m) * scale), 0))
    tl.store(part + 2, tl.min(keys, 0))
    tl.store(part_i_ptr + (row * C + c) * 2, c * CHUNK + tl.argmax(x, 0, tie_break_left=True))
    tl.store(part_i_ptr + (row * C + c) * 2 + 1, c * CHUNK + tl.argmin(keys, 0, tie_break_left=True))
    if last_to_arrive(count_ptr, row, C):
        cs = tl.arange(0, CP)
        ok = cs < C
        parts = part_ptr + (row * C + cs) * 4
        ms = tl.load(parts, mask=ok, other=-float("inf"), cache_modifier=".cg")
        sums = tl.load(parts + 1, mask=ok, other=0.0, cache_modifier=".cg")
        races = tl.load(parts + 2, mask=ok, other=float("inf"), cache_modifier=".cg")
        largest = tl.max(ms, 0)
        best = tl.argmax(ms, 0, tie_break_left=True)  # the first chunk holding the largest: its first index
        first = tl.load(part_i_ptr + (row * C + best) * 2, cache_modifier=".cg")
        won = tl.load(part_i_ptr + (row * C + tl.argmin(races, 0, tie_break_left=True)) * 2 + 1, cache_modifier=".cg")
        tl.store(state_ptr + row * 4, largest)
        tl.store(state_ptr + row * 4 + 1, tl.sum(sums * tl.exp((ms - largest) * scale), 0))
        tl.store(state_ptr + row * 4 + 2, -float("inf"))
        tl.store(state_ptr + row * 4 + 3, tl.load(logits_ptr + row * stride + won).to(tl.float32))
        greedy = tl.load(greedy_ptr + row) != 0
        tl.store(won_ptr + row * 2, greedy.to(tl.int32))
        tl.store(won_ptr + row * 2 + 1, tl.where(greedy, first, won))
        tl.atomic_xchg(count_ptr + row, 0)


@triton.jit
def _check_kernel(logits_ptr, part_ptr, part_i_ptr, count_ptr, state_ptr, won_ptr, temp_ptr, top_p_ptr,
                  top_k_ptr, stride, V: tl.constexpr, C: tl.constexpr, CP: tl.constexpr, CHUNK: tl.constexpr):
    """A chunk's mass and count of logits above the winner's; the last chunk decides: the winner is kept, or its
    logit becomes the pivot of the next race."""
    row = tl.program_id(0)
    c = tl.program_id(1)
    if tl.load(won_ptr + row * 2) == 0:
        idx = c * CHUNK + tl.arange(0, CHUNK)
        x = tl.load(logits_ptr + row * stride + idx, mask=idx < V, other=-float("inf")).to(tl.float32)
        largest = tl.load(state_ptr + row * 4)
        winner = tl.load(state_ptr + row * 4 + 3)
        above = x > winner
        scale = 1.0 / tl.load(temp_ptr + row)
        tl.store(part_ptr + (row * C + c) * 4, tl.sum(tl.where(above, tl.exp((x - largest) * scale), 0.0), 0))
        tl.store(part_i_ptr + (row * C + c) * 2, tl.sum(above.to(tl.int32), 0))
        if last_to_arrive(count_ptr, row, C):
            cs = tl.arange(0, CP)
            ok = cs < C
            mass = tl.sum(tl.load(part_ptr + (row * C + cs) * 4, mask=ok, other=0.0, cache_modifier=".cg"), 0)
            count = tl.sum(tl.load(part_i_ptr + (row * C + cs) * 2, mask=ok, other=0, cache_modifier=".cg"), 0)
            if _keep(mass / tl.load(state_ptr + row * 4 + 1), count, top_p_ptr, top_k_ptr, row, V):
                tl.store(won_ptr + row * 2, 1)
            else:
                tl.store(state_ptr + row * 4 + 2, winner)
            tl.atomic_xchg(count_ptr + row, 0)


@triton.jit
def _race_kernel(logits_ptr, part_ptr, part_i_ptr, count_ptr, state_ptr, won_ptr, temp_ptr, seed_ptr,
                 pos_ptr, stride, V: tl.constexpr, C: tl.constexpr, CP: tl.constexpr, CHUNK: tl.constexpr):
    """The race over the logits above the pivot: a chunk's winner, then the row's (the last chunk combines)."""
    row = tl.program_id(0)
    c = tl.program_id(1)
    if tl.load(won_ptr + row * 2) == 0:
        idx = c * CHUNK + tl.arange(0, CHUNK)
        x = tl.load(logits_ptr + row * stride + idx, mask=idx < V, other=-float("inf")).to(tl.float32)
        keys = _race_keys(x, idx, _row_key(seed_ptr, pos_ptr, row), 1.0 / tl.load(temp_ptr + row),
                          tl.load(state_ptr + row * 4 + 2))
        tl.store(part_ptr + (row * C + c) * 4 + 2, tl.min(keys, 0))
        tl.store(part_i_ptr + (row * C + c) * 2 + 1, c * CHUNK + tl.argmin(keys, 0, tie_break_left=True))
        if last_to_arrive(count_ptr, row, C):
            cs = tl.arange(0, CP)
            races = tl.load(part_ptr + (row * C + cs) * 4 + 2, mask=cs < C, other=float("inf"), cache_modifier=".cg")
            won = tl.load(part_i_ptr + (row * C + tl.argmin(races, 0, tie_break_left=True)) * 2 + 1,
                          cache_modifier=".cg")
            tl.store(won_ptr + row * 2 + 1, won)
            tl.store(state_ptr + row * 4 + 3, tl.load(logits_ptr + row * stride + won).to(tl.float32))
            tl.atomic_xchg(count_ptr + row, 0)


@triton.jit
def _last_kernel(logits_ptr, out_ptr, state_ptr, won_ptr, temp_ptr, top_p_ptr, top_k_ptr, seed_ptr, pos_ptr, stride,
                 V: tl.constexpr, CHUNK: tl.constexpr):
    """Rounds until the row is decided, one program a row (rows the launched rounds left undecided: rare)."""
    row = tl.program_id(0)
    decided = tl.load(won_ptr + row * 2)
    won = tl.load(won_ptr + row * 2 + 1)
    scale = 1.0 / tl.load(temp_ptr + row)
    key = _row_key(seed_ptr, pos_ptr, row)
    largest = tl.load(state_ptr + row * 4)
    z = tl.load(state_ptr + row * 4 + 1)
    pivot = tl.load(state_ptr + row * 4 + 2)  # the last check's rejected winner
    while decided == 0:
        best = tl.full([], float("inf"), tl.float32)
        for start in range(0, V, CHUNK):
            idx = start + tl.arange(0, CHUNK)
            x = tl.load(logits_ptr + row * stride + idx, mask=idx < V, other=-float("inf")).to(tl.float32)
            keys = _race_keys(x, idx, key, scale, pivot)
            k = tl.min(keys, 0)
            won = tl.where(k < best, start + tl.argmin(keys, 0, tie_break_left=True), won)
            best = tl.minimum(best, k)
        winner = tl.load(logits_ptr + row * stride + won).to(tl.float32)
        mass = tl.full([], 0.0, tl.float32)
        count = tl.full([], 0, tl.int32)
        for start in range(0, V, CHUNK):
            idx = start + tl.arange(0, CHUNK)
            x = tl.load(logits_ptr + row * stride + idx, mask=idx < V, other=-float("inf")).to(tl.float32)
            mass += tl.sum(tl.where(x > winner, tl.exp((x - largest) * scale), 0.0), 0)
            count += tl.sum((x > winner).to(tl.int32), 0)
        decided = _keep(mass / z, count, top_p_ptr, top_k_ptr, row, V).to(tl.int32)
        pivot = winner
    tl.store(out_ptr + row, won.to(tl.int64))


def sample(logits: torch.Tensor, params: RowParams, positions: torch.Tensor) -> torch.Tensor:
    """chat.sampler.sample_rows on a GPU: token ids [b] for `logits` [b, vocab] (rows contiguous)."""
    b, vocab = logits.shape
    assert logits.stride(1) == 1
    chunks = triton.cdiv(vocab, CHUNK)
    device = logits.device
    part = scratch("sample_part", device, torch.float32, b * chunks * 4)
    part_i = scratch("sample_part_i", device, torch.int32, b * chunks * 2)
    count = scratch("sample_count", device, torch.int32, b, zeroed=True)
    state = scratch("sample_state", device, torch.float32, b * 4)
    won = scratch("sample_won", device, torch.int32, b * 2)
    out = torch.empty(b, dtype=torch.long, device=device)
    shape = dict(V=vocab, C=chunks, CP=triton.next_power_of_2(chunks), CHUNK=CHUNK)
    common = (logits, part, part_i, count, state, won)
    _first_kernel[(b, chunks)](*common, params.greedy, params.temperature, params.seed, positions, logits.stride(0),
                               **shape)
    for round_ in range(ROUNDS):
        if round_:
            _race_kernel[(b, chunks)](*common, params.temperature, params.seed, positions, logits.stride(0), **shape)
        _check_kernel[(b, chunks)](*common, params.temperature, params.top_p, params.top_k, logits.stride(0),
                                   **shape)
    _last_kernel[(b,)](logits, out, state, won, params.temperature, params.top_p, params.top_k, params.seed,
                       positions, logits.stride(0), V=vocab, CHUNK=CHUNK)
    return out
