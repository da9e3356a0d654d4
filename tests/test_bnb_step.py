"""trainer.gpu.bnb_step: a bitsandbytes 8-bit optimizer steps without its per-parameter GPU syncs and updates the
parameters exactly as its own step does (on the CPU, bitsandbytes' CPU kernels; skipped without bitsandbytes)."""
from __future__ import annotations

import pytest
import torch

bnb = pytest.importorskip("bitsandbytes")
from bitsandbytes.optim import optimizer as bnb_optimizer  # noqa: E402

from myassistant.trainer.gpu import bnb_step  # noqa: E402


def three_steps(unsynced: bool) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(64, 512, generator=g)) for _ in range(3)]
    optimizer = bnb.optim.AdamW8bit(params, lr=1e-2, min_8bit_size=0)
    if unsynced:
        assert bnb_step.without_syncs(optimizer)
        assert not bnb_step.without_syncs(optimizer)  # once is enough
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 / (step + 1))  # wraps step, as Trainer's
    for _ in range(3):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        optimizer.step()
        schedule.step()
    return [p.detach().clone() for p in params]


def test_without_syncs_steps_like_bitsandbytes_own_step_with_no_sync(monkeypatch):
    syncs = []
    counted = lambda tensor: syncs.append(tensor)  # noqa: E731
    monkeypatch.setattr(bnb_optimizer, "sync_gpu", counted)
    plain = three_steps(unsynced=False)
    assert len(syncs) == 9  # bitsandbytes' own step: one after each parameter's update
    syncs.clear()
    fast = three_steps(unsynced=True)
    assert syncs == [] and bnb_optimizer.sync_gpu is counted
    for a, b in zip(plain, fast):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_other_optimizers_keep_their_step():
    p = torch.nn.Parameter(torch.zeros(4096))
    assert not bnb_step.without_syncs(torch.optim.AdamW([p]))
    paged = bnb.optim.AdamW8bit([p], is_paged=True)  # its states move between host and GPU: it needs the syncs
    assert not bnb_step.without_syncs(paged)


def test_the_graphed_trainer_creates_its_8bit_optimizer_without_syncs(tmp_path):
    """``train.optim: adamw_bnb_8bit`` on the GPU path: the optimizer transformers builds comes back unsynced."""
    from transformers import TrainingArguments

    from myassistant.trainer.gpu.graphs import GraphedTrainer

    model = torch.nn.Sequential(torch.nn.Linear(512, 512))
    args = TrainingArguments(output_dir=str(tmp_path), optim="adamw_bnb_8bit", use_cpu=True, report_to=[])
    optimizer = GraphedTrainer(model=model, args=args).create_optimizer()
    assert isinstance(optimizer, bnb_optimizer.Optimizer8bit) and optimizer.unsynced


def test_the_trainer_train_builds_creates_its_8bit_optimizer_without_syncs(tmp_path):
    """Without CUDA graphs too (``train`` with LoRA dropout, the presets' default, runs the plain Trainer loop): an
    ``adamw_bnb_8bit`` optimizer comes back unsynced, a torch one as it was."""
    from transformers import TrainingArguments

    model = torch.nn.Sequential(torch.nn.Linear(512, 512))
    for optim, unsynced in (("adamw_bnb_8bit", True), ("adamw_torch", False)):
        args = TrainingArguments(output_dir=str(tmp_path), optim=optim, use_cpu=True, report_to=[])
        optimizer = bnb_step.UnsyncedTrainer(model=model, args=args).create_optimizer()
        assert getattr(optimizer, "unsynced", False) is unsynced
