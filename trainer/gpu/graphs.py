"""The training micro-step (forward + backward) replayed as one CUDA graph.

A QLoRA step of a 1.8B model at batch 1 is a few thousand small kernels; launched one by one from
Python the GPU waits on the host for most of the step (issue 9: Unsloth's step takes about as long at
batch 1 as at batch 4). Captured once and replayed, the same kernels run back to back.

How: the first micro-step of each input shape runs eagerly (torch.compile compiles, Triton
autotunes, cuBLAS allocates its workspace); the next one is captured, its gradients written into the
graph's own memory (``GraphedStep``), and from then on a micro-step of that shape copies its batch
into the graph's input tensors and replays. The optimizer step stays eager
(fused AdamW is a few kernels). A capture that fails leaves training eager, with a warning; so does a
decoder layer that torch.compile gave up on (it runs eagerly: a step captured with such layers once
trained to a NaN loss on an H200, benchmarks/README.md session 30).

Needs: CUDA; a few fixed input shapes (``trainer.fast.collate(static=True)``); no random numbers in
the step (LoRA dropout 0: the activation checkpoint would have to read the RNG state, which a
capture does not allow); no DeepSpeed. ``train.cuda_graphs: false`` turns it off.
"""
from __future__ import annotations

import collections
import logging
from typing import Any, Callable

import torch
from transformers import Trainer

from myassistant.trainer.gpu import bnb_step, fast

log = logging.getLogger(__name__)

Step = Callable[[dict, Any], torch.Tensor]  # (batch on the GPU, num_items_in_batch) -> detached loss


def unavailable(cfg) -> str | None:
    """Why the training step of ``cfg`` cannot be a CUDA graph, or None when it can."""
    checks = [(not cfg.train.cuda_graphs, "train.cuda_graphs is false"),
              (not torch.cuda.is_available(), "no CUDA GPU"),
              (cfg.quant.method not in ("qlora", "lora"), f"quant.method={cfg.quant.method} (LoRA / QLoRA only)"),
              (cfg.lora.lora_dropout > 0, f"lora.lora_dropout={cfg.lora.lora_dropout} (needs 0)"),
              (cfg.train.deepspeed is not None, "DeepSpeed"),
              (not (cfg.train.compile and cfg.train.gradient_checkpointing),
               "needs train.compile and train.gradient_checkpointing")]
    return next((why for failed, why in checks if failed), None)


class _Graph:
    """One captured micro-step: its input tensors (copied into before each replay), its loss and where
    it writes the gradients (in the graphs' memory pool, valid until the next replay of any graph)."""

    def __init__(self, graph: torch.cuda.CUDAGraph, inputs: dict, num_items: Any, loss: torch.Tensor,
                 grads: list[torch.Tensor | None]):
        self.graph, self.inputs, self.num_items, self.loss = graph, inputs, num_items, loss
        self.grads = [None if g is None else (g.untyped_storage().data_ptr(), g.untyped_storage().nbytes(),
                                              g.storage_offset(), g.shape, g.stride(), g.dtype, g.device)
                      for g in grads]

    def replay(self, inputs: dict, num_items: Any) -> torch.Tensor:
        for name, value in inputs.items():
            if torch.is_tensor(value):
                self.inputs[name].copy_(value, non_blocking=True)
        if torch.is_tensor(num_items):
            self.num_items.copy_(num_items, non_blocking=True)
        self.graph.replay()
        return self.loss.clone()  # the next replay overwrites self.loss

    def gradients(self) -> list[torch.Tensor | None]:
        """Tensors over the memory the graph wrote its gradients to, not owning it: the pool counts it
        free, so other graphs' captures may use it for their activations (none runs with another)."""
        out = []
        for where in self.grads:
            if where is None:
                out.append(None)
                continue
            ptr, nbytes, offset, shape, stride, dtype, device = where
            storage = torch._C._construct_storage_from_data_pointer(ptr, device, nbytes)
            out.append(torch.empty(0, dtype=dtype, device=device).set_(storage, offset, shape, stride))
        return out


def _signature(inputs: dict, num_items: Any) -> tuple:
    """What a graph is specialised on: tensor shapes and dtypes, and every other value."""
    def one(value):
        return (tuple(value.shape), value.dtype, value.device) if torch.is_tensor(value) else value
    return tuple((name, one(value)) for name, value in sorted(inputs.items())) + (("num_items", one(num_items)),)


