"""The QLoRA fold kernel (trainer.qlora_fold) against bitsandbytes' dequantisation, one JSON line per shape.

    python -m benchmarks.fold_kernel          (SHAPE=1_8b | 7b; a CUDA GPU and bitsandbytes)

For each linear layer shape of the model: microseconds for bitsandbytes' ``dequantize_4bit`` (what
peft's QLoRA layer runs before its GEMM), for that plus the adapter product added in (``W + s B A``
with cuBLAS: the unfused way to fold), and for the fold kernel, which writes ``W + s B A`` in one
pass; with the effective bandwidth of the fold (bytes of bf16 written). ``tiles_us``: the kernel with each tile of
``TILES`` alone, given bf16 adapters (BM x BN / warps: the autotuned list and others); ``fold_us`` is what a layer
runs (the fp32 adapters, the optimizer's copy, cast to bf16, then the autotuned kernel), ``fold_bf16_adapters_us``
the kernel alone.
"""
from __future__ import annotations

import json
import os

import torch

from myassistant.trainer.gpu import qlora_fold

TILES = [(64, 128, 4), (128, 128, 8), (64, 256, 8), (128, 256, 8), (256, 128, 8), (128, 64, 4),
         (64, 64, 4), (64, 128, 8), (128, 64, 8), (128, 128, 16), (64, 64, 8), (32, 128, 4), (32, 256, 8)]
SHAPES = {"1_8b": dict(wqkv=(4096, 2048), wo=(2048, 2048), w1=(8192, 2048), w2=(2048, 8192)),
          "7b": dict(wqkv=(6144, 4096), wo=(4096, 4096), w1=(14336, 4096), w2=(4096, 14336))}


def time_us(fn, iters: int = 20) -> float:
    """Kernel time a call: ``iters`` calls replayed as one CUDA graph (a call's Python launch costs more)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(iters):
            fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    graph.replay()
    start.record()
    for _ in range(5):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / (5 * iters)


def main() -> None:
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbf

    print(torch.__version__, torch.cuda.get_device_name(0), "bitsandbytes", bnb.__version__, flush=True)
    for name, (n_out, n_in) in SHAPES[os.environ.get("SHAPE", "1_8b")].items():
        weight = bnb.nn.Params4bit((torch.randn(n_out, n_in) * 0.02).bfloat16(), requires_grad=False,
                                   quant_type="nf4", compress_statistics=True).cuda()
        lora_a = torch.randn(64, n_in, device="cuda") * 0.02
        lora_b = torch.randn(n_out, 64, device="cuda") * 0.02

        def unfused():
            return bnbf.dequantize_4bit(weight, weight.quant_state).addmm_(lora_b.bfloat16(), lora_a.bfloat16(), alpha=0.25)

        dequant = time_us(lambda: bnbf.dequantize_4bit(weight, weight.quant_state))
        fold = time_us(lambda: qlora_fold.folded_weight(weight, lora_a, lora_b, 0.25))
        a16, b16 = lora_a.bfloat16(), lora_b.bfloat16()
        bf16_adapters = time_us(lambda: qlora_fold.folded_weight(weight, a16, b16, 0.25))
        tiles = {f"{bm}x{bn}/{w}": round(time_us(lambda: qlora_fold.folded_weight_launched(
            weight, a16, b16, 0.25, BM=bm, BN=bn, num_warps=w)), 1) for bm, bn, w in TILES}
        print(json.dumps(dict(case=f"fold_{name}", shape=[n_out, n_in], bnb_dequant_us=round(dequant, 1),
                              dequant_plus_addmm_us=round(time_us(unfused), 1), fold_us=round(fold, 1),
                              fold_vs_dequant=round(dequant / fold, 2),
                              fold_gb_s=round(n_out * n_in * 2.5 / fold / 1e3),
                              fold_bf16_adapters_us=round(bf16_adapters, 1), tiles_us=tiles)), flush=True)


if __name__ == "__main__":
    main()
