"""Int8 (or int4) weights with a scale per block of 32 (llama.cpp q8_0's / q4_0's granularity) for CPU decoding.

torch's int8 kernels scale weights per output channel and (fbgemm) activations per token, which is
coarse where a row has outliers: the 1.8B shape's logits error was twice llama.cpp q8_0's
(benchmarks/cpu_serving.py). Here a small C kernel (``int8_blocks.c``, AVX-512 VNNI) keeps a scale
per 32 weights (fp16, 1.0625 bytes a weight like q8_0) and quantises the activations per 32 values
of each row, so it reads as few bytes as q8_0 and rounds no more. It is compiled with the system's C
compiler at first use and cached (`chat.clib`); where there is no compiler or no
AVX-512 VNNI, `load` says why and `chat.quant` uses torch's kernels.
"""
from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch

from myassistant.chat import clib

BLOCK = 32  # columns per scale, as in the C source
GROUP = 16  # output rows interleaved per 64-byte vector
SOURCE = Path(__file__).with_name("int8_blocks.c")
CFLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni", "-mf16c", "-mfma", "-fopenmp",
          "-shared", "-fPIC"]
# the scales a weight block tries, by bits: its maximum's * (1 + i * step) for |i| <= steps
WEIGHT_STEPS = {8: (16, 0.003), 4: (16, 0.02)}
CPU_FLAGS = ("avx512f", "avx512bw", "avx512vl", "avx512_vnni", "f16c")


@functools.cache
def load() -> ctypes.CDLL:
    """The compiled kernel (built once per source and flags); RuntimeError saying why where it cannot run."""
    lib = clib.build(SOURCE, CFLAGS, CPU_FLAGS)
    lib.int8_blocks_linear.restype = ctypes.c_int
    lib.int8_blocks_linear.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
                                       ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
    lib.int8_blocks_quantize.restype = None
    lib.int8_blocks_quantize.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int, ctypes.c_float,
                                         ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    return lib


def fits(linear: torch.nn.Linear) -> bool:
    """Whether the kernel takes this layer (its inputs come in whole blocks)."""
    return linear.in_features % BLOCK == 0


@torch.no_grad()
def pack(weight: torch.Tensor, bits: int = 8, chunk_rows: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes in the kernel's interleaved layout, fp16 scales) of a [out, in] weight: int8 + 128, or for
    ``bits=4`` int4 + 8 with two columns' codes a byte.

    Each block's scale is the best of WEIGHT_STEPS around its maximum's (C: `round_block`); rows are
    converted `chunk_rows` at a time, so a bf16 lm_head is not held in fp32 whole."""
    n, k = weight.shape
    groups = -(-n // GROUP)
    codes = torch.zeros(groups * GROUP, k, dtype=torch.int8)
    scales = torch.zeros(groups * GROUP, k // BLOCK, dtype=torch.int16)  # fp16 bits
    steps, step = WEIGHT_STEPS[bits]
    for start in range(0, n, chunk_rows):
        rows = weight[start:start + chunk_rows].float().contiguous()
        load().int8_blocks_quantize(rows.data_ptr(), len(rows), k, steps, step, 1, 127 if bits == 8 else 8,
                                    codes[start:].data_ptr(), scales[start:].data_ptr())
    offset = 128 if bits == 8 else 8  # unsigned: VNNI multiplies unsigned by signed bytes
    codes = (codes.to(torch.int16) + offset).to(torch.uint8)
    codes = codes.reshape(groups, GROUP, k // 4, 4).permute(0, 2, 1, 3).contiguous()  # [group, 4 columns, row, 4]
    if bits == 4:  # columns 8j..8j+3 in the low nibbles, 8j+4..8j+7 in the high ones
        pairs = codes.reshape(groups, k // 8, 2, GROUP * 4)
        codes = (pairs[:, :, 0] | (pairs[:, :, 1] << 4)).contiguous()
    scales = scales.view(torch.float16).reshape(groups, GROUP, k // BLOCK).permute(0, 2, 1).contiguous()
    return codes, scales


def linear(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, out_features: int, bits: int = 8) -> torch.Tensor:
    """x [rows, in] @ W.T for the packed W, float32; each row computed on its own."""
    x = x.float().contiguous()
    out = torch.empty(x.shape[0], out_features)
    if load().int8_blocks_linear(x.data_ptr(), x.shape[0], x.shape[1], codes.data_ptr(), scales.data_ptr(),
                                 out_features, bits, out.data_ptr(), torch.get_num_threads()):
        raise MemoryError("int8_blocks: no memory for the activations' int8 copy")
    return out
