"""A multimodal run folder → the Llava it trained, for ``trainer.merge`` and the picture report.

The run's config names its parts (``model.base``, ``vision.encoder``); the Llava is rebuilt from them
exactly as training built it (``model.build_llava`` is deterministic), the run's projector loaded, and a
finetune's adapter (LoRA + the projector's ``modules_to_save`` copy) merged with peft's safe merge.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import myassistant.model as model_layer
from myassistant.model import ADAPTER_CONFIG, ADAPTER_WEIGHTS, PROJECTOR_WEIGHTS, CheckpointError


def read_multimodal_source(source: Path, cfg, facts: dict) -> dict:
    """What ``trainer.merge.read_source`` returns, for a multimodal run folder (``cfg``: its RunConfig)."""
    projector = source / PROJECTOR_WEIGHTS
    if not projector.is_file():
        raise CheckpointError(f"{source}: multimodal run without {PROJECTOR_WEIGHTS}: it has not finished; "
                              "finish it with `assistant train --config <its config> --resume`")
    adapter = None
    digest = hashlib.sha256(projector.read_bytes())
    if cfg.vision.stage == "finetune":
        if not (source / ADAPTER_CONFIG).exists() or not (source / ADAPTER_WEIGHTS).exists():
            raise CheckpointError(f"{source}: finetune run without {ADAPTER_CONFIG} + {ADAPTER_WEIGHTS}: it has not "
                                  "finished; finish it with `assistant train --config <its config> --resume`")
        adapter = str(source)
        digest.update((source / ADAPTER_WEIGHTS).read_bytes())
    return {"load": cfg.model.base, "vision_encoder": cfg.vision.encoder, "adapter": adapter, "projector": str(projector),
            "weights_sha256": digest.hexdigest(), **facts}


def trained_llava(src: dict, dtype):
    """(Llava with the run's weights merged in, processor) from ``read_multimodal_source``'s answer."""
    model, processor = model_layer.build_llava(src["vision_encoder"], src["load"], projector=src["projector"], dtype=dtype)
    if src["adapter"] is not None:
        model = model_layer.load_adapter(model, src["adapter"]).merge_and_unload(safe_merge=True)
    model.eval()
    return model, processor
