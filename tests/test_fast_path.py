"""The fast path (trainer.fast) computes the plain transformers + peft loss and LoRA gradients.

Plain: packed rows [batch, max_length] through sdpa with transformers' block-diagonal mask and its
own loss (logits materialised). Fast: the same samples flattened into one row, varlen attention and
the fused / chunked linear cross-entropy. CPU runs in fp32 (tolerance 1e-4 relative); the gpu test
runs QLoRA in bf16 (bf16 noise: loss within 2 %, gradients within 5 % relative norm).
"""
from __future__ import annotations

import copy
import random

import pytest
import datasets
import torch
import transformers

import myassistant.model as model_layer
from myassistant.trainer import data as data_lib
from myassistant.trainer.gpu import fast, lm_loss, varlen
from myassistant.trainer.config import load_config
from myassistant.trainer.lora import build_model

torch.set_num_threads(1)


def randomize_lora(peft_model) -> None:
    """LoRA B starts at zero; give every trained weight values so every gradient is non-trivial."""
    for p in peft_model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)


def lora_grads(peft_model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().float().clone() for n, p in peft_model.named_parameters() if p.requires_grad}


def packed_samples(vocab: int, n: int = 9, max_length: int = 64, seed: int = 0) -> list[dict]:
    """Random samples of 5..30 tokens (labels on the second half), packed into rows like training."""
    rng = random.Random(seed)
    ids = [[rng.randrange(3, vocab) for _ in range(rng.randint(5, 30))] for _ in range(n)]
    labels = [[-100] * (len(s) // 2) + s[len(s) // 2:] for s in ids]
    rows = data_lib.pack(datasets.Dataset.from_dict({"input_ids": ids, "labels": labels}), max_length)
    return [rows[i] for i in range(len(rows))]


def loss_and_grads(peft_model, batch: dict) -> tuple[float, dict[str, torch.Tensor]]:
    peft_model.zero_grad(set_to_none=True)
    device = next(p for p in peft_model.parameters() if p.requires_grad).device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        loss = peft_model(**{k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}).loss
    loss.backward()
    return loss.item(), lora_grads(peft_model)


def run_config(tiny_checkpoint, tmp_path, method: str):
    chats = tmp_path / "chats.jsonl"
    chats.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n')
    return load_config(None, [f"model.base={tiny_checkpoint}", f"quant.method={method}", "lora.lora_dropout=0",
                              "lora.r=8", f"data.train_file={chats}", f"train.output_dir={tmp_path / 'run'}"])


def compare(tiny_checkpoint, tmp_path, method: str, rel_loss: float, rel_grad: float):
    cfg = run_config(tiny_checkpoint, tmp_path, method)
    plain = build_model(cfg)
    randomize_lora(plain)
    plain.train()
    plain.config.use_cache = False  # as the Trainer runs it; with a cache transformers skips packed-sample masking
    rows = packed_samples(plain.config.vocab_size)
    assert len(rows) >= 2  # several packed rows, several samples in each

    plain_loss, plain_grads = loss_and_grads(plain, data_lib.collate(rows))
    fast_model = fast.apply(copy.deepcopy(plain) if method == "lora" else plain, cfg)
    fast_loss, fast_grads = loss_and_grads(fast_model, fast.collate(rows))

    assert abs(fast_loss - plain_loss) <= rel_loss * abs(plain_loss), (fast_loss, plain_loss)
    assert plain_grads.keys() == fast_grads.keys() and plain_grads
    for name, g in plain_grads.items():
        err = (fast_grads[name] - g).norm() / g.norm().clamp_min(1e-12)
        assert err <= rel_grad, f"{name}: relative gradient error {err:.2e}"
    return fast_loss


def test_fast_path_matches_plain_transformers_peft_on_cpu(tiny_checkpoint, tmp_path):
    loss = compare(tiny_checkpoint, tmp_path, "lora", rel_loss=1e-5, rel_grad=1e-4)
    assert 0 < loss < 20


def eager_and_compiled(tiny_checkpoint, tmp_path):
    """A LoRA model on the fast path, eager, its copy with compiled decoder layers, and a packed batch."""
    cfg = run_config(tiny_checkpoint, tmp_path, "lora")
    eager = build_model(cfg)
    randomize_lora(eager)
    eager.train()
    compiled = fast.apply(copy.deepcopy(eager), cfg, compile=True)
    fast.apply(eager, cfg)
    return eager, compiled, fast.collate(packed_samples(eager.config.vocab_size))


def test_a_layer_torch_compile_cannot_build_runs_eagerly_with_one_warning(tiny_checkpoint, tmp_path, monkeypatch,
                                                                          caplog):
    """Inductor failing (as on a GPU when the fold kernel's copy lacked a helper): the layers run eagerly, the
    gradients are eager's, and training says so once, not only in torch's own warnings; the model names the failure."""
    import torch._inductor.compile_fx

    def broken_inductor(*args, **kwargs):
        raise NameError("mul_rounded is not defined")

    monkeypatch.setattr(torch._inductor.compile_fx, "compile_fx", broken_inductor)
    monkeypatch.setattr(fast.COMPILE_ERRORS, "told", False)
    torch._dynamo.reset()
    eager, compiled, batch = eager_and_compiled(tiny_checkpoint, tmp_path)
    loss, grads = loss_and_grads(eager, batch)
    with caplog.at_level("WARNING", logger="myassistant.trainer.gpu.fast"):
        for _ in range(2):
            c_loss, c_grads = loss_and_grads(compiled, batch)
    torch._dynamo.reset()
    assert c_loss == loss and all(torch.equal(c_grads[name], g) for name, g in grads.items())
    warned = [r.getMessage() for r in caplog.records if r.name == "myassistant.trainer.gpu.fast"]
    assert len(warned) == 1 and "runs eagerly" in warned[0] and "mul_rounded is not defined" in warned[0], warned
    # and its CUDA graph is not captured (``graphs.GraphedTrainer`` asks this); the eager model's layers never failed
    assert "mul_rounded is not defined" in fast.compile_failure(compiled) and fast.compile_failure(eager) is None


def test_compiled_layers_match_eager_and_keep_only_the_checkpointed_inputs(tiny_checkpoint, tmp_path):
    """train.compile: the same loss and gradients; with activation checkpointing, a forward keeps what
    the eager one keeps (the checkpoint is taken around the compiled layer, not traced inside it)."""
    eager, compiled, batch = eager_and_compiled(tiny_checkpoint, tmp_path)
    results, failed = {}, len(fast.COMPILE_ERRORS.errors)
    for name, peft_model in (("eager", eager), ("compiled", compiled)):
        peft_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        for _ in range(2):  # the first compiled call compiles; the second is what training repeats
            saved: list[int] = []
            with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
                loss, grads = loss_and_grads(peft_model, batch)
        results[name] = loss, grads, sum(saved)
    (loss, grads, kept), (c_loss, c_grads, c_kept) = results["eager"], results["compiled"]
    assert len(fast.COMPILE_ERRORS.errors) == failed  # every layer compiled
    assert abs(c_loss - loss) <= 1e-5 * abs(loss)
    for name, g in grads.items():
        assert (c_grads[name] - g).norm() <= 1e-4 * g.norm().clamp_min(1e-12), name
    assert c_kept <= kept


@pytest.mark.parametrize("layer_class", sorted(fast.LAST_PRODUCT) + ["Gemma2DecoderLayer"])
def test_nothing_in_backward_reads_the_product_a_recompute_skips(layer_class):
    """``fast.LAST_PRODUCT``'s premise, on transformers' own layer classes (a new version could add a norm after the
    MLP, as Gemma 2's layer has: the control case): no op of a training forward saves the MLP output product's output
    for backward, so a checkpoint's recompute may skip that product."""
    model_type = layer_class.removesuffix("DecoderLayer").lower()
    config = transformers.AutoConfig.for_model(model_type, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                               num_attention_heads=4, num_key_value_heads=2, vocab_size=100, head_dim=8)
    model = transformers.AutoModel.from_config(config)
    layer = model.layers[0]
    assert type(layer).__name__ == layer_class
    outputs, saved = [], []
    layer.get_submodule(fast.LAST_PRODUCT.get(layer_class, "mlp.down_proj")).register_forward_hook(
        lambda module, args, out: outputs.append(out))
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        model(torch.randint(0, 100, (1, 7))).last_hidden_state.sum().backward()
    saved_storage = {t.untyped_storage().data_ptr() for t in saved}
    read = any(out.untyped_storage().data_ptr() in saved_storage for out in outputs)
    assert outputs and read == (layer_class not in fast.LAST_PRODUCT)


def test_chunked_loss_is_transformers_loss():
    """The fallback loss equals transformers' ForCausalLMLoss, also across chunk borders and with num_items."""
    from transformers.loss.loss_utils import ForCausalLMLoss

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 50, 16, generator=g, requires_grad=True)
    weight = torch.randn(40, 16, generator=g, requires_grad=True)
    labels = torch.randint(0, 40, (2, 50), generator=g)
    labels[:, :7] = -100
    old, lm_loss.CE_CHUNK = lm_loss.CE_CHUNK, 13
    try:
        for items in (None, torch.tensor(77)):
            ours = lm_loss.linear_cross_entropy(hidden, weight, labels, items)
            ref = ForCausalLMLoss(hidden @ weight.T, labels, 40, num_items_in_batch=items)
            torch.testing.assert_close(ours, ref)
            (g1,) = torch.autograd.grad(ours, weight)
            (g2,) = torch.autograd.grad(ref, weight)
            torch.testing.assert_close(g1, g2)
    finally:
        lm_loss.CE_CHUNK = old


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("vocab", [92544, 1000])  # InternLM2's; one below a Triton block
def test_gpu_loss_is_transformers_loss_on_bf16_logits(vocab, monkeypatch):
    """The GPU loss (gradient computed in forward, chunked) against ForCausalLMLoss on the bf16 logits the
    plain path makes under autocast: across chunk borders, with ignored tokens and num_items."""
    from transformers.loss.loss_utils import ForCausalLMLoss

    monkeypatch.setattr(lm_loss, "GPU_CHUNK", 300)
    g = torch.Generator("cuda").manual_seed(0)
    hidden = torch.randn(2, 700, 256, device="cuda", generator=g).bfloat16().requires_grad_()
    weight = (torch.randn(vocab, 256, device="cuda", generator=g) * 0.05).bfloat16()
    labels = torch.randint(0, vocab, (2, 700), device="cuda", generator=g)
    labels[:, :100] = -100
    for items in (None, torch.tensor(1111, device="cuda")):
        ours = lm_loss.linear_cross_entropy(hidden, weight, labels, items)
        ref = ForCausalLMLoss(hidden @ weight.T, labels, vocab, num_items_in_batch=items)
        torch.testing.assert_close(ours, ref.float(), rtol=1e-4, atol=1e-4)
        (g1,) = torch.autograd.grad(ours, hidden)
        (g2,) = torch.autograd.grad(ref, hidden)
        assert (g1.float() - g2.float()).norm() <= 1e-2 * g2.float().norm()


def test_varlen_kwargs_mark_every_sample():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1]])
    kw = varlen.varlen_kwargs(pos)
    assert kw["cu_seq_lens_q"].tolist() == [0, 3, 5, 6, 10, 12] and kw["max_length_q"] == 4


