"""The split-KV decode attention (chat.attention) against SDPA with the engine's mask, on random tensors:
cache views of several lengths, rows at different positions, grouped query heads, fp32 and bf16.

On a GPU the Triton kernels run for real (`gpu`); on a CPU they run under Triton's interpreter when
Triton is installed (CPU-only torch installs have no Triton: then the engine never uses the kernel and
the CPU case is skipped)."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.nn import functional as F

# (rows, kv heads, queries per kv head, head dim, attended length, cache length)
CASES = [(1, 8, 2, 128, 1024, 2048), (3, 2, 2, 16, 300, 300), (2, 4, 3, 32, 2048, 4096), (8, 2, 4, 64, 1024, 1024)]


def check(device: str) -> None:
    from myassistant.chat.attention import split_kv_attention

    gen = torch.Generator().manual_seed(0)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 1e-2)):
        for rows, kv_heads, group, dim, length, max_len in CASES:
            cache_k, cache_v = (torch.randn(rows + 1, kv_heads, max_len, dim, generator=gen).to(device, dtype)
                                for _ in range(2))
            q = torch.randn(rows, kv_heads, group, dim, generator=gen).to(device, dtype)
            positions = torch.randint(0, length, (rows,), generator=gen)
            positions[0] = length - 1  # the whole bucket
            if rows > 1:
                positions[1] = 0  # one key
            positions = positions.to(device)
            k, v = cache_k[:rows, :, :length], cache_v[:rows, :, :length]  # strided views, as the engine passes
            mask = torch.where(torch.arange(length, device=device)[None] <= positions[:, None], 0.0, float("-inf"))
            want = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), scale=dim ** -0.5,
                                                  attn_mask=mask.view(rows, 1, 1, length))
            got = split_kv_attention(q, k, v, positions, dim ** -0.5)
            assert got.shape == q.shape and got.dtype == dtype
            err = float((got.float() - want).abs().max())
            assert err <= tol, f"{dtype} rows {rows} length {length}: max error {err}"


def run_interpreted(code: str) -> None:
    """Run `code` in a fresh Python in tests/ with Triton's interpreter on (read when kernels are defined)."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, env=env, text=True,
                          capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="no Triton installed (CPU-only torch)")
def test_split_kv_attention_equals_sdpa_under_tritons_interpreter():
    run_interpreted("import test_decode_attention as t; t.check('cpu')")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_split_kv_attention_equals_sdpa():
    check("cuda")
