"""The decode step's matrix products (chat.gemv) against cuBLAS (F.linear and the modules around it), per shape.

    python3 -m benchmarks.gemv_gpu [--shape internlm2-1.8b] [--sweep]

For each product of a decode step (qkv with the input norm, o_proj + residual, gate/up with the norm and
SiLU*mul, down_proj + residual, lm_head with the final norm) and 1 / 8 rows: the error of the fused
kernel against the module chain in float64, and the GPU time of both as CUDA graphs that cycle through
enough copies of the weight to miss the 60 MB L2 (every product reads its weight from memory, as in a
decode step), as bytes of weight read / time against the copy bandwidth measured in the same run.
``--bits 8|4``: ours on weight-only int8 / int4 copies (cuBLAS on their dequantised bf16 matrices; the bandwidth
fraction counts the quantised bytes). ``--sweep`` times every (BLOCK_N, BLOCK_K, SPLIT, warps, stages) of a small
grid per shape and prints the best. ``ours_squares_handed_on_us``: the same product with its norm's sums of squares
given (qkv, gate/up, lm_head) or its output's handed on (o_proj, down), as a decode step runs them. ``--no-norm``:
the products without their RMSNorm prologue (what the norm's instructions cost a product: not a decode step's form).
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.decode_cpu import SHAPES  # noqa: E402
from benchmarks.decode_gpu import copy_bandwidth, emit  # noqa: E402
from myassistant.chat import gemv, int_weights  # noqa: E402

# (BLOCK_N, BLOCK_K, SPLIT, warps, stages)
SWEEP = list(itertools.product((16, 32, 64), (256,), (1, 2, 4, 8), (4,), (3, 4)))


def products(shape: dict) -> dict[str, tuple[int, int, bool, bool, bool]]:
    """name: (N, K, norm, gated, residual) of the weight matrices a decode step multiplies."""
    hidden, inter = shape["hidden_size"], shape["intermediate_size"]
    kv = hidden // shape["num_attention_heads"] * shape["num_key_value_heads"]
    return {"qkv": (hidden + 2 * kv, hidden, True, False, False), "o_proj": (hidden, hidden, False, False, True),
            "gate_up": (2 * inter, hidden, True, True, False), "down": (hidden, inter, False, False, True),
            "lm_head": (shape["vocab_size"], hidden, True, False, False)}


def reference(x, w, res, nw, gated, out_float):
    h = x
    if nw is not None:
        hf = x.float()
        h = nw * (hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + 1e-5)).to(x.dtype)
    y = F.linear(h, w)
    if gated:
        g, u = y.chunk(2, -1)
        y = F.silu(g) * u
    if res is not None:
        y = res + y
    return y.float() if out_float else y


def graph_time(fn, copies: int, reps: int = 5) -> float:
    """Seconds per call of fn(i) for i over the weight copies, captured as one CUDA graph."""
    for i in range(copies):
        fn(i)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(copies):
            fn(i)
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1e3 / reps / copies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=SHAPES, default="internlm2-1.8b")
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--bits", type=int, choices=(16, 8, 4), default=16, help="weight-only int8 / int4 for ours")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--products", nargs="+", help="only these (qkv o_proj gate_up down lm_head)")
    parser.add_argument("--no-norm", action="store_true", help="leave the norm prologue out (see above)")
    args = parser.parse_args(argv)
    bandwidth = copy_bandwidth()
    emit("copy_bandwidth", tb_per_s=round(bandwidth / 1e12, 3))
    torch.manual_seed(0)
    dt = torch.bfloat16
    for name, (n, k, norm, gated, residual) in products(SHAPES[args.shape]).items():
        if args.products and name not in args.products:
            continue
        norm = norm and not args.no_norm
        copies = max(2, -(-(512 << 20) // (n * k * 2)))  # >= 512 MB of weights: none of them stays in L2
        dense = [torch.randn(n, k, device="cuda", dtype=dt) * k ** -0.5 for _ in range(copies)]
        # ours: (weight, scale) as chat.gemv takes them; quantised ones against their dequantised matrix
        weights = [(w, None) if args.bits == 16 else tuple(int_weights.quantize(w, args.bits)) for w in dense]
        if args.bits < 16:
            dense = [int_weights.dequantize(int_weights.QuantWeight(*w), dt) for w in weights]
        nw = (1 + 0.1 * torch.randn(k, device="cuda")).to(dt) if norm else None
        out_n = n // 2 if gated else n
        for rows in args.rows:
            x = torch.randn(rows, k, device="cuda", dtype=dt)
            res = torch.randn(rows, out_n, device="cuda", dtype=dt) if residual else None
            out_float = name == "lm_head"
            ours = gemv.gemv(x, *weights[0], res, nw, 1e-5, gated, out_float)
            exact = reference(x.double(), dense[0].double(), None if res is None else res.double(),
                              None if nw is None else nw.double(), gated, False)
            cublas = reference(x, dense[0], res, nw, gated, out_float)
            err = lambda y: float((y.double() - exact).norm() / exact.norm())  # noqa: E731
            t_ours = graph_time(lambda i: gemv.gemv(x, *weights[i], res, nw, 1e-5, gated, out_float), copies)
            t_cublas = graph_time(lambda i: reference(x, dense[i], res, nw, gated, out_float), copies)
            # the norm's sums of squares handed on by the product before (taken / left: chat.gemv_epilogue)
            squares = torch.zeros(rows, dtype=torch.int64, device="cuda")
            handed = (lambda i: gemv.gemv(x, *weights[i], res, nw, 1e-5, gated, out_float, squares)) if norm else (
                lambda i: gemv.gemv_squares(x, *weights[i], res, nw, 1e-5, gated, out_float, None, squares))
            t_handed = graph_time(handed, copies) if norm or residual else None
            ideal = sum(t.numel() * t.element_size() for t in weights[0] if t is not None) / bandwidth
            emit("gemv", bits=args.bits, product=name, n=n, k=k, rows=rows, ours_us=round(t_ours * 1e6, 2),
                 ours_squares_handed_on_us=t_handed and round(t_handed * 1e6, 2),
                 cublas_us=round(t_cublas * 1e6, 2), ours_of_bandwidth=round(ideal / t_ours, 3),
                 cublas_of_bandwidth=round(ideal / t_cublas, 3), error_ours=f"{err(ours):.2e}",
                 error_cublas=f"{err(cublas):.2e}",
                 picked=[v for key, v in gemv._picked.items() if key[:2] == (out_n, k)
                         and key[-1] == gemv.tile_rows(rows) and key[-2] == weights[0][0].dtype],
                 candidates_us={" ".join(map(str, c)): round(ms * 1e3, 2) for key, times in gemv.timed.items()
                                if key[:2] == (out_n, k) and key[-1] == gemv.tile_rows(rows)
                                and key[-2] == weights[0][0].dtype
                                for c, ms in sorted(times.items(), key=lambda item: item[1])})
            if args.sweep:
                out = torch.empty(rows, out_n, dtype=torch.float32 if out_float else dt, device="cuda")
                times = {}
                for config in SWEEP:
                    if args.bits == 4:  # an int4 block spans one group of columns
                        config = (config[0], int_weights.GROUP, *config[2:])
                    if k % (config[1] * config[2]) or config in times:
                        continue
                    try:
                        times[config] = graph_time(lambda i: gemv._launch(x, *weights[i], out, res, nw, 1e-5, gated,
                                                                          config), copies, reps=3)
                    except Exception as e:  # noqa: BLE001 - a config that does not compile (shared memory)
                        times[config] = float("inf")
                        print(f"{config}: {type(e).__name__}", file=sys.stderr)
                best = sorted(times, key=times.get)[:3]
                emit("sweep", product=name, rows=rows, key=f"{'gated' if gated else 'plain'}_{out_n}x{k}",
                     best=[[list(c), round(ideal / times[c], 3)] for c in best])
        del weights, dense
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
