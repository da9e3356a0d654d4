"""A decode step's attention (chat.attention.rotary_split_attention: rotary, cache writes, split-KV attention) on a
GPU, one layer at a time, for several keys-per-program / tile / warps settings and cache positions.

    python3 -m benchmarks.attention_gpu [--shape internlm2-1.8b] [--positions 30 150 ...] [--configs 64:64:4 ...]

A config is SPLIT_KEYS:TILE_KEYS:WARPS[:tf32] (chat.attention's constants: keys a program at least, keys a tile at
most, warps; ``tf32``: SPLIT_DOTS off, the dots in tf32 on fp32 copies of the tiles).
Each timing is a CUDA graph of one call per layer, each over its own cache and after a 64 MB read (so its keys and
values come from memory and it starts behind another kernel, as in a decode step), less the same graph without the
attention calls: microseconds a layer. ``error``: the largest difference from the first config's output (a
different split sums in another order). Random bf16 tensors.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.decode_cpu import SHAPES  # noqa: E402
from benchmarks.decode_gpu import emit  # noqa: E402
from benchmarks.gemv_gpu import graph_time  # noqa: E402
from myassistant.chat import attention  # noqa: E402
from myassistant.chat.batch import bucket  # noqa: E402

READ_BYTES = 64 << 20


def graph_us(calls: list, reps: int = 20) -> float:
    """GPU microseconds of one replay of a graph of `calls`."""
    return graph_time(lambda i: calls[i](), len(calls), reps) * len(calls) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=SHAPES, default="internlm2-1.8b")
    parser.add_argument("--positions", type=int, nargs="+", default=[30, 150, 280, 600, 1100, 2000, 4000, 8000])
    parser.add_argument("--configs", nargs="+", default=["64:128:8", "64:64:4", "128:128:8", "256:128:8"])
    args = parser.parse_args(argv)
    shape = SHAPES[args.shape]
    layers, heads, kv_heads = shape["num_hidden_layers"], shape["num_attention_heads"], shape["num_key_value_heads"]
    head_dim = shape["hidden_size"] // heads
    torch.manual_seed(0)
    dev, dt = "cuda", torch.bfloat16
    reads = [torch.randn(READ_BYTES // 2, device=dev, dtype=dt) for _ in range(2)]
    total = torch.empty((), device=dev, dtype=dt)
    read = [lambda i=i: torch.sum(reads[i % 2], dim=0, out=total) for i in range(layers)]
    base_us = graph_us(read)
    defaults = attention.SPLIT_KEYS, attention.TILE_KEYS, attention.WARPS, attention.SPLIT_DOTS
    for position in args.positions:
        length = bucket(position + 1, 1 << 16)
        caches = [(torch.randn(1, kv_heads, length, head_dim, device=dev, dtype=dt),
                   torch.randn(1, kv_heads, length, head_dim, device=dev, dtype=dt)) for _ in range(layers)]
        qkv = torch.randn(1, (heads + 2 * kv_heads) * head_dim, device=dev, dtype=dt)
        angle = position / 10000 ** (torch.arange(head_dim, device=dev) % (head_dim // 2) * 2 / head_dim)
        cos, sin = angle.cos()[None].to(dt), angle.sin()[None].to(dt)
        positions = torch.tensor([position], device=dev)
        outs = [None] * layers

        def attend(i: int) -> None:
            k, v = caches[i]
            outs[i] = attention.rotary_split_attention(qkv, cos, sin, k, v, positions, head_dim ** -0.5, [])

        first = None
        for config in args.configs:
            split_keys, tile_keys, warps, *dots = config.split(":")
            attention.SPLIT_KEYS, attention.TILE_KEYS, attention.WARPS = int(split_keys), int(tile_keys), int(warps)
            attention.SPLIT_DOTS = dots != ["tf32"]
            try:
                us = graph_us([c for i in range(layers) for c in (read[i], lambda i=i: attend(i))]) - base_us
            except Exception as e:  # noqa: BLE001 - a config that does not compile (registers, shared memory)
                emit("attention", position=position, config=config, failed=f"{type(e).__name__}: {str(e)[:120]}")
                continue
            out = outs[0].float()
            first = out if first is None else first
            emit("attention", shape=args.shape, position=position, cache_bucket=length, config=config,
                 split=attention.split_size(1, kv_heads, length), us_a_layer=round(us / layers, 2),
                 error=float((out - first).abs().max()))
        attention.SPLIT_KEYS, attention.TILE_KEYS, attention.WARPS, attention.SPLIT_DOTS = defaults
        caches.clear()  # the tensors freed before the next position's
        torch.cuda.empty_cache()
    emit("read_64mb", us=round(base_us / layers, 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
