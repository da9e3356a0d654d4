"""Training speed of the project's QLoRA path on the InternLM2 shapes, one JSON line per case.

    python -m benchmarks.train_gpu ours_qlora1 ours_qlora4 ours_short4 ...   (SHAPE=1_8b | 7b | tiny)
    python -m benchmarks.train_gpu proof          # issue 4: trainer.train.train, 300 QLoRA steps, packed
    python -m benchmarks.train_gpu --report results.jsonl   # ratio lines against the peers' cases

Weights are random (speed does not depend on their values), written once per shape under
$TMPDIR/assistant_bench as an InternLM2-format folder (original key names, fused wqkv) next to a
tiny sentencepiece tokenizer: the model's vocabulary (92,544) is larger than the tokenizer's, as
random-token benchmarks need. The loop is the Trainer's step without the Trainer (autocast bf16,
non-reentrant per-layer activation checkpointing, fused AdamW), with the peers' settings: LoRA r64
alpha 16 on all seven linear layers, seq 2048, 3 warm-up (6 when compiled) + 10 timed steps on random tokens.

A case is ``ours_<kind><batch>[_<variant>...]``: kind ``qlora`` (full 2048-token rows), ``short``
(32-256-token chats packed into 2048-token rows, ``batch`` rows a step) or ``llava`` (LLaVA stage 2 as
``trainer.multimodal`` builds it: a random CLIP-ViT-L/14-336 tower and projector in front of the LLM, one
picture a row, its 576 image tokens at the row's start and without loss, as ``gpu_llava_peer.py``); variants ``d0`` (LoRA
dropout 0 instead of the presets' 0.1), ``plain`` (no fast path: transformers + peft as
trainer.lora builds it), ``compile`` (torch.compile each decoder layer), ``ro`` (the same with
mode="reduce-overhead": CUDA graphs of each compiled layer), ``nockpt`` (no activation
checkpointing), ``offload`` (checkpointed layer inputs kept in pinned CPU memory), ``adam8``
(bitsandbytes 8-bit AdamW), ``nofold`` (QLoRA layers as peft runs them, not ``trainer.qlora_fold``),
``cce`` (the loss by cut_cross_entropy, not ``trainer.lm_loss``'s), ``graph`` (compiled layers and each
micro-step replayed as a CUDA graph, ``trainer.graphs``: what ``train`` runs on a GPU with lora_dropout 0;
short rows padded to static sizes), ``keep`` (with ``graph`` / ``compile``: each QLoRA layer keeps the W' its
checkpoint's recompute folds for its backward, ``train.qlora_keep_folded``, ``train``'s default), ``full`` (with
``graph`` / ``compile``: the checkpoint's recompute runs each layer in full, its MLP output product too, as before
``fast.apply(skip_last_product=...)``), ``bnbsync`` (with ``adam8``: bitsandbytes' own step, a GPU sync after each
parameter, not ``trainer.gpu.bnb_step.without_syncs``), ``fp8`` (the QLoRA layers' frozen products in fp8,
``train.qlora_fp8``: other numerics than the rest, see ``trainer.gpu.qlora_fp8``).
"""
from __future__ import annotations

import contextlib
import functools
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = {  # InternLM2 configs (config.json keys)
    "1_8b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=16,
                 num_key_value_heads=8, vocab_size=92544),
    "7b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=92544),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=4096),
}
PARAMS = {"1_8b": 1.89e9, "7b": 7.74e9, "tiny": 1e6}  # for the peers' mfu_6N column
SHAPE = os.environ.get("SHAPE", "1_8b")
SEQ = int(os.environ.get("SEQ", 2048 if SHAPE != "tiny" else 128))
CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
BENCH_DIR = Path(os.environ.get("BENCH_DIR", Path(tempfile.gettempdir()) / "assistant_bench"))


BENCH_DIR.mkdir(parents=True, exist_ok=True)


def emit(row: dict) -> None:
    print(json.dumps(row, ensure_ascii=False), flush=True)


# ----------------------------------------------------------------------------- checkpoints

