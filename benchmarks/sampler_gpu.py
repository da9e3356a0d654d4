"""What sampling a decode step's tokens costs on a GPU: chat.sampler's parts timed in CUDA graphs.

    python3 -m benchmarks.sampler_gpu

For 1 and 8 rows of InternLM2's 92,544 logits, flat (a random model's: std 1) and peaked (std 8, a
trained model's head): the greedy argmax (`argmax_rows`), a sort of the logits alone, `sample_rows`
(chat.sample_race: no sort; temperature 0.8, top-p 0.8) and the sorted form in torch ops (`sorted_draw`,
what a CPU ran before), microseconds a call, 200 calls in one graph.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from myassistant.chat.sampler import RowParams, sorted_draw, argmax_rows, sample_rows  # noqa: E402

VOCAB = 92544


def graph_us(fn, calls: int = 200) -> float:
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    graph.replay()
    torch.cuda.synchronize()
    start = time.perf_counter()
    graph.replay()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls * 1e6


def main() -> int:
    torch.manual_seed(0)
    for rows in (1, 8):
        params = RowParams.empty(rows, torch.device("cuda"))
        for row in range(rows):
            params.set_row(row, temperature=0.8, top_p=0.8, top_k=0, penalty=1.0, seed=row)
        positions = torch.arange(rows, device="cuda")
        for shape, std in (("flat", 1.0), ("peaked", 8.0)):
            logits = torch.randn(rows, VOCAB, device="cuda") * std
            print(json.dumps({"case": "sampling_us", "rows": rows, "logits": shape,
                              "argmax_rows": round(graph_us(lambda: argmax_rows(logits)), 1),
                              "sort": round(graph_us(lambda: logits.sort(dim=-1, descending=True)), 1),
                              "sample_rows": round(graph_us(lambda: sample_rows(logits, params, positions)), 1),
                              "torch_ops": round(graph_us(lambda: sorted_draw(logits, params, positions)), 1)}),
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
