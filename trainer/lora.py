"""The model to train: base weights (4-bit for QLoRA) plus a peft LoRA adapter, or all weights.

QLoRA is LoRA on a 4-bit base (one flag, as in torchtune), so there is one code path with a
quantisation switch. The base always comes from ``model.load_model`` (InternLM2 becomes the Llama
layout there, which is why the LoRA target names are the Llama ones).
"""
from __future__ import annotations

import functools
import importlib.util
import logging

import peft
import torch
from transformers import PreTrainedModel

import myassistant.model as model_layer
from myassistant.trainer.config import ConfigError, QuantConfig, RunConfig, lora_rank_pattern, lora_target_modules

log = logging.getLogger(__name__)


def bf16_supported() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def weights_dtype(cfg: RunConfig) -> torch.dtype:
    """The dtype the base is loaded in. auto: bf16 on a bf16 GPU (fp32 master weights for full), else fp32."""
    if cfg.model.dtype != "auto":
        return getattr(torch, cfg.model.dtype)
    if bf16_supported() and cfg.quant.method != "full":
        return torch.bfloat16
    return torch.float32


def bnb_config(quant: QuantConfig):
    """BitsAndBytesConfig for QLoRA; a clear error where bitsandbytes or CUDA is missing."""
    if not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None:
        missing = "a CUDA GPU" if not torch.cuda.is_available() else "the bitsandbytes package (pip install bitsandbytes)"
        raise ConfigError(
            f"quant.method: qlora needs a CUDA GPU with bitsandbytes, and {missing} is missing; "
            "use quant.method=lora on CPU (same adapter, full-precision base)"
        )
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=quant.bnb_4bit_use_double_quant,
        bnb_4bit_compute_dtype=getattr(torch, quant.bnb_4bit_compute_dtype),
    )


def _linear_names(model: torch.nn.Module) -> list[str]:
    return sorted({name.rsplit(".", 1)[-1] for name, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)})


def _check_targets(base: torch.nn.Module, cfg: RunConfig) -> None:
    """Each entry of lora.target_modules names a layer of the base (peft only objects when none does: one typo in a
    list would train without that layer, silently)."""
    if cfg.lora.target_modules == ["all-linear"]:
        return
    names = [name for name, _ in base.named_modules()]
    missing = [entry for entry in cfg.lora.target_modules
               if not any(name == target or name.endswith("." + target) for target in lora_target_modules([entry])
                          for name in names)]
    if missing:
        raise ConfigError(f"lora.target_modules: no layer of {cfg.model.base} is named {' or '.join(missing)}; "
                          f"its linear layers are {', '.join(_linear_names(base))}")


def build_model(cfg: RunConfig) -> PreTrainedModel:
    """Load the base as ``cfg`` says and wrap it for training (peft model for qlora/lora)."""
    method = cfg.quant.method
    extra = {"quantization_config": bnb_config(cfg.quant)} if method == "qlora" else {}
    device = {"": torch.cuda.current_device()} if method == "qlora" else None
    base = model_layer.load_model(cfg.model.base, dtype=weights_dtype(cfg), device=device, **extra)
    base.name_or_path = cfg.model.base  # peft writes it into adapter_config.json as the base path
    if method == "full":
        base.requires_grad_(True)
        return base
    if method == "qlora":
        # fp32 norms and lm_head upcast; gradient checkpointing is switched on by the Trainer args
        base = peft.prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    _check_targets(base, cfg)
    rank_pattern, alpha_pattern = lora_rank_pattern(cfg.lora)
    lora = peft.LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.lora_alpha,
        lora_dropout=cfg.lora.lora_dropout,
        target_modules=lora_target_modules(cfg.lora.target_modules),
        bias=cfg.lora.bias,
        task_type="CAUSAL_LM",
        rank_pattern=rank_pattern,
        alpha_pattern=alpha_pattern,
    )
    try:
        model = peft.get_peft_model(base, lora)
    except ValueError as err:
        if "target" not in str(err).lower():
            raise
        raise ConfigError(
            f"lora.target_modules: {cfg.lora.target_modules} match no layer of {cfg.model.base}; "
            f"its linear layers are {', '.join(_linear_names(base))}"
        ) from err
    # The vocabulary is never resized, so an adapter never needs the base's embeddings. peft's default ("auto")
    # finds that out on every save by reading the base's config.json as the converted model's config class
    # (LlamaConfig on an InternLM2 folder: transformers warns "model of type internlm2 ... of type llama").
    model.save_pretrained = functools.partial(model.save_pretrained, save_embedding_layers=False)
    return model


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters; 4-bit weights count as their unpacked size."""
    if isinstance(model, peft.PeftModel):
        return model.get_nb_trainable_parameters()
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total