def build_checkpoint(shape: str = SHAPE, *, reuse_peers: bool = True) -> Path:
    """An InternLM2-format folder of ``shape`` with random bf16 weights and a tiny tokenizer (once).

    Where the peers' scripts already wrote the shape (Llama layout, same numbers of everything), that
    folder is used instead: model.load_model reads both layouts and speed does not depend on it.
    """
    from safetensors.torch import save_file

    import myassistant.model as model_layer
    from myassistant.model import internlm2

    peers = Path(tempfile.gettempdir()) / f"internlm2_{shape}_shape"
    if reuse_peers and (peers / "config.json").exists():
        return peers
    out = BENCH_DIR / f"internlm2_{shape}"
    if (out / "model.safetensors").exists():
        return out
    tmp = BENCH_DIR / f".internlm2_{shape}.tmp"
    model_layer.build_tiny_checkpoint(tmp)  # tokenizer files; its tiny weights are replaced below
    cfg = json.loads((tmp / "config.json").read_text())
    cfg.update(SHAPES[shape], max_position_embeddings=32768, rope_theta=1e6, torch_dtype="bfloat16")
    llama_cfg = internlm2.llama_config_from_internlm2(cfg)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in __import__("transformers").LlamaForCausalLM(llama_cfg).state_dict().items()}
    g = torch.Generator(DEVICE).manual_seed(0)
    sd = {k: (torch.ones(s, device=DEVICE) if k.endswith("norm.weight") else
              torch.randn(s, device=DEVICE, generator=g) * 0.02).to(torch.bfloat16) for k, s in shapes.items()}
    sd = {k: v.cpu().contiguous() for k, v in internlm2.state_dict_to_internlm2(sd, llama_cfg).items()}
    save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    tmp.rename(out)
    del sd
    return out


