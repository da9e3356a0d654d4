"""The GPU fast path for LoRA / QLoRA training: same model, same loss, less memory and time.

What it changes on a model that ``trainer.lora.build_model`` returned (each measured in
``benchmarks/train_gpu.py``, numbers in ``benchmarks/README.md``):

- dtypes: ``peft.prepare_model_for_kbit_training`` upcasts every frozen non-4-bit weight
  (embeddings, norms, lm_head) to fp32, which makes the whole residual stream fp32 (twice the
  activation memory, fp32 attention without flash). They go back to the compute dtype; the LoRA
  weights stay fp32 (the optimizer's master copy).
- loss: the lm_head and the cross-entropy run in chunks of tokens (``trainer.lm_loss``), so the
  tokens x 92,544 logits are never in memory at once.
- attention: packed sequences (``position_ids`` restarting at 0 per sample) go to flash-attention
  varlen (torch's own kernel, ``aten._flash_attention_forward`` with ``cu_seqlens``; ``trainer.gpu.varlen``),
  so no token attends across samples and no L x L mask is built; batches with an ``attention_mask``
  (padding, generation) and unpacked rows go to sdpa as before.
- QLoRA layers: the adapter is folded into the weight as it is dequantised, one GEMM a layer
  (``trainer.qlora_fold``).
- data: ``collate`` joins a micro-batch into one row without padding (``trainer.data.collate``
  with ``flatten=True``), which the varlen attention reads.

Wiring in ``trainer/train.py`` (after ``model = build_model(cfg)``)::

    if fast.enabled(cfg):
        model = fast.apply(model, cfg)
    collate = fast.collate if fast.enabled(cfg) else functools.partial(data_lib.collate, ...)

``train.fast_path: false`` turns it off (the plain transformers + peft path); ``train.qlora_fold`` and
``train.lm_loss`` choose its kernels.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import types

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers.modeling_outputs import CausalLMOutputWithPast

from myassistant.trainer import data as data_lib
from myassistant.trainer.gpu import lm_loss, qlora_fold, qlora_fp8, varlen
from myassistant.trainer.gpu.varlen import varlen_kwargs

log = logging.getLogger(__name__)


def enabled(cfg) -> bool:
    """The fast path is the default for LoRA / QLoRA on a CUDA GPU; ``train.fast_path: false`` turns it off."""
    return cfg.train.fast_path and torch.cuda.is_available() and cfg.quant.method in ("qlora", "lora")


def collate(features, *, pad_token_id: int = 0, static: bool = False):
    """A micro-batch as one row without padding, positions restarting per sample (see module doc),
    with the samples' boundaries for the varlen attention: computed here, on the CPU, so the GPU
    step never waits for the host to read them back.

    ``static``: round every size up to a few fixed ones, as a CUDA graph of the step needs
    (``trainer.graphs``): the longest sample to a power of two, the tokens to the next of eight sizes
    an octave (``static_tokens_step``; the pad: samples trained on nothing) and the sample count to a
    power of two (empty samples).
    """
    batch = data_lib.collate(features, flatten=True)
    bounds = varlen_kwargs(batch["position_ids"])
    cu, longest = bounds["cu_seq_lens_q"], bounds["max_length_q"]
    if static:
        longest = _next_power_of_two(longest, 64)
        n = batch["input_ids"].shape[1]
        pad = -n % static_tokens_step(n)
        if pad:  # samples of at most `longest` tokens, so the attention's tiling stays that of the real ones
            batch = {"input_ids": F.pad(batch["input_ids"], (0, pad), value=pad_token_id),
                     "labels": F.pad(batch["labels"], (0, pad), value=data_lib.IGNORE_INDEX),
                     "position_ids": torch.cat([batch["position_ids"], torch.arange(pad)[None] % longest], dim=1)}
            cu = varlen_kwargs(batch["position_ids"])["cu_seq_lens_q"]
        cu = torch.cat([cu, cu[-1:].expand(_next_power_of_two(len(cu) - 1, 8) - len(cu) + 1)])
    batch["cu_seq_lens"], batch["max_length"] = cu, longest
    return batch


def static_tokens_step(n: int) -> int:
    """The multiple ``collate(static=True)`` pads ``n`` tokens to: an eighth of the power of two below
    (at least 64), so a packed batch wastes under 1/8 and sizes near each other share one graph."""
    return max(64, (1 << (n.bit_length() - 1)) // 8)


def _next_power_of_two(n: int, least: int) -> int:
    return max(least, 1 << (n - 1).bit_length())


def apply(model: torch.nn.Module, cfg=None, *, compile: bool | str = False,
          skip_last_product: bool = True) -> torch.nn.Module:
    """Switch a (peft-wrapped) causal LM to the fast path in place; returns it.

    ``compile``: torch.compile each decoder layer (a string: with that torch.compile mode).
    ``cfg.train.qlora_fold`` and ``cfg.train.lm_loss`` pick the kernels (both on / "auto" without a cfg).
    ``cfg.train.qlora_keep_folded`` (off without a cfg): with ``compile`` and activation checkpointing, each folded
    QLoRA layer keeps the W' its recompute builds for its backward (``qlora_fold._FoldedLinear``: two folds a step
    instead of three, one layer's bf16 weights more at the peak; +8 % at 7B bs1, +3 % at 1.8B bs3 on an H200,
    benchmarks/README.md).
    ``skip_last_product`` (with ``compile``): a checkpointed layer's recompute skips the MLP's output product where
    the layer is one of ``LAST_PRODUCT``'s and that product a folded QLoRA layer (``qlora_fold.recomputing``);
    False recomputes it (benchmarks' ``full`` variant).
    ``cfg.train.qlora_fp8``: those QLoRA layers' frozen products in fp8 (``qlora_fp8``; a ConfigError on a GPU
    without fp8 tensor cores).
    """
    keep_folded = cfg is not None and cfg.train.qlora_keep_folded
    lm = _causal_lm(model)
    if any(type(p).__name__ == "Params4bit" for p in lm.parameters()):
        dtype = getattr(torch, cfg.quant.bnb_4bit_compute_dtype) if cfg is not None else torch.bfloat16
        cast = _cast_frozen(lm, dtype)
        log.info("fast path: %d frozen tensors back to %s (prepare_model_for_kbit_training made them fp32)", cast, dtype)
        fp8 = cfg is not None and cfg.train.qlora_fp8
        if fp8:
            qlora_fp8.check_supported()
        if cfg is None or cfg.train.qlora_fold:
            folded = qlora_fold.apply(model, fp8=fp8)
            log.info("fast path: %d QLoRA layers %s%s", folded, "run their frozen products in fp8 (train.qlora_fp8)"
                     if fp8 else "fold their adapter into the dequantised weight",
                     "; under activation checkpointing the recompute's fold serves backward (train.qlora_keep_folded)"
                     if keep_folded and compile and folded else "")
    varlen.register()
    _decoder(lm).set_attn_implementation(varlen.ATTENTION)  # a Llava's vision tower keeps its own (sdpa)
    lm.config.use_cache = False
    lm.forward = types.MethodType(functools.partial(_forward, loss=cfg.train.lm_loss if cfg is not None else "auto"), lm)
    if _decoder(lm) is not lm.model:  # a Llava
        lm.vision_trains = any(p.requires_grad for p in lm.model.vision_tower.parameters())
    if compile:
        _compile_layers(lm, compile if isinstance(compile, str) else None, keep_folded, skip_last_product)
    log.info("fast path: chunked linear cross-entropy (trainer.lm_loss), varlen flash attention for packed rows%s",
             ", compiled decoder layers" if compile else "")
    return model


# Decoder layers whose MLP output product feeds only the residual sum that is the layer's output (no norm after
# it, as Gemma's layers have): backward needs its input and weights, never its output, so a checkpoint's recompute
# can skip the product (a 7B layer's largest GEMM but one).
LAST_PRODUCT = {"LlamaDecoderLayer": "mlp.down_proj", "MistralDecoderLayer": "mlp.down_proj",
                "Qwen2DecoderLayer": "mlp.down_proj", "Qwen3DecoderLayer": "mlp.down_proj"}


def _compile_layers(lm: torch.nn.Module, mode: str | None, keep_folded: bool = False,
                    skip_last_product: bool = True) -> None:
    """torch.compile each decoder layer's forward for training, the activation checkpoint around it.

    transformers takes the checkpoint inside ``forward``; compiled whole, that region keeps every
    activation (measured: 105 saved tensors a layer instead of its input), so the compiled call is
    the undecorated forward and the checkpoint is taken here, eagerly. Eval-mode calls
    (generation during training, with a growing cache) stay eager: nothing to recompile per token.
    """
    torch._dynamo.config.suppress_errors = True  # a layer that fails to compile runs eagerly, with a warning
    dynamo_log = logging.getLogger("torch._dynamo.convert_frame")  # where torch says why (_layer_call tells it too)
    if COMPILE_ERRORS not in dynamo_log.handlers:
        dynamo_log.addHandler(COMPILE_ERRORS)
    for layer in _decoder(lm).layers:
        last = LAST_PRODUCT.get(type(layer).__name__) if skip_last_product else None
        product = layer.get_submodule(last) if last is not None else None
        if hasattr(product, "_peft_forward"):  # folded by qlora_fold
            product.skip_in_recompute = True
            # run eagerly between two compiled graphs: the graph before it is then the same in the forward and the
            # recompute, which must save the same tensors (the checkpoint checks; one graph for both cases saved
            # different ones); the product alone is a fold and a GEMM, nothing for Inductor to fuse
            product.forward = torch.compiler.disable(product.forward)
        forward = types.MethodType(getattr(type(layer).forward, "__wrapped__", type(layer).forward), layer)
        compiled = torch.compile(forward, mode=mode)
        layer.forward = functools.partial(_layer_call, layer, forward, compiled, uses_rng(layer), keep_folded)


def _layer_call(layer: torch.nn.Module, eager, compiled, rng: bool, keep_folded: bool, *args, **kwargs):
    if not (layer.training and torch.is_grad_enabled()):
        return eager(*args, **kwargs)
    checkpointed = bool(getattr(layer, "gradient_checkpointing", False))
    if keep_folded and layer.__dict__.get("keeps_folded") is not checkpointed:  # once, again if checkpointing changes
        qlora_fold.keep_for_backward(layer, checkpointed)  # without a checkpoint every layer's W' would stay alive
        layer.keeps_folded = checkpointed
    failed = len(COMPILE_ERRORS.errors)
    if checkpointed:
        kwargs.pop("use_cache", None)
        # the RNG state matters to the recompute only with dropout; reading it is not allowed in a CUDA graph
        out = checkpoint(compiled, *args, use_reentrant=False, preserve_rng_state=rng, context_fn=_recompute_context,
                         **kwargs)
    else:
        out = compiled(*args, **kwargs)
    if len(COMPILE_ERRORS.errors) > failed:
        layer.compile_failed = COMPILE_ERRORS.errors[-1]  # ``compile_failure``
        if not COMPILE_ERRORS.told:
            COMPILE_ERRORS.told = True
            log.warning("torch.compile failed on a decoder layer, which runs eagerly: training is slower and its step "
                        "is not captured as a CUDA graph (%s)", layer.compile_failed)
    return out


def _recompute_context():
    return contextlib.nullcontext(), qlora_fold.recomputing()


class _CompileErrors(logging.Handler):
    """The errors torch._dynamo suppressed (``suppress_errors``: the frame runs eagerly, and torch only logs why;
    a layer's kernel that failed to build once made every layer eager, unseen): one line each."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.errors: list[str] = []
        self.told = False

    def emit(self, record: logging.LogRecord) -> None:
        err = record.exc_info[1] if record.exc_info else None
        while err is not None and (getattr(err, "inner_exception", None) or err.__cause__) is not None:
            err = getattr(err, "inner_exception", None) or err.__cause__  # torch wraps the backend's error
        first = (str(err).strip().splitlines() or [""])[0] if err is not None else ""
        self.errors.append(f"{type(err).__name__}: {first}"[:200] if err is not None
                           else record.getMessage().splitlines()[0][:200])


COMPILE_ERRORS = _CompileErrors()  # listens from the first _compile_layers on


def compile_failure(model: torch.nn.Module) -> str | None:
    """Why a decoder layer of ``model`` runs eagerly (torch.compile gave up on it in a training call), or None while
    every compiled layer compiled."""
    return next((f"a decoder layer runs eagerly ({m.compile_failed})" for m in model.modules()
                 if getattr(m, "compile_failed", None)), None)


def uses_rng(module: torch.nn.Module) -> bool:
    """Whether a training forward of ``module`` draws random numbers (a dropout with p > 0)."""
    return any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in module.modules())


