"""The model layer shared by training and serving: load/save any checkpoint, tokenizers, templates, LLaVA."""
from .checkpoint import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, MERGE_INFO, CheckpointError, file_sha256, load_adapter,
                         load_model, load_state_dict, read_config, save_model, written_whole)
from .generate import generate_replies
from .llava import (IMAGE_TOKEN, PROJECTOR_WEIGHTS, add_image_token, build_llava, check_vision_encoder,
                    image_token_count, is_llava, load_llava, load_projector, picture_tokens, save_llava, save_projector)
from .templates import INTERNLM2_CHAT, TEMPLATES
from .tiny import build_tiny_checkpoint
from .tiny_vision import build_tiny_llava, build_tiny_vision_encoder
from .tokenizer import load_tokenizer, stop_token_ids

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "CheckpointError",
    "MERGE_INFO",
    "IMAGE_TOKEN",
    "PROJECTOR_WEIGHTS",
    "INTERNLM2_CHAT",
    "TEMPLATES",
    "add_image_token",
    "build_llava",
    "check_vision_encoder",
    "build_tiny_checkpoint",
    "build_tiny_llava",
    "build_tiny_vision_encoder",
    "file_sha256",
    "generate_replies",
    "image_token_count",
    "is_llava",
    "load_adapter",
    "load_llava",
    "load_model",
    "load_projector",
    "load_state_dict",
    "load_tokenizer",
    "picture_tokens",
    "read_config",
    "save_llava",
    "save_model",
    "save_projector",
    "stop_token_ids",
    "written_whole",
]
