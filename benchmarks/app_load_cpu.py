"""20 users chat with the running app at once (gradio_client), on the CPU: latency per chat, all complete.

    python benchmarks/app_load_cpu.py                 # APP_CONCURRENCY 1 and 8, 20 chats of 48 new tokens

The app (`python app.py`, a real process on 127.0.0.1) serves a random model of the benchmark's
``small`` shape (hidden 512, 8 layers; the tiny tokenizer) built locally. Each chat is a new client
session; greedy, so every reply is checked against the same question asked alone. One JSON line per
APP_CONCURRENCY: latency min / median / max (request to full reply), total tokens/s, replies that
match their solo run.
"""
from __future__ import annotations

import argparse
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
    args = parser.parse_args(argv)
    from gradio_client import Client

    from myassistant.chat import ChatEngine
    from myassistant.model import build_tiny_checkpoint

    with tempfile.TemporaryDirectory(prefix="app-load-") as tmp:
        model_dir = build_tiny_checkpoint(Path(tmp) / "small", hidden_size=512, num_hidden_layers=8,
                                          num_attention_heads=8, num_key_value_heads=4, intermediate_size=1408)
        engine = ChatEngine.from_pretrained(model_dir, device="cpu")
        questions = [QUESTION.format(i=i) for i in range(args.chats)]
        solo = [engine.generate([{"role": "user", "content": q}], temperature=0, max_new_tokens=args.new_tokens)
                for q in questions]
        tokens = sum(len(engine.tokenizer.encode(r, add_special_tokens=False)) for r in solo)
        del engine
        for concurrency in args.concurrency:
            proc, url = start_app({"MODEL_REPO": str(model_dir), "APP_CONCURRENCY": str(concurrency)},
                                  Path(tmp) / f"app-{concurrency}.log")
            try:
                def chat(q: str) -> tuple[str, float]:
                    start = time.perf_counter()
                    reply = Client(url, verbose=False).predict(q, "", 0.0, 0.8, 0, 1.0, args.new_tokens, api_name="/chat")
                    return reply, time.perf_counter() - start

                start = time.perf_counter()
                with ThreadPoolExecutor(args.chats) as pool:
                    results = list(pool.map(chat, questions, timeout=1800))
                wall = time.perf_counter() - start
            finally:
                proc.terminate()
                proc.wait(timeout=30)
            latencies = [s for _, s in results]
            print(json.dumps({"app_concurrency": concurrency, "chats": args.chats, "new_tokens_max": args.new_tokens,
                              "complete": sum(bool(r) for r, _ in results),
                              "same_as_solo": sum(r == want for (r, _), want in zip(results, solo)),
                              "latency_min_s": round(min(latencies), 2),
                              "latency_median_s": round(statistics.median(latencies), 2),
                              "latency_max_s": round(max(latencies), 2), "wall_s": round(wall, 2),
                              "total_tokens_per_s": round(tokens / wall, 1), "load": round(os.getloadavg()[0], 2)}),
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
