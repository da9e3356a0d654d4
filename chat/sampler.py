"""Next tokens for a batch of chats at once, each with its own settings, without leaving the device.

The batched decoder (`chat.batch`) samples every row of a step inside the step's CUDA graph: per-row
temperature, top-k, top-p, repetition penalty and seed live in tensors. Sampling uses the exponential
race (argmax of p / E with E ~ Exp(1) draws a token with probability p) over the tokens top-p and top-k
keep; E comes from a hash of the row's seed, the position it decodes at and the token id: no generator
state, so a graph can hold it and a seeded chat gets the same reply whichever chats share its steps.
Greedy rows take the argmax of the (penalised) logits: the token ``model.generate`` picks.

Neither a CPU nor a GPU sorts the logits for top-p / top-k: the kept tokens are an upper set by value, so
the race runs over every token above a pivot and only its winner is checked (`chat.sample_race` on a GPU,
`_race_rounds` here); a sort of 92,544 logits took 53 us of an H200's 1.4 ms step and 12-14 ms of a 2-core CPU's.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

try:
    import triton
except ImportError:  # CPU-only installs: the torch form everywhere
    triton = None

M32 = 0xFFFFFFFF
# odd multipliers below 2^31 (a 32-bit value times one fits an int64: torch's int64 and Triton's wrapping uint32
# give the same bits)
MIX1, MIX2 = 0x7FEB352D, 0x5BD1E995


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


def token_noise(seeds: torch.Tensor, positions: torch.Tensor, vocab: int) -> torch.Tensor:
    """Exp(1) draws [b, vocab] that depend only on each row's seed and position (int64 [b]) and the token id."""
    bits = _mix(_row_key(seeds, positions)[:, None] ^ torch.arange(vocab, device=seeds.device))
    return _exponential(bits)


def _row_key(seeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    return _mix((seeds & M32) ^ _mix(((seeds >> 32) & M32) ^ _mix(positions & M32)))


def _exponential(bits: torch.Tensor) -> torch.Tensor:
    """Exp(1) draws from hashed 32-bit values: the top 24 bits as a uniform in (0, 1), then -log."""
    return -torch.log(((bits >> 8).float() + 0.5) * 2.0 ** -24)


def sample_rows(logits: torch.Tensor, params: RowParams, positions: torch.Tensor) -> torch.Tensor:
    """Token ids [b] for `logits` [b, vocab] with the settings of rows 0..b-1 of `params`, the noise drawn for
    `positions` [b] (the cache positions the rows decode at)."""
    if logits.is_cuda and triton is not None:
        from myassistant.chat import sample_race

        return sample_race.sample(logits, params, positions)
    return _race_rounds(logits.float(), params, positions)


# E ~ Exp(1) as drawn lies in [-log(1 - 2^-25), -log(2^-25)], so log E in [-17.33, 2.86]: a token whose scaled logit is
# more than 20.19 under its row's largest never wins a race the largest takes part in (every round's does)
RACE_REACH = 20.5


def _race_keys(scaled: torch.Tensor, seeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """log E - scaled logit, the race's keys [b, vocab] (the smallest wins), +inf for tokens out of the race's
    reach: the noise is hashed only for tokens that can win (most of a trained model's vocabulary cannot)."""
    b, vocab = scaled.shape
    reach = scaled >= scaled.max(dim=-1, keepdim=True).values - RACE_REACH
    if int(reach.sum()) * 4 > reach.numel():  # most can win (a random model's flat logits): hash every token
        return token_noise(seeds, positions, vocab).log() - scaled
    rows, ids = reach.nonzero(as_tuple=True)
    noise = _exponential(_mix(_row_key(seeds, positions)[rows] ^ ids))
    keys = torch.full_like(scaled, float("inf"))
    keys[rows, ids] = noise.log() - scaled[rows, ids]
    return keys


def _race_rounds(logits: torch.Tensor, params: RowParams, positions: torch.Tensor) -> torch.Tensor:
    """chat.sample_race's rounds in torch ops (a CPU): every row's race over the tokens above its pivot, until each
    row's winner is kept (the host reads whether after a round). A sort of 92,544 logits took 12-14 ms here."""
    b, vocab = logits.shape
    out = argmax_rows(logits)
    scale = 1.0 / params.temperature[:b, None]
    mass = ((logits - logits.max(dim=-1, keepdim=True).values) * scale).exp()
    mass = mass / mass.sum(dim=-1, keepdim=True)
    keys = _race_keys(logits * scale, params.seed[:b], positions)
    top_p = params.top_p[:b]
    top_k = torch.where(params.top_k[:b] == 0, vocab + 1, params.top_k[:b])
    pivot = torch.full((b, 1), float("-inf"), device=logits.device)
    undecided = ~params.greedy[:b]
    while bool(undecided.any()):
        won = torch.where(logits > pivot, keys, float("inf")).argmin(dim=-1)
        winner = logits.gather(-1, won[:, None])
        above = logits > winner
        kept = (((mass * above).sum(dim=-1) < top_p) | (top_p >= 1)) & (above.sum(dim=-1) < top_k)
        out = torch.where(undecided & kept, won, out)
        undecided &= ~kept
        pivot = torch.where(undecided[:, None], winner, pivot)
    return out


def sorted_draw(logits: torch.Tensor, params: RowParams, positions: torch.Tensor) -> torch.Tensor:
    """The draw by its definition, over the logits sorted descending: top-p keeps the smallest head whose mass
    reaches top_p (the first token always), top-k the first top_k, and the race runs over that head. What
    `sample_rows` equals without sorting (the tests' and benchmarks' yardstick)."""
    b, vocab = logits.shape
    greedy_ids = argmax_rows(logits)
    ranked, order = logits.sort(dim=-1, descending=True)
    p = ((ranked - ranked[:, :1]) / params.temperature[:b, None]).exp()
    p = p / p.sum(dim=-1, keepdim=True)
    before = p.cumsum(dim=-1) - p
    top_p, top_k = params.top_p[:b, None], params.top_k[:b, None]
    rank = torch.arange(vocab, device=logits.device)[None]
    keep = ((before < top_p) | (top_p >= 1)) & ((top_k == 0) | (rank < top_k))
    noise = token_noise(params.seed[:b], positions, vocab).gather(-1, order)
    choice = argmax_rows(torch.where(keep, p / noise, -1.0))
    sampled = order.gather(-1, choice[:, None])[:, 0]
    return torch.where(params.greedy[:b], greedy_ids, sampled)
