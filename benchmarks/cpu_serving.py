"""CPU serving of the InternLM2-1.8B shape: the chat engine vs llama.cpp on our exported GGUF vs transformers.

    python benchmarks/cpu_serving.py                       # 1.8B shape, 1 and 2 threads (~25 min, ~9 GiB RAM)
    python benchmarks/cpu_serving.py --shape small --threads 2 --new-tokens 8   # a quick look

Random weights (seed 0, the shape of /work/shared/peers/cpu_decode_peer.py) and the tiny checkpoint's
tokenizer (the vocabulary padded to 92544). Every case runs in its own process (a clean peak RSS),
one JSON line each:

- ``hf_generate_fp32``: transformers ``generate`` (the peer).
- ``engine_fp32`` / ``engine_int8`` / ``engine_int8_dynamic`` / ``engine_int8_two_pass``: `ChatEngine.tokens` as
  the app runs it (batched decoder; int8 = `chat.quant`, the CPU default: a scale per 32 weights and per 32
  activations, `chat.int8_blocks`; dynamic = torch's fbgemm kernel, per-channel weights and one scale per token,
  ``ASSISTANT_INT8_KERNEL=dynamic``; two_pass = that with ``ASSISTANT_QUANTIZE=int8_two_pass``).
- ``engine_int4``: ``ASSISTANT_QUANTIZE=int4``, the blocks kernel with q4_0's weights (4 bits, fp16 scale per 32).
- ``llama_cpp_q8_0`` / ``llama_cpp_q4_0`` / ``llama_cpp_q4_k_m``: llama-cpp-python on the GGUF that
  `export.save_gguf` writes from the same weights.
- ``engine_int8_x8``: 8 chats started at once through the engine (``--chat-prompt-tokens`` 48-55, ``--chat-new-tokens``
  64 each): total tokens/s against one chat alone, first and last chat's latency, prefill passes and steps.

Per case: ``ttft_s`` (a 512-token chat prompt to its first token), ``decode_tokens_per_s`` (after the
first), ``peak_rss_gib`` (before the quality pass), ``top1_vs_fp32`` and ``logits_rel_err`` (teacher-forced
over QUALITY_PROMPTS: top-1 agreement with the fp32 model, and ‖logits - fp32's‖ / ‖fp32's‖) and the 1-minute
load average at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling decode_cpu.py, run from anywhere
from decode_cpu import QUALITY_PROMPTS, SHAPES, peak_rss_gib  # noqa: E402
from myassistant.chat import ChatEngine, GenerationSettings, ServeConfig  # noqa: E402
from myassistant.chat.quant import quantize_int8  # noqa: E402
from myassistant.model import build_tiny_checkpoint, load_tokenizer  # noqa: E402

GGUF_CASES = {"llama_cpp_q8_0": "q8_0", "llama_cpp_q4_0": "q4_0", "llama_cpp_q4_k_m": "q4_k_m"}
# the int8 kernel of each engine case: auto = the app's CPU default (blocks where it builds, chat.int8_blocks)
INT8_KERNELS = {"engine_int8": "auto", "engine_int8_dynamic": "dynamic", "engine_int8_two_pass": "dynamic",
                "engine_int4": "blocks", "engine_int8_x8": "auto"}
CASES = ["hf_generate_fp32", "engine_fp32", *INT8_KERNELS, *GGUF_CASES]


def build(shape: str, work: Path):
    """The seeded random model (fp32) and the tokenizer: the same in every process."""
    torch.manual_seed(0)
    config = LlamaConfig(**SHAPES[shape], rope_theta=1e6, rms_norm_eps=1e-5, tie_word_embeddings=False,
                         max_position_embeddings=4096)
    model = LlamaForCausalLM(config).eval()
    tok_dir = work / "tok"
    if not (tok_dir / "config.json").exists():
        build_tiny_checkpoint(tok_dir)
    return model, load_tokenizer(tok_dir)


def prompts(engine: ChatEngine, prompt_tokens: int) -> tuple[list[int], list[list[int]]]:
    question = " ".join(["tell me about the weather today"] * (prompt_tokens // 6 + 1))
    long_ids = engine.prompt([{"role": "user", "content": question}], GenerationSettings())[0][-prompt_tokens:]
    quality = [engine.prompt([{"role": "user", "content": q}], GenerationSettings())[0] for q in QUALITY_PROMPTS]
    return long_ids, quality


def quality_row(logits: np.ndarray, work: Path) -> dict:
    """Teacher-forced top-1 agreement and relative logits error (‖ours - fp32‖ / ‖fp32‖) against the fp32 model."""
    ref = np.load(work / "fp32_logits.npy")
    return {"top1_vs_fp32": round(float((logits.argmax(-1) == ref.argmax(-1)).mean()), 4),
            "logits_rel_err": round(float(np.linalg.norm(logits - ref) / np.linalg.norm(ref)), 4)}


def torch_logits(model, quality: list[list[int]]) -> np.ndarray:
    """[positions, vocab] float32 logits of every prompt position (teacher-forced)."""
    with torch.inference_mode():
        return np.concatenate([model(torch.tensor([ids])).logits[0].float().numpy() for ids in quality])


def time_engine(engine: ChatEngine, ids: list[int], new: int) -> tuple[float, float]:
    """(seconds to the first token, decode tokens/s after it)."""
    start, first = time.perf_counter(), None
    count = 0
    for _ in engine.tokens(ids, GenerationSettings(temperature=0, max_new_tokens=new)):
        count += 1
        first = first or time.perf_counter() - start
    total = time.perf_counter() - start
    return first, (count - 1) / (total - first)


def concurrent(engine: ChatEngine, prompts_: list[list[int]], new: int) -> tuple[float, list[float]]:
    """(total tokens/s, each chat's seconds from request to last token) of len(prompts_) chats started at once."""
    counts, latencies = [0] * len(prompts_), [0.0] * len(prompts_)

    def run(i: int) -> None:
        for _ in engine.tokens(prompts_[i], GenerationSettings(temperature=0, max_new_tokens=new)):
            counts[i] += 1
        latencies[i] = time.perf_counter() - start

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts_))]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert counts == [new] * len(prompts_), counts  # every stream complete
    return sum(counts) / (time.perf_counter() - start), latencies


