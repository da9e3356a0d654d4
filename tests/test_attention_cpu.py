"""The CPU decode attention kernel (chat.attention_cpu) against SDPA with the engine's mask, on random fp32
caches: strided cache views, rows at different positions (masked tails), 1-4 query heads per kv head, head
widths 64 and 128; and SDPA where the kernel does not build or does not take the tensors."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch.nn import functional as F

from myassistant.chat import attention_cpu
from myassistant.chat.attention import decode_attention

needs_kernel = pytest.mark.skipif(not attention_cpu.available(), reason="the kernel does not build or run here")
# (rows, kv heads, queries per kv head, head dim, attended length, cache length)
CASES = [(8, 8, 2, 128, 96, 256), (1, 8, 2, 128, 1, 16), (3, 2, 1, 64, 17, 40), (5, 4, 4, 128, 300, 512),
         (4, 2, 4, 64, 50, 64), (2, 3, 3, 32, 33, 33), (2, 1, 12, 16, 70, 80)]


def engine_inputs(rows: int, kv_heads: int, group: int, dim: int, length: int, max_len: int, seed: int = 0):
    """q, the cache views k and v (rows 0..rows-1 of a cache with one row more), positions, the engine's mask."""
    gen = torch.Generator().manual_seed(seed)
    cache_k, cache_v = (torch.randn(rows + 1, kv_heads, max_len, dim, generator=gen) for _ in range(2))
    q = torch.randn(rows, kv_heads, group, dim, generator=gen)
    positions = torch.randint(0, length, (rows,), generator=gen)
    positions[0] = length - 1  # the whole view
    if rows > 1:
        positions[1] = 0  # one key
    mask = torch.where(torch.arange(length)[None] <= positions[:, None], 0.0, float("-inf")).view(rows, 1, 1, length)
    return q, cache_k[:rows, :, :length], cache_v[:rows, :, :length], positions, mask


@needs_kernel
@pytest.mark.parametrize("shape", CASES, ids=lambda s: "rows{}-heads{}-group{}-dim{}-len{}-max{}".format(*s))
def test_kernel_equals_sdpa_with_the_engines_mask(shape):
    q, k, v, positions, mask = engine_inputs(*shape)
    scale = shape[3] ** -0.5
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    exact = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask.double(), scale=scale)
    assert attention_cpu.takes(q, k, v, positions)
    got = decode_attention(q, k, v, mask, positions, scale)
    assert got.shape == q.shape and got.dtype == torch.float32
    assert torch.allclose(got, want, rtol=1e-5, atol=2e-6), float((got - want).abs().max())
    # as close to float64 as SDPA is: the same exact softmax, other rounding
    assert (got - exact).abs().max() <= 2 * (want - exact).abs().max() + 1e-6


@needs_kernel
def test_each_row_and_head_is_its_own_whatever_the_threads():
    q, k, v, positions, _ = engine_inputs(8, 8, 2, 128, 96, 128, seed=1)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = attention_cpu.attend(q, k, v, positions, 0.1)
        torch.set_num_threads(2)
        assert torch.equal(attention_cpu.attend(q, k, v, positions, 0.1), alone)
    finally:
        torch.set_num_threads(threads)
    first = attention_cpu.attend(q[:1], k[:1], v[:1], positions[:1], 0.1)
    assert torch.equal(first, alone[:1])  # a chat alone or batched: the same numbers


def test_tensors_the_kernel_does_not_take_go_to_sdpa():
    q, k, v, positions, mask = engine_inputs(2, 2, 2, 64, 20, 32)
    assert not attention_cpu.takes(q.bfloat16(), k.bfloat16(), v.bfloat16(), positions)
    assert not attention_cpu.takes(q[..., :40], k[..., :40], v[..., :40], positions)  # not a multiple of 16 wide
    q.requires_grad_()
    assert not attention_cpu.takes(q, k, v, positions)  # no backward in C
    out = decode_attention(q, k, v, mask, positions, 0.125)
    out.sum().backward()
    assert q.grad is not None
    got = decode_attention(q.detach().bfloat16(), k.bfloat16(), v.bfloat16(), mask.bfloat16(), positions, 0.125)
    assert got.dtype == torch.bfloat16 and torch.allclose(got.float(), out.detach(), atol=3e-2)


def test_without_a_c_compiler_decode_attention_is_sdpa(tmp_path):
    env = os.environ | {"CC": str(tmp_path / "no-such-cc"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    code = ("import torch, test_attention_cpu as t\n"
            "from torch.nn import functional as F\n"
            "from myassistant.chat import attention_cpu\n"
            "from myassistant.chat.attention import decode_attention\n"
            "q, k, v, positions, mask = t.engine_inputs(3, 2, 2, 64, 40, 64)\n"
            "got = decode_attention(q, k, v, mask, positions, 0.125)\n"
            "print(attention_cpu.available(), torch.equal(got, F.scaled_dot_product_attention(q, k, v, "
            "attn_mask=mask, scale=0.125)))\n"
            "try:\n    attention_cpu.load()\nexcept RuntimeError as err:\n    print(err)")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(__file__))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "False True"
    assert lines[1] in ("no C compiler (" + str(tmp_path / "no-such-cc") + ": No such file or directory)",
                        "this CPU lacks avx512f", "this CPU lacks avx512f, fma")
