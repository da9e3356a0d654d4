"""chat.sampler: per-row greedy / temperature / top-k / top-p / repetition penalty / seed in one batch."""
from __future__ import annotations


import pytest
import torch
from test_decode_attention import needs_triton, run_interpreted
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

from myassistant.chat.sampler import (RowParams, apply_repetition_penalty, argmax_rows, sample_rows, sorted_draw,
                                      token_noise)

LOGITS = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])


def draw(params: RowParams, rows: int, n: int) -> torch.Tensor:
    """n samples of each of `rows` copies of LOGITS, one a position: [n, rows]."""
    logits = LOGITS.repeat(rows, 1)
    return torch.stack([sample_rows(logits, params, torch.full((rows,), i)) for i in range(n)])


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


def test_greedy_rows_take_the_argmax():
    params = RowParams.empty(2, torch.device("cpu"))
    logits = torch.randn(2, 50)
    assert sample_rows(logits, params, torch.tensor([3, 9])).tolist() == logits.argmax(-1).tolist()


def test_a_rows_draws_depend_on_its_seed_and_position_only():
    logits = torch.randn(3, 1000)
    params = RowParams.empty(3, torch.device("cpu"))
    for row in range(3):
        params.set_row(row, temperature=1.0, top_p=1.0, top_k=0, penalty=1.0, seed=5)
    same = sample_rows(logits[[0, 0, 0]], params, torch.tensor([7, 7, 8]))
    assert same[0] == same[1]  # another row, the same seed and position
    alone = RowParams.empty(1, torch.device("cpu"))
    alone.set_row(0, temperature=1.0, top_p=1.0, top_k=0, penalty=1.0, seed=5)
    assert sample_rows(logits[:1], alone, torch.tensor([7])) == same[0]  # whatever shares the batch
    draws = {tuple(sample_rows(logits, params, torch.tensor([p] * 3)).tolist()) for p in range(20)}
    assert len(draws) > 15  # the position changes the draw


def test_the_noise_is_exponential_and_differs_by_seed_position_and_token():
    noise = token_noise(torch.tensor([1, 1, 2, 2 ** 40 + 1]), torch.tensor([5, 6, 5, 5]), 100_000)
    assert torch.allclose(noise.mean(1), torch.ones(4), atol=0.02)
    assert torch.allclose(noise.var(1), torch.ones(4), atol=0.05)
    assert ((noise > 2.0).float().mean(1) - torch.exp(torch.tensor(-2.0))).abs().max() < 0.01
    for a, b in ((0, 1), (0, 2), (0, 3)):
        assert abs(float(torch.corrcoef(noise[[a, b]])[0, 1])) < 0.02
    assert abs(float(torch.corrcoef(torch.stack([noise[0, :-1], noise[0, 1:]]))[0, 1])) < 0.02


def check_kernel(device: str = "cpu", vocab: int = 5000) -> None:
    """chat.sample_race (on a CPU run by Triton's interpreter) draws the tokens the sorted form draws."""
    from myassistant.chat import sample_race

    check_draws(lambda *args: sample_race.sample(*args), device, vocab)


def check_draws(draw, device: str = "cpu", vocab: int = 5000, spread: float = 3.0) -> None:
    """`draw(logits, params, positions)` picks the tokens `sorted_draw` picks: flat, peaked, top-k, masked rows."""
    generator = torch.Generator().manual_seed(0)
    rows = 7  # 5000: three of chat.sample_race's chunks
    logits = torch.randn(rows, vocab, generator=generator) * spread
    logits[5] = torch.randn(vocab, generator=generator) * 0.01  # flat: the nucleus spans every chunk
    logits[6, :] = float("-inf")  # a vocabulary's masked ids, the largest logit repeated: the first index wins
    logits[6, [7, vocab - 3, vocab // 2]] = 1.0
    logits = logits.to(device)
    params = RowParams.empty(rows, torch.device(device))
    settings = [(0, 1.0, 0), (0.8, 0.8, 0), (1.0, 1.0, 40), (1.0, 1.0, 0), (0.5, 0.5, 3), (0.8, 0.8, 0), (0, 1.0, 0)]
    for row, (temperature, top_p, top_k) in enumerate(settings):
        params.set_row(row, temperature=temperature, top_p=top_p, top_k=top_k, penalty=1.0, seed=2 ** 40 + row)
    for position in range(0, 300, 20):
        positions = torch.full((rows,), position, device=device)
        got = draw(logits, params, positions).tolist()
        assert got == sorted_draw(logits, params, positions).tolist(), position
        assert got[6] == 7


def test_the_draw_without_a_sort_is_the_sorted_draw():
    check_draws(sample_rows)
    check_draws(sample_rows, spread=30.0)  # a trained model's: most tokens out of the race's reach, left unhashed


@needs_triton
def test_the_sampling_kernel_draws_what_the_torch_form_draws_under_tritons_interpreter():
    run_interpreted("import test_sampler as t; t.check_kernel()")


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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_sampling_kernel_draws_what_the_torch_form_draws():
    check_kernel("cuda", vocab=92544)