def test_generation_still_works_after_apply(tiny_checkpoint, tmp_path):
    """Eval prompts are answered during training: generate with padding must be unchanged."""
    cfg = run_config(tiny_checkpoint, tmp_path, "lora")
    plain = build_model(cfg).eval()
    tok = model_layer.load_tokenizer(tiny_checkpoint)
    prompts = [[{"role": "user", "content": "你是谁"}], [{"role": "user", "content": "Who made you and why?"}]]
    before = model_layer.generate_replies(plain, tok, prompts, max_new_tokens=8)
    after = model_layer.generate_replies(fast.apply(plain, cfg), tok, prompts, max_new_tokens=8)
    assert before == after


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fast_path_matches_plain_qlora_on_gpu(tiny_checkpoint, tmp_path, caplog):
    """QLoRA with its adapters folded into the dequantised weights (trainer.qlora_fold) against plain peft."""
    pytest.importorskip("bitsandbytes")
    caplog.set_level("INFO", logger="myassistant.trainer.gpu.fast")
    compare(tiny_checkpoint, tmp_path, "qlora", rel_loss=2e-2, rel_grad=5e-2)
    folded = [r.getMessage() for r in caplog.records if "fold their adapter" in r.getMessage()]
    assert folded and not folded[0].startswith("fast path: 0 "), folded