class GraphedStep:
    """``step(batch, num_items)`` (forward + backward, returning the detached loss) as CUDA graphs.

    ``params``: the trained parameters. A graph writes their gradients into its pool, into blocks its
    activations freed late in its backward (gradients that lived through the whole step, as
    accumulating in place would need, cost their size at the step's peak: 0.23 GiB for the 1.8B
    model's adapter), and the pool counts those blocks free after the capture, so the graphs of other
    sizes reuse them instead of each keeping its own. After a replay ``.grad`` is that memory, or,
    inside an accumulation window, the sum so far plus it (the sum is moved out of the pool before
    the next replay).
    """

    def __init__(self, step: Step, params: list[torch.nn.Parameter], *, warmup: int = 1, max_graphs: int = 8,
                 blocked: Callable[[], str | None] = lambda: None):
        """``blocked``: why the step must not be captured now (None: it may), asked before each capture."""
        self.step, self.params, self.warmup, self.max_graphs = step, params, warmup, max_graphs
        self.blocked = blocked
        self.graphs: dict[tuple, _Graph] = {}
        self.seen: collections.Counter = collections.Counter()
        self.pool = None  # one memory pool for all graphs: they never run at the same time
        self.in_pool: set[int] = set()  # the storage data_ptr of every graph's gradients
        self.failed: str | None = None

    def __call__(self, inputs: dict, num_items: Any = None) -> torch.Tensor:
        key = _signature(inputs, num_items)
        graph = self.graphs.get(key)
        if graph is None and not self.failed and len(self.graphs) < self.max_graphs:
            self.seen[key] += 1
            if self.seen[key] > self.warmup and self._may_capture():
                return self._capture(key, inputs, num_items)
        if graph is None:
            return self.step(inputs, num_items)
        so_far = self._sums_so_far()
        loss = graph.replay(inputs, num_items)
        self._add(so_far, graph.gradients())
        return loss

    def _may_capture(self) -> bool:
        why = self.blocked()
        if why is not None:
            self.failed = why
            log.warning("the training step stays eager, not a CUDA graph: %s", why)
        return why is None

    def _sums_so_far(self) -> list[torch.Tensor | None]:
        """The gradients accumulated so far, out of the graphs' memory (a replay overwrites it)."""
        return [None if p.grad is None else p.grad.clone() if p.grad.untyped_storage().data_ptr() in self.in_pool
                else p.grad for p in self.params]

    def _add(self, so_far: list[torch.Tensor | None], grads: list[torch.Tensor | None]) -> None:
        for p, acc, g in zip(self.params, so_far, grads):
            if g is None:
                p.grad = acc
            elif acc is None:
                p.grad = g
            else:
                p.grad = acc.add_(g)

    def _capture(self, key: tuple, inputs: dict, num_items: Any) -> torch.Tensor:
        so_far = self._sums_so_far()
        for p in self.params:
            p.grad = None  # the graph allocates its own
        static = {name: value.clone() if torch.is_tensor(value) else value for name, value in inputs.items()}
        static_items = num_items.clone() if torch.is_tensor(num_items) else num_items
        torch.cuda.synchronize()
        torch.cuda.empty_cache()  # the eager steps' cached blocks: the graph allocates from its own pool
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=self.pool):
                loss = self.step(static, static_items)
        except Exception as err:  # training goes on eagerly: slower, same result
            self.failed = f"{type(err).__name__}: {err}".splitlines()[0][:300]
            log.warning("CUDA graph capture failed, the training step stays eager: %s", self.failed)
            for p, acc in zip(self.params, so_far):
                p.grad = acc
            return self.step(inputs, num_items)
        if self.pool is None:
            self.pool = graph.pool()
        captured = _Graph(graph, static, static_items, loss, [p.grad for p in self.params])
        for p in self.params:
            p.grad = None  # the last owners of the gradients' blocks: from now on the pool counts them free
        self.in_pool.update(where[0] for where in captured.grads if where is not None)
        log.info("training step captured as CUDA graph %d (%s)", len(self.graphs) + 1,
                 ", ".join(f"{n} {tuple(v.shape)}" for n, v in static.items() if torch.is_tensor(v)))
        self.graphs[key] = captured
        loss = captured.replay(inputs, num_items)  # a capture records the kernels, it runs none
        self._add(so_far, captured.gradients())
        return loss


class GraphedTrainer(bnb_step.UnsyncedTrainer):
    """The transformers Trainer, its micro-step (``training_step``) replayed as CUDA graphs; a bitsandbytes 8-bit
    optimizer steps without a GPU sync after each parameter (``bnb_step``), which would leave the GPU waiting."""

    graphed: GraphedStep | None = None

    def training_step(self, model: torch.nn.Module, inputs: dict, num_items_in_batch: Any = None) -> torch.Tensor:
        if self.graphed is None:
            def step(batch: dict, num_items: Any) -> torch.Tensor:
                return Trainer.training_step(self, model, batch, num_items)
            self.graphed = GraphedStep(step, [p for p in model.parameters() if p.requires_grad],
                                       blocked=lambda: fast.compile_failure(model))
        return self.graphed(self._prepare_inputs(inputs), num_items_in_batch)
