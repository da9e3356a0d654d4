"""Issue 21's one fusion left for 7B int4 one-chat decode, measured before it is built: does gate/up and down in ONE
launch a layer (each program's h entries multiplied at once by down's columns for them, its partial sums added into
the layer's output with L2 reductions) beat two launches a layer?

Session 15 (grid barriers) and session 24 (one-launch dataflow) found that joining phases which wait for each other's
whole output does not pay. gate/up -> down is the one pair that needs no wait: a program that has BLOCK_I entries of
h = SiLU(gate x) * (up x) can multiply them by down's BLOCK_I columns itself. What it costs instead: down stored
feature-major (a program's columns contiguous), and KO fp32 reductions a program (4,096 x 14,336 / BLOCK_I a 7B
layer: 0.46-1.8M), summed in no fixed order. benchmarks/README.md "Issue 21, session 32" has the arithmetic.

Every form runs the same CUDA-core int4 code (nibble - 8 times a scale per row and 128 columns, fp32 sums), over all
of a shape's layers chained (each layer's input the previous one's output, no residual: the same in every form):

- ``rows``: gate/up, then down as row blocks over the whole of h (the engine's layout and form: no reductions);
- ``two``: gate/up, then down feature-major with reductions (the fusion's down, in a launch of its own);
- ``fused``: one launch a layer.

Each prints the step's time, its weight bytes over that time and the fraction of a device copy's bandwidth measured
in the same process, and its largest difference from a float64 chain. If ``fused`` is not clearly below ``rows``
here, the fusion is not worth a second down layout and unordered sums in the engine.

    python3 -m benchmarks.mlp_fused_gpu [--shape 7b|1.8b] [--block-i 32 64 128] [--warps 4 8]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from myassistant.chat import gemv_pick  # noqa: E402

SHAPES = {"1.8b": (2048, 8192, 24), "7b": (4096, 14336, 32)}  # hidden, intermediate, layers
GROUP = 128  # columns a scale covers, as chat.int_weights


@triton.jit
def _nibbles(q):
    """[rows, words] int32 -> [rows, words, 8] float32 of nibble - 8 (word w's nibble i is column 8 w + i)."""
    return ((q[:, :, None] >> (tl.arange(0, 8) * 4)[None, None, :]) & 15).to(tl.float32) - 8.0


@triton.jit
def _rows_dot(w_ptr, s_ptr, rows, x_ptr, K: tl.constexpr, BLOCK_R: tl.constexpr, BW: tl.constexpr,
              GROUP: tl.constexpr):
    """W[rows, :K] @ x[:K] for int4 rows (K / 8 words each) and their group scales, fp32."""
    acc = tl.zeros([BLOCK_R], tl.float32)
    for w0 in range(0, K // 8, BW):
        words = w0 + tl.arange(0, BW)
        q = tl.load(w_ptr + rows[:, None] * (K // 8) + words[None, :])
        x = tl.load(x_ptr + words[:, None] * 8 + tl.arange(0, 8)[None, :]).to(tl.float32)
        s = tl.load(s_ptr + rows[:, None] * (K // GROUP) + (words * 8 // GROUP)[None, :])
        acc += tl.sum(tl.sum(_nibbles(q) * x[None, :, :], 2) * s, 1)
    return acc


@triton.jit
def _h_block(x_ptr, gu_ptr, sgu_ptr, rows, I, K: tl.constexpr, BLOCK_I: tl.constexpr, BW: tl.constexpr,
             GROUP: tl.constexpr):
    """h[rows] = SiLU(gate x) * (up x), rounded to bf16 as the model's tensors are (gate rows, then up rows I on)."""
    g = _rows_dot(gu_ptr, sgu_ptr, rows, x_ptr, K, BLOCK_I, BW, GROUP)
    u = _rows_dot(gu_ptr, sgu_ptr, rows + I, x_ptr, K, BLOCK_I, BW, GROUP)
    return (g / (1.0 + tl.exp(-g)) * u).to(tl.bfloat16).to(tl.float32)


@triton.jit
def _down_add(h, rows, dt_ptr, sd_ptr, y_ptr, KO: tl.constexpr, BO: tl.constexpr, GROUP: tl.constexpr):
    """y[:KO] += down[:, rows] @ h, down stored feature-major (row j: feature j's KO outputs), by L2 reductions."""
    for o0 in range(0, KO // 8, BO):
        words = o0 + tl.arange(0, BO)
        q = tl.load(dt_ptr + rows[:, None] * (KO // 8) + words[None, :])
        s = tl.load(sd_ptr + rows[:, None] * (KO // GROUP) + (words * 8 // GROUP)[None, :])
        part = tl.sum(_nibbles(q) * (h[:, None] * s)[:, :, None], 0)
        tl.atomic_add(y_ptr + words[:, None] * 8 + tl.arange(0, 8)[None, :], part)


@triton.jit
def _gate_up_kernel(x_ptr, gu_ptr, sgu_ptr, h_ptr, I, K: tl.constexpr, BLOCK_I: tl.constexpr, BW: tl.constexpr,
                    GROUP: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_I + tl.arange(0, BLOCK_I)
    tl.store(h_ptr + rows, _h_block(x_ptr, gu_ptr, sgu_ptr, rows, I, K, BLOCK_I, BW, GROUP))


@triton.jit
def _down_rows_kernel(h_ptr, dn_ptr, sdn_ptr, y_ptr, I: tl.constexpr, BLOCK_N: tl.constexpr, BW: tl.constexpr,
                      GROUP: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    tl.store(y_ptr + rows, _rows_dot(dn_ptr, sdn_ptr, rows, h_ptr, I, BLOCK_N, BW, GROUP))


@triton.jit
def _down_add_kernel(h_ptr, dt_ptr, sd_ptr, y_ptr, KO: tl.constexpr, BLOCK_I: tl.constexpr, BO: tl.constexpr,
                     GROUP: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_I + tl.arange(0, BLOCK_I)
    _down_add(tl.load(h_ptr + rows), rows, dt_ptr, sd_ptr, y_ptr, KO, BO, GROUP)


@triton.jit
def _fused_kernel(x_ptr, gu_ptr, sgu_ptr, dt_ptr, sd_ptr, y_ptr, I, K: tl.constexpr, BLOCK_I: tl.constexpr,
                  BW: tl.constexpr, BO: tl.constexpr, GROUP: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_I + tl.arange(0, BLOCK_I)
    h = _h_block(x_ptr, gu_ptr, sgu_ptr, rows, I, K, BLOCK_I, BW, GROUP)
    _down_add(h, rows, dt_ptr, sd_ptr, y_ptr, K, BO, GROUP)


def _pack(nib: torch.Tensor) -> torch.Tensor:
    """Nibbles [n, k] (0..15, the value + 8) as int32 words [n, k / 8], column 8 w + i in word w's nibble i."""
    n, k = nib.shape
    words = (nib.view(n, k // 8, 8) << (torch.arange(8, device=nib.device) * 4)).sum(-1)
    return (words - (words >= 2 ** 31) * 2 ** 32).to(torch.int32)


def _values(packed: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The float64 weights of packed int4 rows and their scales (for the reference)."""
    nib = (packed.long().unsqueeze(-1) >> (torch.arange(8, device=packed.device) * 4)) & 15
    return (nib.view(packed.shape[0], -1) - 8).double() * scale.double().repeat_interleave(GROUP, 1)


def _gate_up(hidden: int, inter: int, gen: torch.Generator, device: str) -> tuple:
    """[gate; up] int4: (packed, fp32 scales a row and GROUP columns)."""
    nib = torch.randint(0, 16, (2 * inter, hidden), generator=gen, device=device)
    scale = torch.rand(2 * inter, hidden // GROUP, generator=gen, device=device) * 2 / (hidden ** 0.5 * 8)
    return _pack(nib), scale


def _down(hidden: int, inter: int, gen: torch.Generator, device: str) -> tuple:
    """down int4 as rows [hidden, inter] and feature-major [inter, hidden], the same values: a scale a GROUP x GROUP
    block, so that a scale a row and GROUP columns holds in both layouts: (packed, scales) each."""
    nib = torch.randint(0, 16, (hidden, inter), generator=gen, device=device)
    block = torch.rand(hidden // GROUP, inter // GROUP, generator=gen, device=device) * 2 / (inter ** 0.5 * 8)
    rows = (_pack(nib), block.repeat_interleave(GROUP, 0).contiguous())
    return rows, (_pack(nib.t().contiguous()), block.t().repeat_interleave(GROUP, 0).contiguous())


class Mlp:
    """A shape's MLPs, layer after layer: [gate; up], down as rows and down feature-major, and the chain's buffers."""

    def __init__(self, hidden: int, inter: int, layers: int, device: str, seed: int = 0):
        gen = torch.Generator(device=device).manual_seed(seed)
        self.hidden, self.inter, self.layers = hidden, inter, layers
        self.gu = [_gate_up(hidden, inter, gen, device) for _ in range(layers)]
        self.down = [_down(hidden, inter, gen, device) for _ in range(layers)]
        self.ys = torch.zeros(layers + 1, hidden, device=device)
        self.ys[0] = torch.randn(hidden, generator=gen, device=device).to(torch.bfloat16).float()
        self.h = torch.zeros(inter, device=device)

    def bytes(self) -> int:
        """Weight bytes a step reads (either down layout: the same size)."""
        return sum(t.numel() * 4 for gu, (rows, _) in zip(self.gu, self.down) for t in (*gu, *rows))

    def run(self, form: str, block_i: int, warps: int, bw: int = 16, bo: int = 16) -> None:
        self.ys[1:].zero_()
        grid = (self.inter // block_i,)
        for layer in range(self.layers):
            x, y = self.ys[layer], self.ys[layer + 1]
            (gu, sgu), ((dn, sdn), (dt, sd)) = self.gu[layer], self.down[layer]
            if form == "fused":
                _fused_kernel[grid](x, gu, sgu, dt, sd, y, self.inter, K=self.hidden, BLOCK_I=block_i, BW=bw, BO=bo,
                                    GROUP=GROUP, num_warps=warps)
                continue
            _gate_up_kernel[grid](x, gu, sgu, self.h, self.inter, K=self.hidden, BLOCK_I=block_i, BW=bw, GROUP=GROUP,
                                  num_warps=warps)
            if form == "rows":
                _down_rows_kernel[(self.hidden // 8,)](self.h, dn, sdn, y, I=self.inter, BLOCK_N=8, BW=bw,
                                                      GROUP=GROUP, num_warps=warps)
            else:
                _down_add_kernel[grid](self.h, dt, sd, y, KO=self.hidden, BLOCK_I=block_i, BO=bo, GROUP=GROUP,
                                       num_warps=warps)

    def reference(self) -> torch.Tensor:
        """The chain in float64 from the same int4 values, h rounded to bf16 as the kernels round it."""
        x = self.ys[0].double()
        for gu, (down, _) in zip(self.gu, self.down):
            g, u = (_values(*gu) @ x).split(self.inter)
            x = _values(*down) @ (torch.nn.functional.silu(g) * u).to(torch.bfloat16).double()
        return x


def timed(mlp: Mlp, form: str, block_i: int, warps: int, copy_bps: float, want: torch.Tensor) -> dict:
    run = lambda: mlp.run(form, block_i, warps)  # noqa: E731
    run()  # compile
    torch.cuda.synchronize()
    err = float(((mlp.ys[-1].double() - want).abs().max() / want.abs().max()))
    us = gemv_pick.graph_ms(run) / gemv_pick.REPEATS * 1e3  # a step's weights are ~40x the L2: no flush needed
    return {"case": form, "block_i": block_i, "warps": warps, "step_us": round(us, 1),
            "layer_us": round(us / mlp.layers, 2),
            "of_copy_bandwidth": round(mlp.bytes() / us / 1e6 / (copy_bps / 1e12), 3),
            "max_rel_err_vs_float64": round(err, 5)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    parser.add_argument("--layers", type=int, help="fewer layers than the shape has")
    parser.add_argument("--block-i", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--warps", type=int, nargs="+", default=[4, 8])
    args = parser.parse_args(argv)
    from benchmarks.decode_gpu import copy_bandwidth

    copy_bps = copy_bandwidth()
    hidden, inter, layers = SHAPES[args.shape]
    mlp = Mlp(hidden, inter, args.layers or layers, "cuda")
    want = mlp.reference()
    print(json.dumps({"case": "device", "name": torch.cuda.get_device_name(0), "triton": triton.__version__,
                      "copy_tb_per_s": round(copy_bps / 1e12, 3), "weights_gib": round(mlp.bytes() / 2 ** 30, 3),
                      "shape": args.shape, "layers": mlp.layers}), flush=True)
    for warps in args.warps:
        for block_i in args.block_i:
            for form in ("rows", "two", "fused"):
                print(json.dumps(timed(mlp, form, block_i, warps, copy_bps, want)), flush=True)


if __name__ == "__main__":
    main()
