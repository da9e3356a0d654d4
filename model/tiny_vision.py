"""Tiny multimodal parts, made locally for tests and demos: a random CLIP or SigLIP vision tower, a whole tiny Llava.

``build_tiny_vision_encoder`` writes what a CLIP (or SigLIP) download holds for its vision side
(config.json of a ``CLIPVisionModel`` / ``SiglipVisionModel``, safetensors, ``preprocessor_config.json``),
only small. SigLIP has no CLS token (every output is a patch) and its own image processor (a plain
resize to a square, mean and std 0.5), so LLaVA reads all its features ("full") where it drops CLIP's
first. ``build_tiny_llava`` puts a tower in front of a tiny InternLM2 (``build_tiny_checkpoint``) through
``build_llava`` and saves the merged folder: what serving code can be tested with (random weights:
answers are noise, but every path runs).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from transformers import (CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel, SiglipImageProcessorPil,
                          SiglipVisionConfig, SiglipVisionModel)

from .checkpoint import written_whole
from .llava import build_llava, save_llava
from .tiny import build_tiny_checkpoint


ENCODER_KINDS = ("clip", "siglip")


def build_tiny_vision_encoder(out_dir: str | Path, *, kind: str = "clip", seed: int = 0, image_size: int = 56,
                              patch_size: int = 14, hidden_size: int = 32, num_hidden_layers: int = 2,
                              num_attention_heads: int = 4, intermediate_size: int = 64) -> Path:
    """A random CLIP or SigLIP (`kind`) vision tower folder ((image_size / patch_size)^2 patches, 16 by
    default) + its image processor."""
    if kind not in ENCODER_KINDS:
        raise ValueError(f"vision encoder kind {kind!r}: expected one of {', '.join(ENCODER_KINDS)}")
    out_dir = Path(out_dir)
    with written_whole(out_dir) as tmp:
        sizes = dict(hidden_size=hidden_size, intermediate_size=intermediate_size, num_hidden_layers=num_hidden_layers,
                     num_attention_heads=num_attention_heads, image_size=image_size, patch_size=patch_size)
        if kind == "clip":
            cls, config = CLIPVisionModel, CLIPVisionConfig(**sizes, projection_dim=hidden_size)
            processor = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                              crop_size={"height": image_size, "width": image_size})
        else:
            cls, config = SiglipVisionModel, SiglipVisionConfig(**sizes)
            processor = SiglipImageProcessorPil(size={"height": image_size, "width": image_size})
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            cls(config).save_pretrained(str(tmp))
        processor.save_pretrained(str(tmp))
    return out_dir


def build_tiny_llava(out_dir: str | Path, *, seed: int = 0, dtype: str = "float32", **vision_kwargs) -> Path:
    """A complete tiny merged Llava folder (tiny CLIP, or SigLIP with ``kind="siglip"``, + tiny InternLM2 +
    projector), random weights.

    It loads with plain ``LlavaForConditionalGeneration`` / ``AutoProcessor``; 16 image tokens a picture.
    """
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="tiny-llava-") as work:
        encoder = build_tiny_vision_encoder(Path(work) / "vision", seed=seed, **vision_kwargs)
        llm = build_tiny_checkpoint(Path(work) / "llm", seed=seed, dtype=dtype)
        model, processor = build_llava(encoder, llm, dtype=dtype, seed=seed)
        return save_llava(model, processor, out_dir, dtype=dtype)
