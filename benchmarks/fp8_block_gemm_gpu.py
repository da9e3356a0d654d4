"""The frozen products of a 7B QLoRA step as e4m3 GEMMs with a scale a row (what ``train.qlora_fp8`` runs) against
the same with DeepSeek-V3's block scales (x / dy a scale a 128 values, W a scale a 128 x 128 block), and bf16:
time and error against a float32 product, forward (``x @ W.T``) and input gradient (``dy @ W``).

Why: ``benchmarks/fp8_memorise.py``'s ``block`` form asks whether the finer scales take away e4m3's lag in fitting
at 7B; this asks what they cost on the tensor cores. ``torch._scaled_mm`` tells the scaling from its scales' shapes:
rows (``[M, 1]`` and ``[1, N]``), or on Hopper with CUDA >= 12.9 ``[M, K / 128]`` (stored M-major) with
``[K / 128, N / 128]`` for the 128 x 128 blocks of the second operand.

    python3 -m benchmarks.fp8_block_gemm_gpu [--tokens 4096]

One JSON line a shape and product: microseconds and relative error (Frobenius, against float32) of bf16, ``rows``
and ``blocks`` (an error string where this torch / GPU refuses the form).
"""
from __future__ import annotations

import argparse
import json

import torch

E4M3, E4M3_MAX = torch.float8_e4m3fn, 448.0
SHAPES_7B = {"wqkv": (6144, 4096), "wo": (4096, 4096), "w13": (28672, 4096), "w2": (4096, 14336)}  # [out, in]


def quantised(t: torch.Tensor, rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``t`` [M, K] in e4m3 with a float32 scale a ``rows`` x ``cols`` block (cols 0: a whole row): (q, scale) with
    t ≈ q * scale blockwise, scale [M / rows, K / cols]."""
    m, k = t.shape
    cols = cols or k
    blocks = t.float().reshape(m // rows, rows, k // cols, cols)
    scale = blocks.abs().amax(dim=(1, 3), keepdim=True).clamp(min=1e-30) / E4M3_MAX
    q = (blocks / scale).clamp(-E4M3_MAX, E4M3_MAX).to(E4M3).reshape(m, k)
    return q, scale.reshape(m // rows, k // cols)


def timed(fn, reps: int = 30) -> float:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1000 / reps


def forms(a: torch.Tensor, b: torch.Tensor) -> dict:
    """``a @ b.T`` (a [M, K], b [N, K], bf16) as bf16, rows and blocks: {form: (callable, None) or (None, error)}."""
    out = {"bf16": lambda: a @ b.t()}
    a8, a_rows = quantised(a, 1, 0)
    b8, b_rows = quantised(b, 1, 0)
    out["rows"] = lambda: torch._scaled_mm(a8, b8.t(), scale_a=a_rows, scale_b=b_rows.reshape(1, -1),
                                           out_dtype=torch.bfloat16)
    a8b, a_blocks = quantised(a, 1, 128)
    b8b, b_blocks = quantised(b, 128, 128)
    a_blocks = a_blocks.t().contiguous().t()  # [M, K / 128], M-major
    out["blocks"] = lambda: torch._scaled_mm(a8b, b8b.t(), scale_a=a_blocks, scale_b=b_blocks.t(),
                                             out_dtype=torch.bfloat16)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=4096, help="rows a step multiplies (bs2 x 2,048)")
    args = ap.parse_args()
    torch.manual_seed(0)
    print(json.dumps({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda}))
    for name, (n_out, n_in) in SHAPES_7B.items():
        w = torch.randn(n_out, n_in, device="cuda", dtype=torch.bfloat16) * 0.02
        for product, (a, b) in {  # forward x [T, in] @ W.T; input gradient dy [T, out] @ W = dy @ (W.T).T
            "forward": (torch.randn(args.tokens, n_in, device="cuda", dtype=torch.bfloat16), w),
            "dgrad": (torch.randn(args.tokens, n_out, device="cuda", dtype=torch.bfloat16) * 1e-3,
                      w.t().contiguous()),
        }.items():
            reference = a.float() @ b.float().t()
            row = {"shape": name, "product": product, "m_n_k": [a.shape[0], b.shape[0], a.shape[1]]}
            for form, fn in forms(a, b).items():
                try:
                    error = (fn().float() - reference).norm() / reference.norm()
                    row[form] = {"us": round(timed(fn), 1), "rel_error": round(error.item(), 5)}
                except Exception as err:  # a form this torch / GPU refuses: say so, go on with the others
                    row[form] = {"error": repr(err)[:200]}
            print(json.dumps(row), flush=True)
            del reference
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
