"""The quality yardsticks of benchmarks/decode_gpu.py's weight forms: teacher-forced logits through the engine's decode
steps, the bf16 steps' own agreement with the model's modules and with a prefill, and a reference of the bf16 modules
saved for the int8 / int4 processes (see decode_gpu's ``quality`` and ``reference`` cases)."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaForCausalLM

from benchmarks.decode_cpu import QUALITY_PROMPTS
from myassistant.chat import ChatEngine, GenerationSettings, ServeConfig


def teacher_forced(engine: ChatEngine, sequences: list[list[int]], follow: int = 0) -> list[torch.Tensor]:
    """Float32 logits at every position of each sequence, fed one token at a time through the engine's decoder
    (the decode steps' products); with `follow`, that many greedy tokens are appended to each sequence first."""
    decoder, out = engine.decoder, []
    with torch.inference_mode():
        for seq in sequences:
            step, logits = decoder.eager(decoder.new_cache(len(seq) + follow + 1)), []
            for i in range(len(seq) + follow):
                if i >= len(seq):
                    seq.append(int(logits[-1].argmax()))
                logits.append(step(torch.tensor([[seq[i]]], device=decoder.device))[0])
            out.append(torch.stack(logits))
    return out


def bf16_reference(engine: ChatEngine) -> tuple[list[list[int]], torch.Tensor, dict]:
    """The 8 fixed chat prompts with 32 greedy bf16 tokens after each, the bf16 decode steps' logits at every
    position, and the yardstick: how often the model's own modules (one forward over each whole sequence, cuBLAS)
    pick the same top-1 token as those steps (two bf16 computations that differ only in summation order)."""
    settings = GenerationSettings(temperature=0, max_new_tokens=32)
    sequences = [engine.prompt([{"role": "user", "content": p}], settings)[0] for p in QUALITY_PROMPTS]
    steps = teacher_forced(engine, sequences, follow=32)
    want = torch.cat(steps)
    with torch.inference_mode():
        modules = torch.cat([engine.model(torch.tensor([s], device=engine.decoder.device)).logits[0].float()
                             for s in sequences])
    return sequences, want, {"positions": len(want), **agreement(modules, want, "bf16_modules"),
                             **steps_vs_prefill(engine, sequences, steps)}


def steps_vs_prefill(engine: ChatEngine, sequences: list[list[int]], steps: list[torch.Tensor]) -> dict:
    """The last position's logits of the decode steps (fused kernels over the current weights) against a prefill of
    each whole sequence (cuBLAS over the same weights, dequantised): a check of the kernels at the model's shapes."""
    decoder = engine.decoder
    with torch.inference_mode():
        prefill = torch.cat([decoder.prefill(torch.tensor([s], device=decoder.device), decoder.new_cache(len(s) + 1))
                             for s in sequences])
    last = torch.stack([t[-1] for t in steps])
    return agreement(last, prefill, "steps_vs_prefill")


def agreement(got: torch.Tensor, want: torch.Tensor, name: str) -> dict:
    return {f"{name}_top1_agreement": round(float((got.argmax(-1) == want.argmax(-1)).float().mean()), 3),
            f"{name}_relative_logits_error": round(float((got - want).norm() / want.norm()), 4)}


def modules_reference(model: LlamaForCausalLM, tokenizer, path: str) -> tuple[list[list[int]], torch.Tensor]:
    """The 8 fixed chat prompts with 32 greedy tokens of the bf16 model's own modules (``generate``) after each, and
    the modules' float32 logits at every position (one forward per sequence), saved at `path` with a checksum of the
    random weights (each process builds the same model from the same seed)."""
    engine = ChatEngine(model, tokenizer, name="reference", config=ServeConfig(fast_decode=False))  # the template
    settings = GenerationSettings(temperature=0, max_new_tokens=32)
    sequences, logits = [], []
    with torch.inference_mode():
        for prompt in QUALITY_PROMPTS:
            ids = torch.tensor([engine.prompt([{"role": "user", "content": prompt}], settings)[0]], device="cuda")
            seq = model.generate(ids, max_new_tokens=32, min_new_tokens=32, do_sample=False)
            sequences.append(seq[0].tolist())
            logits.append(model(seq).logits[0].float())
    want = torch.cat(logits)
    torch.save({"sequences": sequences, "want": want.cpu(), "checksum": checksum(model)}, path + ".tmp")
    Path(path + ".tmp").rename(path)
    return sequences, want


def checksum(model: LlamaForCausalLM) -> float:
    return float(model.model.layers[0].self_attn.q_proj.weight.detach().float().sum())
