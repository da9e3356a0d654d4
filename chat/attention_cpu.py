"""Decode attention over an fp32 KV cache on a CPU: a small C kernel (``attention_cpu.c``, AVX-512 F).

torch's SDPA took ~0.6 ms a layer of InternLM2-1.8B at 8 rows of ~96 keys (~10 GB/s over the cache's
6 MB), a tenth of a decode step; the kernel reads each key and value row once for all the query
heads that share it, at the memory's pace (benchmarks/decode_attention_cpu.py). It computes the same
exact softmax in fp32, so replies are the same. It is compiled at first use (`chat.clib`); where it
does not build (no compiler, no AVX-512), `chat.attention` keeps SDPA.
"""
from __future__ import annotations

import ctypes
import functools
import logging
from pathlib import Path

import torch

from myassistant.chat import clib

log = logging.getLogger(__name__)
SOURCE = Path(__file__).with_name("attention_cpu.c")
CFLAGS = ["-O3", "-mavx512f", "-mfma", "-fopenmp", "-shared", "-fPIC"]
CPU_FLAGS = ("avx512f", "fma")
_I64 = ctypes.c_int64


@functools.cache
def load() -> ctypes.CDLL:
    """The compiled kernel (built once per source and flags); RuntimeError saying why where it cannot run."""
    lib = clib.build(SOURCE, CFLAGS, CPU_FLAGS)
    lib.attention_decode_f32.restype = ctypes.c_int
    lib.attention_decode_f32.argtypes = ([ctypes.c_void_p, _I64, _I64, _I64] * 3
                                         + [ctypes.c_void_p, _I64, _I64, _I64, _I64, _I64, ctypes.c_float,
                                            ctypes.c_void_p, ctypes.c_int])
    return lib


@functools.cache
def available() -> bool:
    """Whether the kernel builds and loads here (says why not, once)."""
    try:
        load()
        return True
    except RuntimeError as err:
        log.info("CPU decode attention kernel off (SDPA instead): %s", err)
        return False


def takes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor) -> bool:
    """Whether `attend` takes these: fp32 CPU tensors, head width a multiple of 16, the cache's head
    dimension contiguous, no autograd (the kernel has no backward), not under torch.compile's tracing."""
    return (q.device.type == "cpu" and q.dtype == k.dtype == v.dtype == torch.float32
            and positions.dtype == torch.int64 and q.shape[-1] % 16 == 0 and k.stride(-1) == 1 and v.stride(-1) == 1
            and not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad))
            and not torch.compiler.is_compiling() and available())


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention of q [b, kv_heads, group, d] over k, v [b, kv_heads, L, d] (strided views of a cache, read in
    place), row i over keys 0..positions[i] (< L): [b, kv_heads, group, d]."""
    b, heads, group, dim = q.shape
    assert k.shape == v.shape == (b, heads, k.shape[2], dim) and positions.shape == (b,), (q.shape, k.shape)
    if q.stride(-1) != 1:
        q = q.contiguous()
    positions = positions.contiguous()
    out = torch.empty(b, heads, group, dim)
    if load().attention_decode_f32(q.data_ptr(), *q.stride()[:3], k.data_ptr(), *k.stride()[:3],
                                   v.data_ptr(), *v.stride()[:3], positions.data_ptr(), b, heads, group, dim,
                                   k.shape[2], scale, out.data_ptr(), torch.get_num_threads()):
        raise MemoryError("attention_cpu: no memory for the scores")
    return out