def _causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers *ForCausalLM inside a peft wrapper (or the model itself)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not hasattr(inner, "lm_head") or not hasattr(inner, "model"):
        raise TypeError(f"fast.apply needs a transformers causal LM with .model and .lm_head, got {type(inner).__name__}")
    return inner


def _decoder(lm: torch.nn.Module) -> torch.nn.Module:
    """The decoder stack: a causal LM's ``model``, or the LLM inside a Llava (``model.language_model``)."""
    return getattr(lm.model, "language_model", lm.model)


def _cast_frozen(lm: torch.nn.Module, dtype: torch.dtype) -> int:
    n = 0
    for param in lm.parameters():
        if not param.requires_grad and param.dtype == torch.float32 and type(param).__name__ != "Params4bit":
            param.data = param.data.to(dtype)
            n += 1
    return n


# ----------------------------------------------------------------------------- model

def _forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None, labels=None,
             num_items_in_batch=None, pixel_values=None, *, loss: str = "auto", **kwargs):
    """The causal LM's (or Llava's) forward with the fused loss; without labels (generation) the class's own, the
    cache passed on under the name it came by (`past_key_values`, or `cache` since transformers 5.2x)."""
    if labels is None:
        if pixel_values is not None:
            kwargs["pixel_values"] = pixel_values
        return type(self).forward(self, input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                  inputs_embeds=inputs_embeds, **kwargs)
    kwargs.pop("use_cache", None)
    cached = [kwargs.pop(name, None) for name in ("past_key_values", "cache")] != [None, None]
    cu, longest = kwargs.pop("cu_seq_lens", None), kwargs.pop("max_length", None)
    if attention_mask is None and position_ids is not None and not cached:
        if cu is None:
            kwargs.update(varlen_kwargs(position_ids))
        else:
            cu = cu.to(position_ids.device, non_blocking=True)
            kwargs.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=int(longest), max_length_k=int(longest))
    decoder = _decoder(self)
    if decoder is not self.model:  # a Llava: the pictures' features go into the image tokens' places
        inputs_embeds = _with_pictures(self, input_ids, pixel_values)
        input_ids = None
    out = decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                  inputs_embeds=inputs_embeds, use_cache=False, **kwargs)
    return CausalLMOutputWithPast(loss=lm_loss.linear_cross_entropy(
        out.last_hidden_state, self.lm_head.weight, labels, num_items_in_batch, kernel=loss))