def build_vision_encoder() -> Path:
    """A CLIP-ViT-L/14-336 vision tower with random bf16 weights and its image processor (once)."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    out = BENCH_DIR / f"clip_vit_large_p14_{IMAGE}"
    if not (out / "model.safetensors").exists():
        config = CLIPVisionConfig(**VISION, image_size=IMAGE, patch_size=14, projection_dim=VISION["hidden_size"])
        with torch.device(DEVICE):
            CLIPVisionModel(config).to(torch.bfloat16).save_pretrained(str(out))
        CLIPImageProcessor(size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE}).save_pretrained(str(out))
    return out


VISION = (dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16) if SHAPE != "tiny"
          else dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4))
IMAGE = 336 if SHAPE != "tiny" else 56
PATCHES = (IMAGE // 14) ** 2  # image tokens a picture: 576 for ViT-L/14-336


# ----------------------------------------------------------------------------- one case

def run_config(base: Path, method: str, dropout: float, extra: list[str] = ()):
    from myassistant.trainer.config import load_config

    chats = BENCH_DIR / "one_chat.jsonl"  # the config wants a data file; the loop feeds random tokens
    chats.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n')
    return load_config(None, [f"model.base={base}", f"quant.method={method}", f"lora.lora_dropout={dropout}",
                              f"data.train_file={chats}", f"train.output_dir={BENCH_DIR / 'unused'}", *extra])


def build(cfg, variants: set[str]):
    from myassistant.trainer.gpu import fast
    from myassistant.trainer.lora import build_model

    if cfg.vision.encoder:
        from myassistant.trainer.multimodal.model import build_training_model

        model = build_training_model(cfg)[0]
    else:
        model = build_model(cfg)
    cfg.train.qlora_fold = "nofold" not in variants
    cfg.train.lm_loss = "cce" if "cce" in variants else "auto"
    cfg.train.qlora_keep_folded = "keep" in variants
    cfg.train.qlora_fp8 = "fp8" in variants
    if "plain" not in variants:
        fast.apply(model, cfg, compile="reduce-overhead" if "ro" in variants else bool(variants & {"compile", "graph"}),
                   skip_last_product="full" not in variants)
    if "nockpt" not in variants:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    model.train()
    return model


def batches(kind: str, bs: int, n: int, vocab: int, variants: set[str]):
    """(batch dict, samples, real tokens) for each step. short: U[32,256]-token chats packed like training."""
    import datasets

    from myassistant.trainer import data as data_lib
    from myassistant.trainer.gpu import fast

    g = torch.Generator().manual_seed(0)
    if kind == "llava":  # vocab: the image token's id; the rows above it are the vocabulary's padding
        x = torch.randint(0, vocab, (bs, SEQ), generator=g)
        x[:, 1:1 + PATCHES] = vocab
        labels = x.clone()
        labels[:, :1 + PATCHES] = -100
        pixels = torch.randn(bs, 3, IMAGE, IMAGE, generator=g)
        return [({"input_ids": x, "labels": labels, "pixel_values": pixels}, bs, bs * SEQ)] * n
    if kind == "qlora":
        x = torch.randint(0, vocab, (bs, SEQ), generator=g)
        return [({"input_ids": x, "labels": x}, bs, bs * SEQ)] * n
    lengths = torch.randint(32, min(256, SEQ) + 1, (n * bs * SEQ // 100,), generator=g).tolist()
    ids = [torch.randint(3, vocab, (k,), generator=g).tolist() for k in lengths]
    rows = data_lib.pack(datasets.Dataset.from_dict({"input_ids": ids, "labels": ids}), SEQ)
    rows = [rows[i] for i in range(min(len(rows), n * bs))]
    collate = (data_lib.collate if "plain" in variants else
               functools.partial(fast.collate, static=True) if "graph" in variants else fast.collate)
    out = []
    for i in range(0, len(rows) - bs + 1, bs):
        chunk = rows[i:i + bs]
        out.append((collate(chunk), sum(r["position_ids"].count(0) for r in chunk), sum(len(r["input_ids"]) for r in chunk)))
    return out[:n]


def parse_case(name: str) -> tuple[str, int, set[str]]:
    """``ours_qlora4_d0_compile`` -> ("qlora", 4, {"d0", "compile"})."""
    parts = name.split("_")
    return parts[1].rstrip("0123456789"), int(parts[1].lstrip("abcdefghijklmnopqrstuvwxyz")), set(parts[2:])


def train_case(name: str, steps: int = 10, warm: int = 3,
               profiler: contextlib.AbstractContextManager | None = None) -> dict:
    """One case's timed steps; ``profiler`` (e.g. torch.profiler.profile) is entered around them only."""
    kind, bs, variants = parse_case(name)
    if variants & {"compile", "ro", "graph"}:
        warm = max(warm, 6)  # compiled layers recompile once or twice until varying sizes are marked dynamic
    method = "qlora" if CUDA else "lora"
    base = build_checkpoint()
    if CUDA:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    vision = [f"vision.encoder={build_vision_encoder()}"] if kind == "llava" else []
    cfg = run_config(base, method, 0.0 if "d0" in variants else 0.1, vision)
    model = build(cfg, variants)
    params = [p for p in model.parameters() if p.requires_grad]
    if "adam8" in variants:
        import bitsandbytes as bnb

        opt = bnb.optim.AdamW8bit(params, lr=2e-4)
        if "bnbsync" not in variants:  # what trainer.gpu.graphs.GraphedTrainer does to it
            from myassistant.trainer.gpu import bnb_step

            bnb_step.without_syncs(opt)
    else:
        opt = torch.optim.AdamW(params, lr=2e-4, fused=CUDA)
    vocab = model.config.image_token_id if kind == "llava" else model.config.vocab_size
    data = batches(kind, bs, warm + steps, vocab, variants)
    if "graph" in variants:  # the timed steps' batches first run untimed: each size is captured as training goes on
        data = data[warm:] + data[warm:]
        warm = steps
    offload = torch.autograd.graph.save_on_cpu(pin_memory=True) if "offload" in variants else None

    def forward_backward(batch: dict, num_items=None) -> torch.Tensor:
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=CUDA):
            with offload if offload is not None else contextlib.nullcontext():
                loss = model(**batch).loss
        loss.backward()
        return loss.detach()

    step = forward_backward
    if "graph" in variants and CUDA:
        from myassistant.trainer.gpu.graphs import GraphedStep

        step = GraphedStep(forward_backward, params)
    samples = tokens = 0
    timed_steps = contextlib.ExitStack()
    for i, (batch, n_samples, n_tokens) in enumerate(data):
        if i == warm:
            if CUDA:
                torch.cuda.synchronize()
                peak_warm = torch.cuda.max_memory_allocated()  # a graph's capture: replays allocate in its pool
                torch.cuda.reset_peak_memory_stats()
            if profiler is not None:
                timed_steps.enter_context(profiler)
            t0 = time.perf_counter()
        batch = {k: v.to(DEVICE, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        loss = step(batch)
        torch.nn.utils.clip_grad_norm_(params, 1.0)  # the Trainer clips (max_grad_norm 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warm:
            samples, tokens = samples + n_samples, tokens + n_tokens
    if CUDA:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    timed_steps.close()
    timed = len(data) - warm
    row = dict(case=name, shape=SHAPE, bs=bs, seq=SEQ, tokens_per_s=round(tokens / dt), step_s=round(dt / timed, 4),
               graphs=len(step.graphs) if step is not forward_backward else None,
               graph_failed=getattr(step, "failed", None),
               peak_gib=round(max(peak_warm, torch.cuda.max_memory_allocated()) / 2**30, 2) if CUDA else None,
               mfu_6N=round(6 * PARAMS[SHAPE] * tokens / dt / 790e12, 3), loss=round(loss.item(), 3))
    if kind == "short":
        row.update(samples_per_s=round(samples / dt, 1), samples_per_step=round(samples / timed, 1))
    del model, opt, loss, data
    gc.collect()
    if CUDA:
        torch.cuda.empty_cache()
    return row


# ----------------------------------------------------------------------------- issue 4 proof

class ProgressLines(__import__("transformers").TrainerCallback):
    """A JSON line per log (loss, tokens/s, peak memory so far): a run cut short still says how it went."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            emit(dict(case="proof_progress", step=state.global_step, loss=logs["loss"],
                      tokens_per_s=logs.get("tokens_per_s"),
                      peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if CUDA else None))


def proof(steps: int = int(os.environ.get("PROOF_STEPS", 300))) -> dict:
    """trainer.train.train as a user runs it: the 1.8B QLoRA preset on generated identity data, packed."""
    import myassistant.trainer.train as train_mod
    from myassistant.trainer import data as data_lib
    from myassistant.trainer.gpu import fast
    from myassistant.trainer import lora
    from myassistant.trainer.config import PRESETS_DIR, load_config
    from myassistant.trainer.identity import IdentitySpec, write_identity_dataset

    wired = hasattr(train_mod, "fast")
    if not wired and CUDA:  # what train.py does once the fast path is wired in (see trainer/fast.py)
        train_mod.build_model = lambda cfg: fast.apply(lora.build_model(cfg), cfg)
        plain_collate = data_lib.collate
        data_lib.collate = lambda features, pad_token_id=0: plain_collate(features, flatten=True)
    base = build_checkpoint(reuse_peers=False)  # the user's case: an InternLM2-format download
    data = write_identity_dataset(IdentitySpec(name="小助手", author="bench", count=1000), BENCH_DIR / "identity")
    run_dir = BENCH_DIR / f"proof_{int(time.time())}"
    cfg = load_config(PRESETS_DIR / "internlm2_chat_1_8b_qlora_assistant.yaml", [
        f"model.base={base}", f"data.train_file={data / 'train.jsonl'}", f"train.output_dir={run_dir}",
        f"train.max_steps={steps}", "train.num_train_epochs=1000", "train.eval_steps=0",
        "train.eval_max_new_tokens=16", "train.save_steps=100", "train.logging_steps=10", "train.report_to=none",
        *([] if CUDA else ["quant.method=lora", "data.max_length=128"])])
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    run = train_mod.train(cfg, callbacks=(ProgressLines(),))
    info = json.loads((run / "run.json").read_text())
    losses = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in losses if "loss" in r]
    return dict(case="proof_train_qlora_packed", shape=SHAPE, fast_path="wired" if wired else "patched in" if CUDA else "off (CPU)",
                steps=info["steps"], tokens_seen=info["tokens_seen"], seconds=info["train_seconds_last_session"],
                tokens_per_s=round(info["tokens_seen"] / info["train_seconds_last_session"]),
                peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if CUDA else None,
                first_loss=losses[0] if losses else None, final_loss=info["final_loss"],
                adapter=sorted(p.name for p in run.glob("adapter_*")))


# ----------------------------------------------------------------------------- ratios

PAIRS = [  # (ours, peer, field): the targets are ratios against these peers
    ("ours_llava1_d0_graph", "llava_qlora1", "tokens_per_s"), ("ours_llava4_d0_graph", "llava_qlora4", "tokens_per_s"),
    ("ours_llava2_d0_graph", "llava_qlora4", "tokens_per_s"),
    ("ours_qlora1_d0", "unsloth_qlora1", "tokens_per_s"), ("ours_qlora1", "qlora1", "tokens_per_s"),
    ("ours_qlora1_d0_compile", "unsloth_qlora1", "tokens_per_s"),
    ("ours_qlora4_d0_compile", "unsloth_qlora4", "tokens_per_s"), ("ours_short4_compile", "qlora_short16", "samples_per_s"),
    ("ours_qlora1_d0_graph", "unsloth_qlora1", "tokens_per_s"), ("ours_qlora4_d0_graph", "unsloth_qlora4", "tokens_per_s"),
    ("ours_qlora1_d0_graph", "unsloth_qlora4", "tokens_per_s"), ("ours_qlora2_d0_graph", "unsloth_qlora4", "tokens_per_s"),
    ("ours_qlora3_d0_graph", "unsloth_qlora4", "tokens_per_s"), ("ours_short4_d0_graph", "qlora_short16", "samples_per_s"),
    ("ours_qlora1_d0_graph_adam8@7b", "unsloth_qlora1@7b", "tokens_per_s"),
    ("ours_qlora1_d0_graph_adam8_keep@7b", "unsloth_qlora1@7b", "tokens_per_s"),
    ("ours_qlora2_d0_graph_adam8@7b", "unsloth_qlora2@7b", "tokens_per_s"),
    ("ours_qlora2_d0_graph_adam8_keep@7b", "unsloth_qlora2@7b", "tokens_per_s"),
    ("ours_qlora1_d0_graph_adam8_keep_fp8@7b", "unsloth_qlora1@7b", "tokens_per_s"),
    ("ours_qlora2_d0_graph_adam8_keep_fp8@7b", "unsloth_qlora2@7b", "tokens_per_s"),
    ("ours_qlora3_d0_graph_keep", "unsloth_qlora4", "tokens_per_s"),
    ("ours_qlora4_d0_graph_adam8", "unsloth_qlora4", "tokens_per_s"),
    ("ours_qlora4_d0_graph_adam8_keep", "unsloth_qlora4", "tokens_per_s"),
    ("ours_qlora4_d0", "unsloth_qlora4", "tokens_per_s"), ("ours_qlora4", "qlora4", "tokens_per_s"),
    ("ours_short4", "qlora_short16", "samples_per_s"),
    ("ours_qlora1_d0@7b", "unsloth_qlora1@7b", "tokens_per_s"),
]


def report(path: Path) -> None:
    rows = {}
    for line in path.read_text().splitlines():
        r = json.loads(line) if line.startswith("{") else {}
        if "case" in r:  # not profile_step's rows
            rows[r["case"] + ("@7b" if r.get("shape") == "7b" else "")] = r
    for ours, peer, key in PAIRS:
        if ours in rows and peer in rows and key in rows[ours] and key in rows[peer]:
            a, b = rows[ours], rows[peer]
            emit(dict(ratio=f"{ours} / {peer}", field=key, ours=a[key], peer=b[key], x=round(a[key] / b[key], 2),
                      ours_peak_gib=a.get("peak_gib"), peer_peak_gib=b.get("peak_gib")))


def main(argv: list[str]) -> int:
    if argv[:1] == ["--report"]:
        report(Path(argv[1]))
        return 0
    if CUDA:
        import transformers

        print(torch.__version__, torch.cuda.get_device_name(0), "transformers", transformers.__version__, flush=True)
    for case in argv:
        try:
            emit(proof() if case == "proof" else train_case(case))
        except Exception as err:  # one broken case must not hide the others
            import traceback

            traceback.print_exc()
            emit(dict(case=case, shape=SHAPE, error=repr(err)[:300]))
            gc.collect()
            if CUDA:
                torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
