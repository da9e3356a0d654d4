"""20 users chat with the running app at once (gradio_client), on the CPU: latency per chat, all complete.

    python benchmarks/app_load_cpu.py                 # APP_CONCURRENCY 1 and 8, 20 chats of 48 new tokens
    python benchmarks/app_load_cpu.py --shape internlm2-1.8b    # the 1.8B shape (3.4 GB of bf16 weights)
    python benchmarks/app_load_cpu.py --shape internlm2-1.8b --threads 2 --rounds 3   # 1 and 8 in turn, 3 times

The app (`python app.py`, a real process on 127.0.0.1) serves a random model built locally: the layers of
the ``small`` shape (hidden 512, 8 layers) or of InternLM2-1.8B (hidden 2048, 24 layers), with the tiny
tokenizer's vocabulary (the 1.8B model's output layer is 92544 rows: 11 % of its int8 weights, left out here). Each chat is a new client
session; greedy, so every reply is checked against the same question asked alone. One JSON line per
APP_CONCURRENCY: latency min / median / max (message sent to full reply; each user's client is connected
before the clock starts), total tokens/s, replies that match their solo run; with APP_CONCURRENCY 1 in the
list, a last line with each round's total tokens/s against that round's one-at-a-time run, and their median.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # its sibling decode_cpu.py, run from anywhere
from decode_cpu import SHAPES, peak_rss_gib  # noqa: E402
QUESTION = "Question {i}: what is {i} + {i}? 你好 {i}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(env: dict[str, str], log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    full = {**os.environ, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
            "GRADIO_ANALYTICS_ENABLED": "False", **env}
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=full, stdout=fh, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"app.py did not start:\n{log.read_text()[-2000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chats", type=int, default=20)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--shape", choices=["small", "internlm2-1.8b"], default="small")
    parser.add_argument("--threads", type=int, help="the app's OMP_NUM_THREADS (default: torch's, one per core)")
    parser.add_argument("--rounds", type=int, default=1, help="run the --concurrency list this many times in turn: "
                        "a slow moment of a shared machine then shows as one round's ratio, not as the result")
    args = parser.parse_args(argv)
    from gradio_client import Client

    from myassistant.chat import ChatEngine, GenerationStats
    from myassistant.model import build_tiny_checkpoint

    with tempfile.TemporaryDirectory(prefix="app-load-") as tmp:
        layers = {key: value for key, value in SHAPES[args.shape].items() if key != "vocab_size"}
        model_dir = build_tiny_checkpoint(Path(tmp) / args.shape, dtype="bfloat16", **layers)
        if args.threads:  # the solo replies with the app's threads
            import torch
            torch.set_num_threads(args.threads)
        engine = ChatEngine.from_pretrained(model_dir, device="cpu")
        questions = [QUESTION.format(i=i) for i in range(args.chats)]
        solo, tokens = [], 0
        for q in questions:  # each alone: the reply every concurrent chat must get, and its token count
            stats = GenerationStats()
            solo.append("".join(engine.stream([{"role": "user", "content": q}], temperature=0,
                                              max_new_tokens=args.new_tokens, stats=stats)))
            tokens += stats.new_tokens
        del engine
        per_round: list[dict[int, float]] = [{} for _ in range(args.rounds)]  # round -> concurrency -> tokens/s
        for round_, concurrency in itertools.product(range(args.rounds), args.concurrency):
            threads = {"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}
            proc, url = start_app({"MODEL_REPO": str(model_dir), "APP_CONCURRENCY": str(concurrency), **threads},
                                  Path(tmp) / f"app-{concurrency}.log")
            try:
                def chat(client: Client, q: str) -> tuple[str, float]:
                    start = time.perf_counter()
                    reply = client.predict(q, "", 0.0, 0.8, 0, 1.0, args.new_tokens, api_name="/chat")
                    return reply, time.perf_counter() - start

                # the app loads its model beside the starting server: one reply first, so the clock starts on a loaded app
                Client(url, verbose=False).predict("hi", "", 0.0, 0.8, 0, 1.0, 1, api_name="/chat")
                with ThreadPoolExecutor(args.chats) as pool:
                    # every user has the page open (the client has read the app's API) before the clock starts: the
                    # figures are the server's, not 20 clients starting up on the same 2 cores
                    clients = list(pool.map(lambda _: Client(url, verbose=False), questions))
                    start = time.perf_counter()
                    results = list(pool.map(chat, clients, questions, timeout=1800))
                wall = time.perf_counter() - start
                rss = peak_rss_gib(proc.pid)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            latencies = [s for _, s in results]
            per_round[round_][concurrency] = tokens / wall
            print(json.dumps({"shape": args.shape, "threads": args.threads or os.cpu_count(), "app_concurrency": concurrency, "chats": args.chats, "new_tokens_max": args.new_tokens,
                              "complete": sum(bool(r) for r, _ in results),
                              "same_as_solo": sum(r == want for (r, _), want in zip(results, solo)),
                              "latency_min_s": round(min(latencies), 2),
                              "latency_median_s": round(statistics.median(latencies), 2),
                              "latency_max_s": round(max(latencies), 2), "wall_s": round(wall, 2),
                              "total_tokens_per_s": round(tokens / wall, 1), "app_peak_rss_gib": rss, "load": round(os.getloadavg()[0], 2)}),
                  flush=True)
        if 1 in args.concurrency and len(args.concurrency) > 1:  # each round's figures against its own one-at-a-time run
            ratios = {c: [round(r[c] / r[1], 2) for r in per_round] for c in args.concurrency if c != 1}
            print(json.dumps({"ratio_to_one_at_a_time": ratios,
                              "median_ratio": {c: statistics.median(v) for c, v in ratios.items()}}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
