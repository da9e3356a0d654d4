"""The split-KV decode attention (chat.attention) against SDPA with the engine's mask, on random tensors:
cache views of several lengths, rows at different positions, grouped query heads, fp32, bf16 and fp16.

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

# (rows, kv heads, queries per kv head, head dim, attended length, cache length): one-tile chunks of 64 and 128 keys,
# and the last 256 keys a program (two tiles each)
CASES = [(1, 8, 2, 128, 1024, 2048), (3, 2, 2, 16, 300, 300), (2, 4, 3, 32, 2048, 4096), (8, 2, 4, 64, 1024, 1024),
         (4, 8, 2, 16, 4096, 4096)]


def check(device: str) -> None:
    from myassistant.chat.attention import split_kv_attention

    gen = torch.Generator().manual_seed(0)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 1e-2), (torch.float16, 4e-3)):
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


def check_rotary(device: str) -> None:
    """rotary_split_attention from a qkv product's rows: the model's rotary embedding on q and the new key, key and
    value written into the cache at each row's position, attention over keys 0..position (SDPA with the mask)."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    from myassistant.chat.attention import WARM_BLOCK, rotary_split_attention

    gen = torch.Generator().manual_seed(1)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 1e-2), (torch.float16, 4e-3)):
        for rows, kv_heads, group, dim, length, max_len in CASES:
            heads = kv_heads * group
            cache_k, cache_v = (torch.randn(rows + 1, kv_heads, max_len, dim, generator=gen).to(device, dtype)
                                for _ in range(2))
            qkv = torch.randn(rows, (heads + 2 * kv_heads) * dim, generator=gen).to(device, dtype)
            angles = torch.rand(rows, dim // 2, generator=gen) * 6
            cos, sin = (f(torch.cat([angles, angles], -1)).to(device, dtype) for f in (torch.cos, torch.sin))
            positions = torch.randint(0, length, (rows,), generator=gen)
            positions[0] = length - 1
            if rows > 1:
                positions[1] = 0
            positions = positions.to(device)
            q, k_new, v_new = qkv.split([heads * dim, kv_heads * dim, kv_heads * dim], -1)
            q, k_new = apply_rotary_pos_emb(q.view(rows, heads, 1, dim), k_new.view(rows, kv_heads, 1, dim),
                                            cos[:, None], sin[:, None])
            want_k, want_v = cache_k.clone(), cache_v.clone()
            for i, p in enumerate(positions.tolist()):
                want_k[i, :, p], want_v[i, :, p] = k_new[i, :, 0], v_new.view(rows, kv_heads, dim)[i]
            mask = torch.where(torch.arange(length, device=device)[None] <= positions[:, None], 0.0, float("-inf"))
            want = F.scaled_dot_product_attention(
                q.view(rows, kv_heads, group, dim).float(), want_k[:rows, :, :length].float(),
                want_v[:rows, :, :length].float(), scale=dim ** -0.5, attn_mask=mask.view(rows, 1, 1, length))
            # spare programs read the weights after it (chat.fast.warm_after_attention): nothing else changes
            weights = torch.randn(2 * rows + 3, 2 * WARM_BLOCK + 96, generator=gen).to(device, dtype)
            warm = [weights[1:], weights[:2], weights[1:1]] if rows > 1 else [weights]
            weights_before = weights.clone()
            got = rotary_split_attention(qkv, cos, sin, cache_k[:rows, :, :length], cache_v[:rows, :, :length],
                                         positions, dim ** -0.5, warm)
            assert torch.equal(weights, weights_before)
            # bf16 on a GPU: bitwise the model's roundings; float32 up to a fused multiply-add; Triton's interpreter
            # truncates bf16 conversions
            loose = 2 ** -6 if device == "cpu" and dtype == torch.bfloat16 else 1e-6 if dtype == torch.float32 else 0
            same = lambda a, b: torch.allclose(a.float(), b.float(), rtol=loose, atol=loose)  # noqa: E731
            assert same(cache_k, want_k) and torch.equal(cache_v, want_v), f"{dtype} rows {rows}: cache writes"
            err = float((got.float() - want.reshape(rows, -1)).abs().max())
            assert got.shape == (rows, heads * dim) and err <= tol, f"{dtype} rows {rows} length {length}: error {err}"


needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                  reason="no Triton installed (CPU-only torch)")


