"""The causal-LM loss of ``hidden @ lm_head.T`` without the tokens x 92,544 logits in memory at once.

Three ways, the first that applies:

- CUDA, Triton, a frozen lm_head (LoRA / QLoRA): ``_GradInForward``. Chunks of ``GPU_CHUNK`` tokens:
  the logits by cuBLAS in bf16 (what the plain path computes under autocast), one Triton pass turning
  them in place into ``softmax - onehot`` with each row's loss, and cuBLAS again for the hidden
  states' gradient; so backward only scales a stored gradient. Two GEMMs a token instead of the
  three of a recompute-in-backward kernel, and cuBLAS's speed for them.
- CUDA, bf16: ``cut_cross_entropy`` (also trains the lm_head; ``kernel="cce"``, i.e. ``train.lm_loss: cce``,
  picks it first).
- Otherwise: torch's cross-entropy in checkpointed chunks of ``CE_CHUNK`` tokens.

All have ``transformers.loss.loss_utils.ForCausalLMLoss``'s semantics (labels shift left by one, -100
ignored, the sum divided by ``num_items_in_batch`` or by the number of trained tokens).
"""
from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from myassistant.trainer import data as data_lib

log = logging.getLogger(__name__)

CE_CHUNK = 8192  # tokens per chunk of the CPU loss: 8192 x 92544 fp32 logits = 3 GiB at most at once
GPU_CHUNK = 1024  # tokens per chunk of the GPU loss: 1024 x 92544 bf16 logits = 181 MiB


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         num_items_in_batch: torch.Tensor | int | None = None, *, kernel: str = "auto") -> torch.Tensor:
    """transformers' causal-LM loss of ``hidden @ weight.T`` against ``labels`` without whole logits.

    ``kernel``: "auto" (the first of the module doc's ways that applies) or "cce" (cut_cross_entropy first).
    """
    targets = F.pad(labels, (0, 1), value=data_lib.IGNORE_INDEX)[..., 1:].reshape(-1).to(hidden.device)
    hidden = hidden.reshape(-1, hidden.shape[-1])
    if hidden.dtype != weight.dtype:
        hidden = hidden.to(weight.dtype)
    half = hidden.is_cuda and hidden.dtype in (torch.bfloat16, torch.float16)
    if half and not weight.requires_grad and kernel != "cce" and _softmax_grad() is not None:
        total = _GradInForward.apply(hidden, weight, targets)
    elif half and _cce() is not None:  # its backward takes bf16/fp16 only
        total = _cce()(hidden, weight, targets)
    else:  # each chunk's logits live only inside its checkpoint: recomputed in backward
        total = sum(checkpoint(_ce_sum, hidden[i:i + CE_CHUNK], weight, targets[i:i + CE_CHUNK], use_reentrant=False)
                    for i in range(0, hidden.shape[0], CE_CHUNK))
    count = num_items_in_batch if num_items_in_batch is not None else (targets != data_lib.IGNORE_INDEX).sum()
    if isinstance(count, torch.Tensor):
        count = count.to(total.device)
    return total / count


def _ce_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits = F.linear(hidden, weight).float()
    return F.cross_entropy(logits, targets, ignore_index=data_lib.IGNORE_INDEX, reduction="sum")


# ----------------------------------------------------------------------------- GPU: gradient in forward

class _GradInForward(torch.autograd.Function):
    """Sum of the tokens' cross-entropy; the hidden states' gradient is computed with the loss."""

    @staticmethod
    def forward(ctx, hidden, weight, targets):
        grad = torch.empty_like(hidden)
        rows = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        for i in range(0, hidden.shape[0], GPU_CHUNK):
            logits = hidden[i:i + GPU_CHUNK] @ weight.t()
            _softmax_grad()(logits, targets[i:i + GPU_CHUNK], rows[i:i + GPU_CHUNK])
            torch.mm(logits, weight, out=grad[i:i + GPU_CHUNK])
        ctx.save_for_backward(grad)
        return rows.sum()

    @staticmethod
    def backward(ctx, d_total):
        (grad,) = ctx.saved_tensors
        return grad * d_total.to(grad.dtype), None, None


@functools.cache
def _softmax_grad():
    """``fn(logits, targets, loss_rows)``: logits (bf16/fp16 [rows, vocab]) become ``softmax - onehot``
    in place (zero for ignored targets) and ``loss_rows`` each row's loss; None without Triton / CUDA."""
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None

    @triton.jit
    def kernel(logits_ptr, targets_ptr, loss_ptr, vocab, stride, IGNORE: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        ptr = logits_ptr + row.to(tl.int64) * stride
        target = tl.load(targets_ptr + row)
        ignored = target == IGNORE
        # running max and sum of exp per lane; -1e30, not -inf, so lanes past the vocabulary never make
        # inf - inf: their sums are junk that the final rescaling by exp(-1e30 - max) zeroes
        m = tl.full((BLOCK,), -1e30, tl.float32)
        s = tl.zeros((BLOCK,), tl.float32)
        for start in range(0, vocab, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            x = tl.load(ptr + cols, mask=cols < vocab, other=-1e30).to(tl.float32)
            new = tl.maximum(m, x)
            s = s * tl.exp(m - new) + tl.exp(x - new)
            m = new
        top = tl.max(m, 0)
        lse = top + tl.log(tl.sum(s * tl.exp(m - top), 0))
        picked = tl.load(ptr + tl.where(ignored, 0, target)).to(tl.float32)
        tl.store(loss_ptr + row, tl.where(ignored, 0.0, lse - picked))
        for start in range(0, vocab, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            x = tl.load(ptr + cols, mask=cols < vocab, other=0.0).to(tl.float32)
            g = tl.exp(x - lse) - tl.where(cols == target, 1.0, 0.0)
            tl.store(ptr + cols, tl.where(ignored, 0.0, g).to(logits_ptr.dtype.element_ty), mask=cols < vocab)

    def softmax_grad(logits: torch.Tensor, targets: torch.Tensor, loss_rows: torch.Tensor) -> None:
        kernel[(logits.shape[0],)](logits, targets, loss_rows, logits.shape[1], logits.stride(0),
                                   IGNORE=data_lib.IGNORE_INDEX, BLOCK=4096, num_warps=16)
    return softmax_grad


# ----------------------------------------------------------------------------- GPU: cut_cross_entropy

@functools.cache
def _cce():
    """cut_cross_entropy's fused linear + cross-entropy where it imports (it needs triton), else None.

    Called below its ``linear_cross_entropy``: that one drops the ignored tokens with ``nonzero``,
    whose data-dependent size stops the host until the GPU gets there and cannot be in a CUDA
    graph. Here every token's loss is computed and the ignored ones weigh 0 (same sum, same
    gradients; the ignored tokens' share of the loss kernels is the price).
    """
    try:
        from cut_cross_entropy.cce import CCEParams, linear_cross_entropy_apply
        from cut_cross_entropy.utils import _handle_eps
    except Exception as err:  # ImportError, or triton failing to find a GPU backend
        log.info("cut_cross_entropy unavailable (%s); using the chunked loss", err)
        return None

    def cce_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        keep = targets != data_lib.IGNORE_INDEX
        params = CCEParams(torch.where(keep, targets, 0), None, None, "none", _handle_eps("auto", hidden.dtype),
                           False, targets.shape)
        return (linear_cross_entropy_apply(hidden.contiguous(), weight, params) * keep).sum()
    return cce_sum