def _with_pictures(llava, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> torch.Tensor:
    """Token embeddings with each image token's replaced by the next picture feature, in order.

    Llava's own ``masked_scatter`` and its count check read values back to the host, which a CUDA graph
    cannot; a running count of image tokens indexes the features instead (same result, no sync).
    """
    embeds = llava.model.get_input_embeddings()(input_ids)
    if pixel_values is None:
        return embeds
    vision, config = llava.model.vision_tower, llava.config
    training = vision.training
    vision.train(False)  # no activation checkpoint (its RNG bookkeeping cannot be captured) and no dropout
    try:  # a frozen encoder (no LoRA on it) keeps no activations for backward; the projector always trains
        with torch.set_grad_enabled(torch.is_grad_enabled() and getattr(llava, "vision_trains", True)):
            hidden = vision(pixel_values, output_hidden_states=True, return_dict=True).hidden_states
    finally:
        vision.train(training)
    # what LlavaModel.get_image_features selects (the CLS token dropped for "default"), then the projector
    # outside the no-grad region above
    layers = config.vision_feature_layer
    drop = 1 if config.vision_feature_select_strategy == "default" else 0
    selected = torch.cat([hidden[i][:, drop:] for i in ([layers] if isinstance(layers, int) else layers)], dim=-1)
    features = llava.model.multi_modal_projector(selected).to(embeds.dtype).reshape(-1, embeds.shape[-1])
    is_image = input_ids == llava.config.image_token_id
    index = (torch.cumsum(is_image.reshape(-1), 0) - 1).clamp_(min=0).reshape(is_image.shape)
    return torch.where(is_image.unsqueeze(-1), features[index], embeds)