def run_llama_cpp(path: Path, ids: list[int], quality: list[list[int]], new: int, threads: int, work: Path) -> dict:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=1024, n_batch=512, n_threads=threads, n_threads_batch=threads,
                          verbose=False)
    vocab = llm.n_vocab()

    def next_token() -> int:  # the last position's logits (llm.scores holds them only with logits_all)
        return int(np.argmax(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(vocab,))))

    llm.eval(ids[:8])  # burn-in
    llm.reset()
    start = time.perf_counter()
    llm.eval(ids)
    token = next_token()
    first = time.perf_counter() - start
    for _ in range(new - 1):
        llm.eval([token])
        token = next_token()
    decode = (new - 1) / (time.perf_counter() - start - first)
    row = {"ttft_s": round(first, 3), "decode_tokens_per_s": round(decode, 3), "peak_rss_gib": peak_rss_gib(),
           "gguf_mib": round(path.stat().st_size / 2**20)}
    del llm
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=threads, logits_all=True, verbose=False)
    logits = []
    for q in quality:
        llm.reset()
        llm.eval(q)
        logits.append(np.array(llm.scores[:len(q)], dtype=np.float32))
    return row | quality_row(np.concatenate(logits), work)


def run_case(case: str, args, work: Path) -> dict:
    torch.set_num_threads(args.threads)
    saved = json.loads((work / "prompts.json").read_text())
    ids, quality = saved["long"], saved["quality"]
    if case in GGUF_CASES:  # no torch model in this process
        return run_llama_cpp(work / f"{GGUF_CASES[case]}.gguf", ids, quality, args.new_tokens, args.threads, work)
    model, tokenizer = build(args.shape, work)
    if case == "hf_generate_fp32":
        x = torch.tensor([ids])
        with torch.inference_mode():
            model.generate(x[:, :8], max_new_tokens=2, do_sample=False)  # burn-in
            start = time.perf_counter()
            model.generate(x, max_new_tokens=1, do_sample=False)
            first = time.perf_counter() - start
            start = time.perf_counter()
            model.generate(x, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)
            decode = (args.new_tokens - 1) / (time.perf_counter() - start - first)
        return {"ttft_s": round(first, 3), "decode_tokens_per_s": round(decode, 3), "peak_rss_gib": peak_rss_gib(),
                "top1_vs_fp32": 1.0, "logits_rel_err": 0.0}
    if case != "engine_fp32":
        quantize_int8(model, INT8_KERNELS[case], two_pass=case == "engine_int8_two_pass",
                      bits=4 if case == "engine_int4" else 8)
    engine = ChatEngine(model, tokenizer)
    engine.stop_ids = []  # random weights: decode the full length
    time_engine(engine, ids[:8], 2)  # burn-in
    if case == "engine_int8_x8":
        short = [ids[-args.chat_prompt_tokens - i:] for i in range(8)]  # 8 different prompts
        one, _ = concurrent(engine, short[:1], args.chat_new_tokens)
        passes, steps = engine.batch.prefill_passes, engine.batch.steps
        eight, latencies = concurrent(engine, short, args.chat_new_tokens)
        return {"chat_prompt_tokens": args.chat_prompt_tokens, "chat_new_tokens": args.chat_new_tokens,
                "one_chat_tokens_per_s": round(one, 3), "eight_chats_tokens_per_s": round(eight, 3),
                "ratio": round(eight / one, 2), "latency_s": [round(min(latencies), 2), round(max(latencies), 2)],
                "prefill_passes": engine.batch.prefill_passes - passes, "steps": engine.batch.steps - steps,
                "batch_rows": engine.batch.rows, "peak_rss_gib": peak_rss_gib()}
    first, decode = time_engine(engine, ids, args.new_tokens)
    row = {"ttft_s": round(first, 3), "decode_tokens_per_s": round(decode, 3), "peak_rss_gib": peak_rss_gib()}
    if case != "engine_fp32":
        row["int8_kernel"] = model.lm_head.kernel
    return row | quality_row(torch_logits(model, quality), work)