@needs_triton
@pytest.mark.parametrize("split,chunks", [(64, 4), (64, 16), (128, 16), (512, 16)])
def test_rotary_attention_compiles_for_hopper_without_spilled_registers(split, chunks):
    """The bf16 rotary decode attention of the engine's shapes (head dim 128, two query heads a kv head; a chunk of one
    tile of 64 / 128 keys and of four, up to MAX_CHUNKS chunks combined unrolled) compiled for sm_90 by Triton's own
    ptxas, no GPU needed: no register spilled to local memory (a spill is a memory round trip in every program; an
    earlier form of the kernel, which prefetched a chunk's next tile, spilled 1,140 bytes in the two-tile case, and
    128-key tiles spill at 4 warps)."""
    from benchmarks.gemv_ptx import compile_ptx, ptxas_report
    from myassistant.chat.attention import MAX_CHUNKS, TILE_KEYS, WARM_BLOCK, WARPS, _split_kernel, precision

    assert chunks <= MAX_CHUNKS
    consts = dict(HEAD_DIM=128, BLOCK_G=16, BLOCK_N=min(split, TILE_KEYS), SPLIT=split, CHUNKS=chunks, ROTARY=True,
                  PRECISION=precision(torch.bfloat16, torch.bfloat16), WARM_BLOCK=WARM_BLOCK)
    pointers = {name: "fp32" if name in ("o_ptr", "lse_ptr") else "i64" if name == "pos_ptr" else "i32"
                if name in ("count_ptr", "sink_ptr") or name.startswith("warm") else "bf16"
                for name in _split_kernel.arg_names if name.endswith("_ptr")}
    compiled = compile_ptx(_split_kernel, consts, pointers, warps=WARPS, fp_fusion=False)  # as `_attend` launches it
    report = ptxas_report(compiled.asm["ptx"])
    assert "0 bytes spill stores, 0 bytes spill loads" in report, report


# Two faults of Triton 3.6's interpreter, mended in the interpreted Python:
# - it holds a scalar as a one-element array and takes it as a loop bound by int(array), which NumPy 2.4 refuses
#   ("only 0-dimensional arrays"): kernels looping to a bound computed at run time (benchmarks/grid_barrier_gpu.py)
#   failed under it. It takes the element instead.
# - it multiplies bf16 tiles in tl.dot as the uint16 words that hold them (chat.attention's bf16 dots came out
#   ~1e10): they are widened to fp32 first, which gives the tensor cores' exact products and fp32 sums.
INTERPRETER_SHIM = """
import triton.language as _tl
import triton.runtime.interpreter as _interpreter
if hasattr(_interpreter, "_patch_lang_tensor"):
    _patch = _interpreter._patch_lang_tensor
    def _patch_lang_tensor(tensor, scope):
        _patch(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))
    _interpreter._patch_lang_tensor = _patch_lang_tensor
_dot = _interpreter.InterpreterBuilder.create_dot
def _create_dot(self, a, b, d, *args):
    wide = lambda x: self.cast_impl(x, _tl.float32) if x.dtype.scalar == _tl.bfloat16 else x
    return _dot(self, wide(a), wide(b), d, *args)
_interpreter.InterpreterBuilder.create_dot = _create_dot
"""


def run_interpreted(code: str) -> None:
    """Run `code` in a fresh Python in tests/ with Triton's interpreter on (read when kernels are defined)."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", INTERPRETER_SHIM + code], cwd=Path(__file__).parent, env=env,
                          text=True, capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


@needs_triton
def test_split_kv_attention_equals_sdpa_under_tritons_interpreter():
    run_interpreted("import test_decode_attention as t; t.check('cpu'); t.check_rotary('cpu')")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_split_kv_attention_equals_sdpa():
    check("cuda")
    check_rotary("cuda")
