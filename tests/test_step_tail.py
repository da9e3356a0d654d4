"""chat.step_tail: a decode step's last kernel (next inputs, positions, the tokens' host slot) against torch ops."""
from __future__ import annotations


import pytest
import torch
from test_decode_attention import needs_triton, run_interpreted

from myassistant.chat.step_tail import finish_step, handoff_works


def check(device: str = "cpu") -> None:
    """Three steps of 3 of 5 rows: tokens and positions as torch's ops leave them, slot k % 2 holding step k's."""
    rows, b = 5, 3
    if device == "cuda":
        host, count = handoff_works(torch.device(device), rows)
    else:  # the interpreter's kernel reads and writes CPU tensors
        host, count = torch.zeros(2, rows, dtype=torch.long), torch.zeros(1, dtype=torch.long)
    tokens = torch.zeros(rows, dtype=torch.long, device=device)
    positions = torch.tensor([7, 3, 9, 4, 0], device=device)
    live = torch.tensor([1, 0, 1, 1, 0], device=device)
    want_positions = positions.clone()
    for step in range(3):
        next_tokens = torch.tensor([11, 22, 33], device=device) * (step + 1)
        finish_step(next_tokens, tokens, positions, live, host, count)
        if device == "cuda":
            torch.cuda.synchronize()
        want_positions[:b] += live[:b]
        assert tokens.tolist() == [*next_tokens.tolist(), 0, 0]
        assert positions.tolist() == want_positions.tolist()
        assert host[step % 2].tolist() == [*next_tokens.tolist(), 0, 0] and int(count) == step + 1


def test_without_a_host_buffer_the_tail_is_torch_ops():
    tokens, positions, live = torch.zeros(4, dtype=torch.long), torch.tensor([5, 6, 7, 8]), torch.tensor([1, 1, 0, 1])
    finish_step(torch.tensor([3, 4]), tokens, positions, live, None, None)
    assert tokens.tolist() == [3, 4, 0, 0] and positions.tolist() == [6, 7, 7, 8]


@needs_triton
def test_step_tail_kernel_under_tritons_interpreter():
    run_interpreted("import test_step_tail as t; t.check()")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_step_tail_stores_into_pinned_host_memory():
    assert handoff_works(torch.device("cuda"), 8) is not None, "the kernel's store into pinned memory did not work"
    check("cuda")
