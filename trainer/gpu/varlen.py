"""Attention over packed rows for training (``trainer.gpu.fast``): samples joined into one row without padding,
their boundaries as flash-attention varlen's ``cu_seqlens``, so no token attends across samples and no L x L mask
is built. Registered with transformers as ``ATTENTION``; batches with an ``attention_mask`` (padding, generation)
and unpacked rows go to sdpa as before."""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

ATTENTION = "assistant_varlen"  # the name ``register`` gives transformers' AttentionInterface


def varlen_kwargs(position_ids: torch.Tensor) -> dict:
    """cu_seqlens of the samples in packed rows (a sample starts where its position is 0), once per forward."""
    flat = position_ids.reshape(-1)
    starts = torch.nonzero(flat == 0).flatten()
    if starts.numel() == 0 or starts[0] != 0:
        starts = torch.cat([starts.new_zeros(1), starts])
    cu = torch.cat([starts, starts.new_tensor([flat.numel()])]).to(torch.int32)
    longest = int((cu[1:] - cu[:-1]).max())  # a host sync on a GPU tensor: `collate` does this on the CPU
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}


class _FlashVarlen(torch.autograd.Function):
    """torch's built-in flash-attention 2 on [tokens, heads, dim] with cu_seqlens; GQA native."""

    @staticmethod
    def forward(ctx, q, k, v, cu, longest, scale):
        out, lse, rng, unused, _ = torch.ops.aten._flash_attention_forward(
            q, k, v, cu, cu, longest, longest, 0.0, True, False, scale=scale)
        ctx.save_for_backward(q, k, v, out, lse, cu, rng, unused)
        ctx.longest, ctx.scale = longest, scale
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, out, lse, cu, rng, unused = ctx.saved_tensors
        dq, dk, dv = torch.ops.aten._flash_attention_backward(
            grad.contiguous(), q, k, v, out, lse, cu, cu, ctx.longest, ctx.longest, 0.0, True, rng, unused,
            scale=ctx.scale)
        return dq, dk, dv, None, None, None


def _segments_sdpa(q, k, v, cu, scale):
    """Reference / CPU path: causal sdpa on each sample separately."""
    bounds = cu.tolist()
    outs = [F.scaled_dot_product_attention(q[:, a:b], k[:, a:b], v[:, a:b], is_causal=True, scale=scale,
                                           enable_gqa=q.shape[0] != k.shape[0])
            for a, b in zip(bounds[:-1], bounds[1:]) if b > a]  # collate(static=True) adds empty samples
    return torch.cat(outs, dim=1)


def varlen_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                     cu_seq_lens_q=None, max_length_q=None, **kwargs):
    """transformers attention function: varlen flash for packed rows, sdpa otherwise."""
    if cu_seq_lens_q is None or attention_mask is not None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    b, h, n, d = query.shape  # [batch, heads, tokens, dim] -> [batch * tokens, heads, dim]
    q, k, v = (t.transpose(1, 2).reshape(b * n, t.shape[1], d) for t in (query, key, value))
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        out = _FlashVarlen.apply(q.contiguous(), k.contiguous(), v.contiguous(), cu_seq_lens_q, max_length_q, scaling)
    else:
        out = _segments_sdpa(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), cu_seq_lens_q,
                             scaling).transpose(0, 1)
    return out.reshape(b, n, h, d), None


def _varlen_mask(*args, attention_mask=None, **kwargs):
    """No mask when there is no padding (varlen or causal sdpa need none); sdpa's mask otherwise."""
    if attention_mask is None:
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


@functools.cache
def register() -> None:
    """Make ``ATTENTION`` a name transformers' attention and mask interfaces know (once)."""
    AttentionInterface.register(ATTENTION, varlen_attention)
    AttentionMaskInterface.register(ATTENTION, _varlen_mask)
