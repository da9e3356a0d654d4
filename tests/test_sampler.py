"""chat.sampler: per-row greedy / temperature / top-k / top-p / repetition penalty in one batch."""
from __future__ import annotations

import torch
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

from myassistant.chat.sampler import RowParams, apply_repetition_penalty, argmax_rows, sample_rows

LOGITS = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])


def draw(params: RowParams, rows: int, n: int, seed: int = 0) -> torch.Tensor:
    """n samples of each of `rows` copies of LOGITS: [n, rows]."""
    generator = torch.Generator().manual_seed(seed)
    logits = LOGITS.repeat(rows, 1)
    return torch.stack([sample_rows(logits, params, torch.empty_like(logits).exponential_(generator=generator))
                        for _ in range(n)])


def test_rows_keep_their_own_settings_in_one_batch():
    params = RowParams.empty(4, torch.device("cpu"))
    params.set_row(0, temperature=0, top_p=1.0, top_k=0, penalty=1.0)  # greedy
    params.set_row(1, temperature=1.0, top_p=1.0, top_k=2, penalty=1.0)  # top-k 2
    params.set_row(2, temperature=1.0, top_p=0.5, top_k=0, penalty=1.0)  # top-p 0.5: token 0 has 0.57
    params.set_row(3, temperature=1.0, top_p=1.0, top_k=0, penalty=1.0)  # plain sampling
    samples = draw(params, 4, 4000)
    assert (samples[:, 0] == 0).all()
    assert set(samples[:, 1].tolist()) == {0, 1}
    assert set(samples[:, 2].tolist()) == {0}
    frequencies = torch.bincount(samples[:, 3], minlength=6).float() / len(samples)
    assert torch.allclose(frequencies, LOGITS[0].softmax(-1), atol=0.03)  # the model's distribution


def test_temperature_sharpens_and_flattens():
    params = RowParams.empty(2, torch.device("cpu"))
    params.set_row(0, temperature=0.3, top_p=1.0, top_k=0, penalty=1.0)
    params.set_row(1, temperature=3.0, top_p=1.0, top_k=0, penalty=1.0)
    samples = draw(params, 2, 4000)
    for row, temperature in ((0, 0.3), (1, 3.0)):
        frequencies = torch.bincount(samples[:, row], minlength=6).float() / len(samples)
        assert torch.allclose(frequencies, (LOGITS[0] / temperature).softmax(-1), atol=0.03)


def test_no_noise_means_greedy_for_every_row():
    params = RowParams.empty(2, torch.device("cpu"))
    logits = torch.randn(2, 50)
    assert sample_rows(logits, params, None).tolist() == logits.argmax(-1).tolist()


def test_repetition_penalty_equals_transformers():
    logits = torch.randn(3, 20)
    ids = [[1, 2, 2, 7], [0, 19], [5]]
    seen = torch.zeros(3, 20, dtype=torch.bool)
    for row, row_ids in enumerate(ids):
        seen[row, row_ids] = True
    penalty = torch.tensor([1.3, 0.8, 1.0])
    ours = apply_repetition_penalty(logits, seen, penalty)
    for row, row_ids in enumerate(ids):
        want = RepetitionPenaltyLogitsProcessor(float(penalty[row]))(torch.tensor([row_ids]), logits[row:row + 1].clone())
        assert torch.allclose(ours[row], want[0])


def test_argmax_rows_is_torch_argmax_ties_included():
    generator = torch.Generator().manual_seed(0)
    for vocab in (92544, 1000, 997):  # InternLM2's, one cut in parts, one that is not
        logits = torch.randn(3, vocab, generator=generator)
        logits[1, 5:] = logits[1, 5]  # ties: the first index wins, as torch's
        logits[2] = -1.0
        logits[2, [vocab - 1, vocab // 2]] = 4.0
        assert argmax_rows(logits).tolist() == logits.argmax(dim=-1).tolist()
