"""bitsandbytes' 8-bit optimizers without a GPU sync after each parameter.

bitsandbytes' ``Optimizer8bit.step`` (0.50) calls ``torch.cuda.synchronize()`` after every parameter's update
(``bitsandbytes.utils.sync_gpu``, imported into ``bitsandbytes.optim.optimizer``), which its paged optimizers need
(their states move between host and GPU). A non-paged optimizer's updates are kernels on one stream, ordered with
the step before and after them without it; the syncs only make the GPU wait on the host between each two: 448 of
them a step for LoRA r64 on a 7B's seven linear layers, ~40 ms of an H200 step of 220-365 ms idle
(``benchmarks/profile_step.py``'s ``idle_long_ms``, 2026-12-04). ``without_syncs`` runs such an optimizer's own
step with those syncs skipped; the updates are the same kernels with the same arguments. ``UnsyncedTrainer`` is the
transformers Trainer whose optimizer gets it (``train`` builds it, or ``graphs.GraphedTrainer``, its subclass); it also
counts the tokens a run has seen with each sample's eos in (see ``_track_num_input_tokens``).
"""
from __future__ import annotations

import contextlib
import logging
import types

import torch
from transformers import Trainer

from myassistant.trainer.data import IGNORE_INDEX

log = logging.getLogger(__name__)


def without_syncs(optimizer: torch.optim.Optimizer) -> bool:
    """Make a non-paged bitsandbytes 8-bit optimizer (or accelerate's wrapper of one) step without its per-parameter
    GPU syncs; returns whether it did (False for any other optimizer, a paged one, or a bitsandbytes without them)."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer keeps it here
    try:
        from bitsandbytes.optim import optimizer as bnb_optimizer
    except ImportError:
        return False
    if (not isinstance(inner, bnb_optimizer.Optimizer8bit) or inner.is_paged
            or not callable(getattr(bnb_optimizer, "sync_gpu", None)) or getattr(inner, "unsynced", False)):
        return False
    step = inner.step  # the class's step as the instance has it (an LR scheduler may have wrapped it)

    def unsynced_step(self, *args, **kwargs):
        with _syncs_skipped(bnb_optimizer):
            return step(*args, **kwargs)

    # a bound method, as torch's LR schedulers expect of ``optimizer.step`` (they wrap its ``__func__``)
    inner.step = types.MethodType(unsynced_step, inner)
    inner.unsynced = True
    log.info("%s steps without a GPU sync after each parameter", type(inner).__name__)
    return True


@contextlib.contextmanager
def _syncs_skipped(module):
    sync, module.sync_gpu = module.sync_gpu, lambda tensor: None
    try:
        yield
    finally:
        module.sync_gpu = sync


class UnsyncedTrainer(Trainer):
    """The transformers Trainer every run builds; a non-paged bitsandbytes 8-bit optimizer steps without a GPU sync a
    parameter."""

    def create_optimizer(self, *args, **kwargs):
        optimizer = super().create_optimizer(*args, **kwargs)
        without_syncs(optimizer)
        return optimizer

    def _track_num_input_tokens(self, inputs):
        """run.json's ``tokens_seen``: every token but the padding. For rows without an attention mask (packed) the
        Trainer's own count leaves out each token equal to the pad id, and a chat tokenizer's pad is its eos: every
        sample's eos went uncounted. Padding is the pad id with no label (collate's and fast.collate's)."""
        pad = getattr(self.processing_class, "pad_token_id", None)
        if ("attention_mask" in inputs or "labels" not in inputs or pad is None
                or self.args.include_num_input_tokens_seen != "non_padding"):
            return super()._track_num_input_tokens(inputs)
        padding = (inputs["input_ids"] == pad) & (inputs["labels"] == IGNORE_INDEX)
        seen = torch.as_tensor(padding.numel(), device=padding.device) - padding.sum()
        self.state.num_input_tokens_seen += self.accelerator.gather(seen.to(self.args.device)).sum().item()
