"""The training step as a CUDA graph (trainer.graphs) trains exactly like the eager step.

CPU: the static-shape batches the graphs need (padding tokens, empty samples) change neither the
loss nor the gradients, and the reasons a run stays eager are named. GPU: replayed micro-steps give
the eager step's losses, gradients and weights through accumulation, zero_grad and optimizer steps,
and ``train`` on a GPU captures its step and learns as the eager run does.
"""
from __future__ import annotations

import logging

import pytest
import torch

from test_fast_path import loss_and_grads, packed_samples, randomize_lora, run_config
from test_train import losses, overrides, write_chats
from myassistant.trainer.gpu import fast, graphs
from myassistant.trainer.config import load_config
from myassistant.trainer.lora import build_model


def test_static_batches_have_fixed_sizes_and_the_same_loss_and_gradients(tiny_checkpoint, tmp_path):
    cfg = run_config(tiny_checkpoint, tmp_path, "lora")
    model = fast.apply(build_model(cfg), cfg)
    randomize_lora(model)
    model.train()
    rows = packed_samples(model.config.vocab_size)
    plain, static = fast.collate(rows), fast.collate(rows, pad_token_id=2, static=True)

    n, segments = plain["input_ids"].shape[1], len(plain["cu_seq_lens"]) - 1
    size = -(-n // 64) * 64  # n is 100..255 tokens: padded to a multiple of 64
    assert 100 <= n <= 255 and fast.static_tokens_step(8100) == 512 and fast.static_tokens_step(4100) == 512
    assert static["input_ids"].shape == static["labels"].shape == static["position_ids"].shape == (1, size) != (1, n)
    assert static["input_ids"][0, n:].eq(2).all() and static["labels"][0, n:].eq(-100).all()
    assert static["max_length"] == 64 >= plain["max_length"]  # pad samples are no longer than the real ones
    assert static["position_ids"][0, n:].tolist() == [i % 64 for i in range(size - n)]
    slots = len(static["cu_seq_lens"]) - 1
    assert slots & (slots - 1) == 0 and slots > segments  # a power of two: empty samples at the end
    assert static["cu_seq_lens"][-1] == static["cu_seq_lens"][-2] == size

    loss, grads = loss_and_grads(model, plain)
    static_loss, static_grads = loss_and_grads(model, static)
    assert static_loss == pytest.approx(loss, rel=1e-6)
    for name, g in grads.items():
        torch.testing.assert_close(static_grads[name], g, rtol=1e-5, atol=1e-7)


def test_why_a_run_stays_eager_is_named(tiny_checkpoint, tmp_path):
    cfg = run_config(tiny_checkpoint, tmp_path, "qlora")
    if torch.cuda.is_available():
        assert graphs.unavailable(cfg) is None
    else:
        assert graphs.unavailable(cfg) == "no CUDA GPU"
    cfg.lora.lora_dropout = 0.1
    assert graphs.unavailable(cfg) in ("no CUDA GPU", "lora.lora_dropout=0.1 (needs 0)")
    cfg.lora.lora_dropout, cfg.train.cuda_graphs = 0.0, False
    assert graphs.unavailable(cfg) == "train.cuda_graphs is false"


def test_a_step_whose_layers_did_not_all_compile_is_not_captured(caplog):
    """A decoder layer torch.compile gave up on runs eagerly; such a step is never captured (one captured so trained
    to a NaN loss on an H200): the step runs eagerly each time, the reason in the log once."""
    weight = torch.nn.Parameter(torch.ones(3))
    calls = []

    def step(batch, num_items=None):
        calls.append(batch["x"].shape)
        loss = (weight * batch["x"]).sum()
        loss.backward()
        return loss.detach()

    runner = graphs.GraphedStep(step, [weight], warmup=1, blocked=lambda: "a decoder layer runs eagerly (NameError: x)")
    with caplog.at_level(logging.WARNING, logger="myassistant.trainer"):
        losses = [runner({"x": torch.full((3,), float(i))}).item() for i in range(3)]
    assert losses == [0.0, 3.0, 6.0] and len(calls) == 3 and not runner.graphs
    assert runner.failed == "a decoder layer runs eagerly (NameError: x)"
    assert caplog.text.count("the training step stays eager, not a CUDA graph: a decoder layer runs eagerly") == 1
    assert weight.grad.tolist() == [3.0, 3.0, 3.0]  # 0 + 1 + 2, every step's gradient accumulated


def qlora_model(cfg, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(cfg)
    randomize_lora(model)
    fast.apply(model, cfg, compile=True)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    return model.train()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_graphed_micro_steps_train_like_eager_ones(tiny_checkpoint, tmp_path):
    pytest.importorskip("bitsandbytes")
    cfg = run_config(tiny_checkpoint, tmp_path, "qlora")
    eager_model, graph_model = qlora_model(cfg), qlora_model(cfg)
    vocab = eager_model.config.vocab_size
    batches = [fast.collate(packed_samples(vocab, n=6 + i % 3, seed=i), static=True) for i in range(8)]

    def run(model, graphed: bool):
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=0.1)  # linear in the gradients: AdamW's first step turns bf16 noise into ±lr

        def step(batch, num_items=None):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(**batch, num_items_in_batch=num_items).loss
            loss.backward()
            return loss.detach()

        runner = graphs.GraphedStep(step, params, warmup=1) if graphed else step
        seen, window_grads = [], []
        for i, batch in enumerate(batches):  # accumulation 2: two micro-steps, then the optimizer
            batch = {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}
            items = torch.tensor(64.0, device="cuda")
            seen.append(runner(batch, items).item())
            if i % 2:
                window_grads.append([p.grad.float().clone() for p in params])
                opt.step()
                opt.zero_grad(set_to_none=True)
        return seen, window_grads, [p.detach().float().clone() for p in params], runner

    eager_losses, eager_grads, eager_params, _ = run(eager_model, graphed=False)
    graph_losses, graph_grads, graph_params, runner = run(graph_model, graphed=True)
    assert runner.failed is None and len(runner.graphs) >= 1
    assert graph_losses == pytest.approx(eager_losses, rel=1e-3)
    for window, (a, b) in enumerate(zip(eager_grads, graph_grads)):
        errors = [((ga - gb).norm() / ga.norm().clamp_min(1e-12)).item() for ga, gb in zip(a, b)]
        # bf16 noise (measured ~1 %); a lost or doubled micro-step would be ~50 %
        assert max(errors) < 3e-2, f"window {window}: relative gradient errors up to {max(errors):.2e}"
    for pa, pb in zip(eager_params, graph_params):
        torch.testing.assert_close(pb, pa, rtol=1e-3, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_train_on_a_gpu_captures_its_step_and_learns_like_the_eager_run(tiny_checkpoint, tmp_path, caplog):
    from myassistant.trainer.train import train

    pytest.importorskip("bitsandbytes")
    data = write_chats(tmp_path / "chats.jsonl")
    settings = dict(max_steps=8, eval_steps=0, save_steps=4, gradient_checkpointing=True, report_to="none")
    with caplog.at_level(logging.INFO, logger="myassistant.trainer"):
        graphed = train(load_config(None, overrides(tiny_checkpoint, data, tmp_path / "graphed", "qlora", **settings)))
    assert "training step captured as CUDA graph 1" in caplog.text
    assert "CUDA graph capture failed" not in caplog.text
    eager = train(load_config(None, overrides(tiny_checkpoint, data, tmp_path / "eager", "qlora", cuda_graphs=False,
                                              **settings)))
    a, b = losses(graphed), losses(eager)
    assert a.keys() == b.keys() and len(a) == 8
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=2e-2, abs=1e-2), step
    assert a[8] < a[1]
