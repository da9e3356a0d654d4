"""Issue 21: does reading the next products' weights into L2 during a decode step's attention shorten the step?

A step's attention (chat.attention.rotary_split_attention) reads a few MB and leaves the memory idle for several
microseconds a layer; its spare programs can read o_proj's weight and the first rows of gate / up meanwhile
(chat.fast.warm_after_attention, up to chat.fast.WARM_BYTES). One engine; for each setting of --configs, in turn
over --rounds (drift between minutes falls on every setting alike): the graphs captured again, one greedy reply timed
(decode tokens/s), and the graphed step replayed at the reply's middle position with 1 and 8 rows. Fractions of the
device copy bandwidth measured in the same process (as benchmarks/decode_gpu.py counts them). Random weights.

    python3 -m benchmarks.warm_gpu [--shape internlm2-1.8b] [--weight-bits 16] [--configs 0:8192 16:8192 ...]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.decode_cpu import SHAPES, tiny_tokenizer  # noqa: E402
from benchmarks.decode_gpu import build, copy_bandwidth, emit, load_form, reply, step_ms  # noqa: E402
from myassistant.chat import ChatEngine, GenerationSettings, attention, fast  # noqa: E402
from myassistant.chat.batch import bucket  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=SHAPES, default="internlm2-1.8b")
    parser.add_argument("--weight-bits", type=int, choices=(16, 8, 4), default=16)
    parser.add_argument("--configs", nargs="+", default=["0:8192", "16:8192", "12:8192", "16:4096"],
                        help="MIB:WARM_BLOCK (a budget in MiB a layer, int32 words a warm program)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=256)
    args = parser.parse_args(argv)
    tokenizer = tiny_tokenizer()
    bandwidth = copy_bandwidth()
    model = build(args.shape, torch.bfloat16, "cuda")
    if args.weight_bits != 16:
        model = load_form(model.cpu(), args.weight_bits, keep_host=False)
    engine = ChatEngine(model, tokenizer, name=args.shape)
    engine.stop_ids = []  # random weights: every reply runs the full length
    start = time.perf_counter()
    engine.warm_up()
    emit("warm_up", seconds=round(time.perf_counter() - start, 1), device=torch.cuda.get_device_name(0))
    weight_bytes = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    short = [{"role": "user", "content": "Tell me about the weather today, please."}]
    settings = GenerationSettings(temperature=0, max_new_tokens=args.new_tokens)
    middle = len(engine.prompt(short, settings)[0]) + args.new_tokens // 2
    length = bucket(middle, engine.batch.max_len)
    runs: dict[str, list[dict]] = {config: [] for config in args.configs}
    for round_ in range(args.rounds):
        for config in args.configs:
            mib, block = config.split(":")
            fast.WARM_BYTES, attention.WARM_BLOCK = int(mib) << 20, int(block)
            engine.batch.graphs.clear()  # captured again with these settings
            reply(engine, short, settings)
            stats = reply(engine, short, settings)
            run = {"decode_tokens_per_s": round(stats.tokens_per_s, 1),
                   "rows_1_middle_ms": round(step_ms(engine, 1, length=length, position=middle), 4),
                   "rows_8_middle_ms": round(step_ms(engine, 8, length=length, position=middle), 4)}
            runs[config].append(run)
            emit("run", round=round_, config=config, **run, graph_problem=engine.batch.broken)
    bandwidth = max(bandwidth, copy_bandwidth())  # the faster of a copy before and after, as decode_gpu
    base = None
    for config, got in runs.items():
        median = {key: statistics.median(r[key] for r in got) for key in got[0]}
        base = base or median
        emit("warm", shape=args.shape, bits=args.weight_bits, config=config, rounds=len(got), **median,
             decode_of_bandwidth=round(median["decode_tokens_per_s"] * weight_bytes / bandwidth, 3),
             step_1_row_middle_of_bandwidth=round(weight_bytes / bandwidth / (median["rows_1_middle_ms"] / 1e3), 3),
             step_1_vs_first=round(base["rows_1_middle_ms"] / median["rows_1_middle_ms"], 3),
             step_8_vs_first=round(base["rows_8_middle_ms"] / median["rows_8_middle_ms"], 3),
             bandwidth_tb_per_s=round(bandwidth / 1e12, 3), weights_gb=round(weight_bytes / 1e9, 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
