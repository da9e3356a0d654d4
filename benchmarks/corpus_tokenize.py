"""Tokenising a pre-training corpus of >= 1 GB: tokens/s and peak RAM, ours against two peers in one run.

    nice -n 10 python -m benchmarks.corpus_tokenize            (CORPUS_GB=1.0, PEER_MB=128, NUM_PROC=2)

Writes a generated corpus (zh+en paragraphs of made-up words, separated by blank lines; never in the repo)
and a sentencepiece BPE tokenizer trained on a sample of it (vocabulary 8,000, byte fallback, InternLM2's
special tokens) to a temp dir, then runs each case in its own process while a sampler sums the RSS of
that process and its children every 0.1 s (PSS, so pages forked workers share count once):
- ``ours``: ``trainer.data.blocks.tokenize_corpus`` on the whole corpus (documents streamed into Arrow,
  ``datasets.map`` with NUM_PROC workers, the token stream written to disk), then again from the cache;
- ``peer_datasets_map``: datasets' own way, ``load_dataset("text", sample_by="paragraph")`` + a plain
  batched ``map`` (one process), on the first PEER_MB of the corpus;
- ``peer_naive``: read the file, split it, ``tokenizer(documents)`` in one call, on the same slice (it holds
  everything in memory, so the whole corpus would not fit next to the other engineers' work).
Prints one JSON object on stdout; progress goes to stderr.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

CORPUS_GB = float(os.environ.get("CORPUS_GB", 1.0))
PEER_MB = int(os.environ.get("PEER_MB", 128))
NUM_PROC = int(os.environ.get("NUM_PROC", 2))


def write_corpus(path: Path, size: int, seed: int = 0) -> int:
    """Paragraphs of made-up words (a Zipf-like vocabulary, some Chinese), blank-line separated; returns docs."""
    r = random.Random(seed)
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    words = ["".join(r.choices(letters, k=r.randint(2, 9))) for _ in range(20000)]
    weights = [1 / (i + 1) for i in range(len(words))]
    han = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)]
    chunk = []
    for _ in range(4000):  # ~2.5 MB of distinct paragraphs, repeated with a counter to reach the size
        sentences = []
        for _ in range(r.randint(2, 12)):
            if r.random() < 0.2:
                sentences.append("".join(r.choices(han, k=r.randint(8, 30))) + "。")
            else:
                sentences.append(" ".join(r.choices(words, weights, k=r.randint(5, 25))).capitalize() + ".")
        chunk.append(" ".join(sentences))
    docs, written = 0, 0
    with open(path, "w", encoding="utf-8") as f:
        while written < size:
            for i, para in enumerate(chunk):
                text = f"{para} ({docs})\n\n"
                f.write(text)
                written += len(text.encode())
                docs += 1
                if written >= size:
                    break
    return docs


def measure(cmd: list[str], env: dict) -> dict:
    """Run ``cmd``; its last stdout line is JSON; add the peak RSS of it and its children."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    peak, stop = [0], threading.Event()

    def sample() -> None:
        try:
            root = psutil.Process(proc.pid)
            while not stop.is_set():
                try:
                    # PSS: pages shared by forked workers counted once, split between them
                    rss = sum(p.memory_full_info().pss for p in [root, *root.children(recursive=True)])
                    peak[0] = max(peak[0], rss)
                except psutil.Error:
                    pass
                time.sleep(0.1)
        except psutil.Error:
            pass

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out, _ = proc.communicate()
    stop.set()
    thread.join()
    if proc.returncode:
        return {"error": f"exit {proc.returncode}"}
    return {**json.loads(out.strip().splitlines()[-1]), "peak_pss_gib": round(peak[0] / 2**30, 3)}


def case(name: str, corpus: str, model: str, cache: str) -> None:
    """One case, in this process: prints a JSON line with tokens, seconds, tokens_per_s."""
    from myassistant.model import load_tokenizer

    tok = load_tokenizer(model)
    t0 = time.perf_counter()
    if name in ("ours", "ours_cached"):
        from myassistant.trainer.data.blocks import tokenize_corpus

        stream = tokenize_corpus(corpus, tok, num_proc=NUM_PROC, cache_dir=cache)
        tokens, docs = len(stream.tokens), stream.documents
    elif name == "peer_datasets_map":
        import datasets

        ds = datasets.load_dataset("text", data_files=corpus, sample_by="paragraph", split="train", cache_dir=cache)
        ds = ds.map(lambda b: {"input_ids": tok(b["text"], add_special_tokens=False)["input_ids"]}, batched=True,
                    remove_columns=["text"])
        import pyarrow.compute as pc

        tokens, docs = pc.sum(pc.list_value_length(ds.data.column("input_ids"))).as_py(), len(ds)
    else:  # peer_naive
        docs_text = [d for d in Path(corpus).read_text(encoding="utf-8").split("\n\n") if d.strip()]
        ids = tok(docs_text, add_special_tokens=False)["input_ids"]
        tokens, docs = sum(map(len, ids)), len(docs_text)
    dt = time.perf_counter() - t0
    print(json.dumps({"tokens": tokens, "documents": docs, "seconds": round(dt, 2),
                      "tokens_per_s": round(tokens / dt)}), flush=True)


def main() -> int:
    if len(sys.argv) > 1:
        case(*sys.argv[1:5])
        return 0
    from myassistant.model import build_tiny_checkpoint

    work = Path(tempfile.mkdtemp(prefix="corpus_bench_"))
    corpus, piece = work / "corpus.txt", work / "slice.txt"
    t0 = time.perf_counter()
    docs = write_corpus(corpus, int(CORPUS_GB * 2**30))
    write_corpus(piece, PEER_MB * 2**20)
    sample = [p for p in corpus.read_text(encoding="utf-8")[:4 * 2**20].split("\n\n") if p]
    model = build_tiny_checkpoint(work / "tok", corpus=sample[:800], vocab_size=8000)
    print(f"corpus {corpus.stat().st_size / 2**30:.2f} GiB, {docs:,} documents, written in "
          f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "true", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    run = lambda name, path, cache: measure(  # noqa: E731
        [sys.executable, "-m", "benchmarks.corpus_tokenize", name, str(path), str(model), str(work / cache)], env)
    rows = {"ours": run("ours", corpus, "cache")}
    print(rows, file=sys.stderr)
    rows["ours_cached"] = run("ours_cached", corpus, "cache")
    rows["peer_datasets_map"] = run("peer_datasets_map", piece, "hf_cache")
    rows["peer_naive"] = run("peer_naive", piece, "none")
    subprocess.run(["rm", "-rf", str(work)], check=False)
    ours, peer = rows["ours"], rows["peer_datasets_map"]
    print(json.dumps({
        "name": "corpus_tokenize", "machine": f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB",
        "corpus_gib": CORPUS_GB, "peer_slice_mib": PEER_MB, "num_proc": NUM_PROC, "tokenizer": "BPE, 8,000 pieces",
        **{f"{k}_{m}": v.get(m) for k, v in rows.items() for m in ("tokens", "seconds", "tokens_per_s", "peak_pss_gib")},
        "ours_vs_datasets_map_tokens_per_s_x": round(ours["tokens_per_s"] / peer["tokens_per_s"], 2)
        if "tokens_per_s" in ours and "tokens_per_s" in peer else None,
        "naive_peak_pss_gib_per_gib_of_text": round(rows["peer_naive"].get("peak_pss_gib", 0) / (PEER_MB / 1024), 2),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
