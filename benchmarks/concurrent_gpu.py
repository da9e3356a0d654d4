"""Where the time of N concurrent chats goes on a GPU: a timeline of the batched decoder's scheduler.

decode_gpu's ``concurrent_N`` gives the slowest chat's tokens/s as a fraction of one chat's; this splits that
chat's wall time into its wait for a first token (threads starting, the prefills of the chats admitted before it)
and its steps (their cadence on the host against the graphed step's GPU time), run by run:

    python3 -m benchmarks.decode_gpu ...           # the figures
    python3 -m benchmarks.concurrent_gpu --chats 8 # where they come from (random 1.8B, bf16, greedy)

Per run: ``first_token_ms`` (each chat's, sorted), ``admitted_ms`` (when the scheduler admitted each, from the
first thread's start), ``prefill_ms`` (each admission: the graphed prefill and the first token's sample, synced),
``steps_before_all_admitted``, ``step_gap_ms`` (median time between two step launches once all are in) and the
slowest chat's tokens/s against one chat's; ``--switch`` repeats the runs with that Python thread switch interval.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
from benchmarks.decode_cpu import tiny_tokenizer  # noqa: E402
from benchmarks.decode_gpu import build, emit, reply  # noqa: E402
from myassistant.chat import ChatEngine, GenerationSettings, GenerationStats  # noqa: E402


def timed_run(engine: ChatEngine, messages: list[dict], chats: int, new_tokens: int) -> dict:
    """One run of `chats` chats at once, with the scheduler's admissions and step launches timed."""
    batch = engine.batch
    admits, launches = [], []
    admit, launch = batch._admit, batch._launch

    def timed_admit(chat, row, logits):
        t = time.perf_counter()
        admit(chat, row, logits)  # samples the first token and reads it: the prefill's end
        admits.append((t, time.perf_counter()))

    def timed_launch():
        launches.append(time.perf_counter())
        return launch()

    batch._admit, batch._launch = timed_admit, timed_launch
    stats = [GenerationStats() for _ in range(chats)]
    settings = GenerationSettings(temperature=0, max_new_tokens=new_tokens)
    threads = [threading.Thread(target=lambda s=s: [None for _ in engine.stream(messages, settings, stats=s)])
               for s in stats]
    start = time.perf_counter()
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        del batch._admit, batch._launch
    admits.sort()
    last_in = max(end for _, end in admits)
    after = [t for t in launches if t > last_in]
    gaps = [b - a for a, b in zip(after, after[1:])]
    ms = lambda s: round(s * 1e3, 2)  # noqa: E731
    return {"first_token_ms": sorted(ms(s.first_token_s) for s in stats),
            "admitted_ms": [ms(end - start) for _, end in admits],
            "prefill_ms": [ms(end - t) for t, end in admits],
            "steps_before_all_admitted": sum(t < last_in for t in launches),
            "step_gap_ms": ms(statistics.median(gaps)) if gaps else None,
            "step_gap_p90_ms": ms(sorted(gaps)[int(len(gaps) * 0.9)]) if gaps else None,
            "min_chat_tokens_per_s": round(min(s.new_tokens / s.elapsed_s for s in stats), 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chats", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--switch", type=float, nargs="*", default=[], help="also with these sys.setswitchinterval")
    args = parser.parse_args(argv)
    tokenizer = tiny_tokenizer()
    engine = ChatEngine(build("internlm2-1.8b", torch.bfloat16, "cuda"), tokenizer, name="internlm2-1.8b")
    engine.stop_ids = []
    engine.warm_up()
    short = [{"role": "user", "content": "Tell me about the weather today, please."}]
    settings = GenerationSettings(temperature=0, max_new_tokens=args.new_tokens)
    reply(engine, short, settings)
    one = reply(engine, short, settings)
    one_chat = one.new_tokens / one.elapsed_s
    emit("one_chat", tokens_per_s=round(one_chat, 1), first_token_ms=round(one.first_token_s * 1e3, 2))
    for chats in sorted({2, 4, args.chats}):
        timed_run(engine, short, chats, 16)
    timed_run(engine, short, args.chats, args.new_tokens)  # every length bucket's graph captured
    for switch in [sys.getswitchinterval(), *args.switch]:
        sys.setswitchinterval(switch)
        for run in range(args.runs):
            got = timed_run(engine, short, args.chats, args.new_tokens)
            emit("run", switch_ms=switch * 1e3, run=run, **got,
                 slowest_of_one_chat=round(got["min_chat_tokens_per_s"] / one_chat, 3))
    return 0


if __name__ == "__main__":
    sys.exit(main())
