"""Next tokens for a batch of chats at once, each with its own settings, without leaving the device.

The batched decoder (`chat.batch`) samples every row of a step inside the step's CUDA graph: per-row
temperature, top-k, top-p, repetition penalty and seed live in tensors. Sampling uses the exponential
race (argmax of p / E with E ~ Exp(1) draws a token with probability p) over the logits sorted
descending, so top-p and top-k keep a head of that order; E comes from a hash of the row's seed, the
position it decodes at and the rank: no generator state, so a seeded chat gets the same reply whichever
chats share its steps and however many steps one graph replay runs. Greedy rows take the argmax of the
(penalised) logits: the token ``model.generate`` picks.

On a GPU everything after the sort is one Triton kernel (`_sample_kernel`, a program a row): it reads the
sorted head only as far as top-p / top-k keep it, where the same arithmetic in torch ops (`_sample_torch`,
what a CPU runs) is some twenty kernels over the whole vocabulary.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs
    triton = None

M32 = 0xFFFFFFFF
# odd multipliers below 2^31 (a 32-bit value times one fits an int64: torch's int64 and Triton's wrapping uint32
# give the same bits)
MIX1, MIX2 = 0x7FEB352D, 0x5BD1E995
BLOCK = 2048  # logits a loop trip of the kernel reads


@dataclass
class RowParams:
    """Per-row sampling settings as tensors of shape [rows] on the decode device."""

    greedy: torch.Tensor  # bool
    temperature: torch.Tensor  # float32, > 0 where not greedy
    top_p: torch.Tensor  # float32, 1 = off
    top_k: torch.Tensor  # int64, 0 = off
    penalty: torch.Tensor  # float32, 1 = off
    seed: torch.Tensor  # int64, >= 0: the noise's seed

    @classmethod
    def empty(cls, rows: int, device: torch.device) -> RowParams:
        return cls(torch.ones(rows, dtype=torch.bool, device=device), torch.ones(rows, device=device),
                   torch.ones(rows, device=device), torch.zeros(rows, dtype=torch.long, device=device),
                   torch.ones(rows, device=device), torch.zeros(rows, dtype=torch.long, device=device))

    def set_row(self, row: int, *, temperature: float, top_p: float, top_k: int, penalty: float,
                seed: int = 0) -> None:
        self.greedy[row] = temperature == 0
        self.temperature[row] = temperature or 1.0
        self.top_p[row] = top_p
        self.top_k[row] = top_k
        self.penalty[row] = penalty
        self.seed[row] = seed

    def rows(self, first: int, count: int = 1) -> RowParams:
        """Rows first..first + count - 1 (views: setting them sets these)."""
        return RowParams(*(t[first:first + count] for t in vars(self).values()))


def apply_repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """``RepetitionPenaltyLogitsProcessor`` per row: `seen` [b, vocab] bool marks the ids so far."""
    penalty = penalty[:, None]
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalised, logits)


def argmax_rows(logits: torch.Tensor) -> torch.Tensor:
    """``logits.argmax(dim=-1)`` for [b, vocab] (the first index of each row's largest value) in two reductions.

    torch reduces one long row in a single thread block: 27 us of an H200's time for one row of InternLM2's
    92,544 logits, 2 % of the 1.8B's decode step. Cut into parts, every part is a row of its own and the
    reductions spread over the GPU; the first largest part holds the first largest index.
    """
    b, vocab = logits.shape
    parts = next((p for p in (128, 96, 64, 32, 16) if vocab % p == 0), 1)
    if parts == 1:
        return logits.argmax(dim=-1)
    best, where = logits.view(b, parts, vocab // parts).max(dim=-1)
    part = best.argmax(dim=-1, keepdim=True)
    return (part * (vocab // parts) + where.gather(-1, part))[:, 0]


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A bijection of 32-bit values (int64 tensors in [0, 2^32)) that scatters neighbours: xor-shifts and odd
    multiplications."""
    x = x ^ (x >> 16)
    x = (x * MIX1) & M32
    x = x ^ (x >> 15)
    x = (x * MIX2) & M32
    return x ^ (x >> 16)


def rank_noise(seeds: torch.Tensor, positions: torch.Tensor, ranks: int) -> torch.Tensor:
    """Exp(1) draws [b, ranks] that depend only on each row's seed and position (int64 [b]) and the rank."""
    key = _mix((seeds & M32) ^ _mix(((seeds >> 32) & M32) ^ _mix(positions & M32)))
    bits = _mix(key[:, None] ^ torch.arange(ranks, device=seeds.device))
    return -torch.log(((bits >> 8).float() + 0.5) * 2.0 ** -24)


def sample_rows(logits: torch.Tensor, params: RowParams, positions: torch.Tensor) -> torch.Tensor:
    """Token ids [b] for `logits` [b, vocab] with the settings of rows 0..b-1 of `params`, the noise drawn for
    `positions` [b] (the cache positions the rows decode at)."""
    b = logits.shape[0]
    if logits.is_cuda and triton is not None:
        ranked, order = logits.sort(dim=-1, descending=True)
        out = torch.empty(b, dtype=torch.long, device=logits.device)
        _sample_kernel[(b,)](logits, ranked, order, out, params.greedy, params.temperature, params.top_p,
                             params.top_k, params.seed, positions, logits.stride(0), ranked.stride(0),
                             order.stride(0), V=logits.shape[1], BLOCK=BLOCK, num_warps=8)
        return out
    return _sample_torch(logits.float(), params, positions)


def _sample_torch(logits: torch.Tensor, params: RowParams, positions: torch.Tensor) -> torch.Tensor:
    b, vocab = logits.shape
    greedy_ids = argmax_rows(logits)
    ranked, order = logits.sort(dim=-1, descending=True)
    p = ((ranked - ranked[:, :1]) / params.temperature[:b, None]).exp()
    p = p / p.sum(dim=-1, keepdim=True)
    before = p.cumsum(dim=-1) - p
    # top-p keeps the smallest head of the sorted list whose mass reaches top_p (the first token always)
    top_p, top_k = params.top_p[:b, None], params.top_k[:b, None]
    rank = torch.arange(vocab, device=logits.device)[None]
    keep = ((before < top_p) | (top_p >= 1)) & ((top_k == 0) | (rank < top_k))
    noise = rank_noise(params.seed[:b], positions, vocab)
    choice = argmax_rows(torch.where(keep, p / noise, -1.0))
    sampled = order.gather(-1, choice[:, None])[:, 0]
    return torch.where(params.greedy[:b], greedy_ids, sampled)


if triton is not None:
    _M32 = tl.constexpr(M32)  # a kernel reads module constants as constexprs only
    _MIX1 = tl.constexpr(MIX1)
    _MIX2 = tl.constexpr(MIX2)

    @triton.jit
    def _mix32(x):
        """`_mix` on uint32 tensors (their products wrap at 2^32)."""
        x = x ^ (x >> 16)
        x = x * _MIX1
        x = x ^ (x >> 15)
        x = x * _MIX2
        return x ^ (x >> 16)

    @triton.jit
    def _sample_kernel(logits_ptr, ranked_ptr, order_ptr, out_ptr, greedy_ptr, temp_ptr, top_p_ptr, top_k_ptr,
                       seed_ptr, pos_ptr, stride_l, stride_r, stride_o, V: tl.constexpr, BLOCK: tl.constexpr):
        """`_sample_torch` for one row: the greedy argmax over the logits, or the normaliser over the sorted
        logits and then the race over the kept head only (trips stop where top-p / top-k stop keeping)."""
        row = tl.program_id(0)
        offs = tl.arange(0, BLOCK)
        if tl.load(greedy_ptr + row) != 0:
            best = tl.full([], float("-inf"), tl.float32)
            best_i = tl.full([], 0, tl.int32)
            for start in range(0, V, BLOCK):
                x = tl.load(logits_ptr + row * stride_l + start + offs, mask=start + offs < V,
                            other=float("-inf")).to(tl.float32)
                m = tl.max(x, 0)
                i = tl.argmax(x, 0, tie_break_left=True)
                best_i = tl.where(m > best, start + i, best_i)
                best = tl.maximum(best, m)
            tl.store(out_ptr + row, best_i.to(tl.int64))
        else:
            scale = 1.0 / tl.load(temp_ptr + row)
            top_p = tl.load(top_p_ptr + row)
            top_p = tl.where(top_p >= 1, 2.0, top_p)  # off: above any sum of probabilities
            top_k = tl.load(top_k_ptr + row)
            top_k = tl.where(top_k == 0, V, top_k)  # off: every rank
            ranked = ranked_ptr + row * stride_r
            first = tl.load(ranked).to(tl.float32)
            z = tl.zeros([BLOCK], tl.float32)
            for start in range(0, V, BLOCK):
                x = tl.load(ranked + start + offs, mask=start + offs < V, other=float("-inf")).to(tl.float32)
                z += tl.exp((x - first) * scale)
            z_row = tl.sum(z, 0)
            seed = tl.load(seed_ptr + row)
            position = tl.load(pos_ptr + row)
            key = _mix32((seed & _M32).to(tl.uint32) ^ _mix32(((seed >> 32) & _M32).to(tl.uint32)
                                                            ^ _mix32((position & _M32).to(tl.uint32))))
            before = tl.full([], 0.0, tl.float32)
            win = tl.full([], -1.0, tl.float32)
            win_i = tl.full([], 0, tl.int32)
            start = tl.full([], 0, tl.int32)
            while (start < V) & (before < top_p) & (start < top_k):
                rank = start + offs
                x = tl.load(ranked + rank, mask=rank < V, other=float("-inf")).to(tl.float32)
                p = tl.exp((x - first) * scale) / z_row
                prior = before + tl.cumsum(p, 0) - p
                keep = (rank < V) & (prior < top_p) & (rank < top_k)
                bits = _mix32(key ^ rank.to(tl.uint32))
                noise = -tl.log(((bits >> 8).to(tl.float32) + 0.5) * 5.9604644775390625e-08)
                score = tl.where(keep, p / noise, -1.0)
                m = tl.max(score, 0)
                i = tl.argmax(score, 0, tie_break_left=True)
                win_i = tl.where(m > win, start + i, win_i)
                win = tl.maximum(win, m)
                before += tl.sum(p, 0)
                start += BLOCK
            tl.store(out_ptr + row, tl.load(order_ptr + row * stride_o + win_i))
