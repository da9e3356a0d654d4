"""The Llava to train in each stage, and what a multimodal run folder keeps of it.

Stage ``pretrain`` (LLaVA's stage 1): the vision encoder and the LLM are frozen, only the projector
trains; the LLM is 4-bit for ``quant.method: qlora`` (a frozen 4-bit LLM still passes gradients to
the projector), else in ``model.dtype``. Stage ``finetune``: the projector trains on, the LLM gets LoRA
(QLoRA on a 4-bit LLM), and with ``vision.lora_encoder`` the encoder's linear layers get LoRA too. The
projector trains in fp32 (the optimizer's master copy) whatever the frozen weights are in.

A run folder holds ``projector.safetensors`` (both stages) and, after a finetune, the peft adapter, in
which the projector is a ``modules_to_save`` copy: checkpoints and ``--resume`` keep it with the LoRA
weights, and ``merge_and_unload`` puts it back in place.
"""
from __future__ import annotations

import logging
from pathlib import Path

import peft
import torch

import myassistant.model as model_layer
from myassistant.trainer import run_folder
from myassistant.trainer.config import ALL_LINEAR, ConfigError, RunConfig, lora_target_modules
from myassistant.trainer.lora import bnb_config, weights_dtype

log = logging.getLogger(__name__)

PROJECTOR = "multi_modal_projector"
ENCODER_LINEAR = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]  # CLIP / SigLIP attention and MLP


def lora_targets(cfg: RunConfig) -> str:
    """peft ``target_modules`` as one regex: the LLM's chosen layers (and the encoder's linear layers)."""
    llm = lora_target_modules(cfg.lora.target_modules)
    llm = ALL_LINEAR if llm == "all-linear" else llm
    pattern = rf".*language_model\..*\.({'|'.join(llm)})"
    if cfg.vision.lora_encoder:  # the encoder's layers, not SigLIP's pooling head (LLaVA never reads it)
        pattern += rf"|.*vision_tower\..*\.layers\.\d+\..*\.({'|'.join(ENCODER_LINEAR)})"
    return pattern


def check_projector_source(cfg: RunConfig) -> None:
    """A stage-1 run folder given as ``vision.projector`` was trained with this run's encoder and LLM: its projector
    maps that encoder's features into that LLM's embeddings (another CLIP of the same width would load, silently)."""
    folder = Path(cfg.vision.projector) if cfg.vision.projector else None
    if folder is not None and not folder.exists():
        raise ConfigError(f"vision.projector {folder}: no such file or folder; give the stage-1 run folder (or its "
                          "projector.safetensors)")
    stage1 = run_folder.run_config(folder) if folder is not None and folder.is_dir() else None
    if stage1 is None:
        return  # a projector file, or a folder without a run's config: the shapes are all there is to check
    for field, theirs, ours in (("vision.encoder", stage1.vision.encoder, cfg.vision.encoder),
                                ("model.base", stage1.model.base, cfg.model.base)):
        if theirs and ours and _same_place(theirs) != _same_place(ours):
            if not Path(ours).expanduser().exists() and (_local(ours) or Path(theirs).expanduser().exists()):
                # a typo (stage 1 read a folder here; this one is not there): not a model to train stage 1 with
                raise ConfigError(f"{field} {ours}: no such model folder (stage 1, {folder}, used {theirs})")
            raise ConfigError(f"vision.projector {folder}: trained with {field}={theirs}, this run has {ours}; "
                              f"use the same {field} as stage 1, or run stage 1 again with {ours}")


def _local(name: str) -> bool:
    """A path on this machine rather than a hub id (owner/name)."""
    return name.startswith(("/", ".", "~")) or name.count("/") != 1


def _same_place(name: str) -> str:
    """A model folder's resolved path, or a hub id as it is."""
    return str(Path(name).expanduser().resolve()) if Path(name).expanduser().exists() else name


def build_training_model(cfg: RunConfig):
    """(model, processor) for ``cfg.vision.stage``; only the parameters that stage trains need grads."""
    check_projector_source(cfg)
    method = cfg.quant.method
    extra = {"quantization_config": bnb_config(cfg.quant)} if method == "qlora" else {}
    device = {"": torch.cuda.current_device()} if torch.cuda.is_available() else None
    model, processor = model_layer.build_llava(cfg.vision.encoder, cfg.model.base, projector=cfg.vision.projector or None,
                                               dtype=weights_dtype(cfg), device=device, seed=cfg.train.seed, **extra)
    model.name_or_path = cfg.model.base
    stage2_alone = cfg.vision.stage == "finetune" and not cfg.vision.projector
    log.info("projector: %s", f"from {cfg.vision.projector}" if cfg.vision.projector else
             "new (random)" + (": stage 2 without a stage-1 projector (vision.projector)" if stage2_alone else ""))
    # without a KV cache the LLM sees packed samples (positions restarting at 0) apart; the Trainer turns off
    # the Llava's use_cache, not its LLM's
    model.model.language_model.config.use_cache = False
    model.requires_grad_(False)
    if cfg.vision.stage == "finetune":
        lora = peft.LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.lora_alpha, lora_dropout=cfg.lora.lora_dropout,
                               target_modules=lora_targets(cfg), bias=cfg.lora.bias, modules_to_save=[PROJECTOR])
        model = peft.get_peft_model(model, lora)
    else:
        projector_of(model).requires_grad_(True)
    for param in model.parameters():
        if param.requires_grad:
            param.data = param.data.float()
    model.train()
    return model, processor


def llava_of(model: torch.nn.Module):
    """The LlavaForConditionalGeneration inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if isinstance(model, peft.PeftModel) else model


def projector_of(model: torch.nn.Module) -> torch.nn.Module:
    """The projector that trains (peft's ``modules_to_save`` copy in a finetune)."""
    projector = getattr(llava_of(model).model, PROJECTOR)
    if hasattr(projector, "modules_to_save"):
        projector = projector.modules_to_save[projector.active_adapter]
    return projector


def save_run_weights(model: torch.nn.Module, processor, folder: Path) -> None:
    """What a multimodal run folder keeps: the projector, the adapter (finetune), the processor."""
    model_layer.save_projector(projector_of(model), folder / model_layer.PROJECTOR_WEIGHTS)
    if isinstance(model, peft.PeftModel):
        model.save_pretrained(str(folder))
    processor.save_pretrained(str(folder))