def prepare(args, work: Path) -> None:
    """The fp32 reference top-1 and the GGUF files, written once."""
    from myassistant.export.gguf import save_gguf

    model, tokenizer = build(args.shape, work)
    templating = ChatEngine(model, tokenizer, config=ServeConfig(fast_decode=False))  # templating only
    long_ids, quality = prompts(templating, args.prompt_tokens)
    (work / "prompts.json").write_text(json.dumps({"long": long_ids, "quality": quality}))
    np.save(work / "fp32_logits.npy", torch_logits(model, quality))
    for quant in sorted({GGUF_CASES[c] for c in args.cases if c in GGUF_CASES}):
        save_gguf(model, tokenizer, work / f"{quant}.gguf", quant, args.shape)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=SHAPES, default="internlm2-1.8b")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--chat-prompt-tokens", type=int, default=48, help="engine_int8_x8: each chat's prompt")
    parser.add_argument("--chat-new-tokens", type=int, default=64, help="engine_int8_x8: each chat's reply")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=CASES)
    parser.add_argument("--case", help=argparse.SUPPRESS)  # one case, in a child process
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        args.threads = args.threads[0]
        print(json.dumps(run_case(args.case, args, Path(args.work))), flush=True)
        return 0
    with tempfile.TemporaryDirectory(prefix="cpu-serving-") as tmp:
        work = Path(tmp)
        prepare(args, work)
        for threads in args.threads:
            for case in args.cases:
                cmd = [sys.executable, __file__, "--case", case, "--work", tmp, "--shape", args.shape, "--threads",
                       str(threads), "--prompt-tokens", str(args.prompt_tokens), "--new-tokens", str(args.new_tokens),
                       "--chat-prompt-tokens", str(args.chat_prompt_tokens), "--chat-new-tokens", str(args.chat_new_tokens)]
                done = subprocess.run(cmd, capture_output=True, text=True)
                row = {"case": case, "shape": args.shape, "threads": threads, "new_tokens": args.new_tokens,
                       "prompt_tokens": args.prompt_tokens}
                if done.returncode:
                    row["error"] = done.stderr.strip().splitlines()[-1:]
                else:
                    row |= json.loads(done.stdout.strip().splitlines()[-1])
                print(json.dumps(row | {"load": round(os.getloadavg()[0], 2)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
