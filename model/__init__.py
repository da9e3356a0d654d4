"""The model layer shared by training and serving: load/save any checkpoint, tokenizers, templates."""
from .checkpoint import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, CheckpointError, load_adapter, load_model, load_state_dict,
                         read_config, save_model)
from .generate import generate_replies
from .templates import INTERNLM2_CHAT, TEMPLATES
from .tiny import build_tiny_checkpoint
from .tokenizer import load_tokenizer, stop_token_ids

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "CheckpointError",
    "INTERNLM2_CHAT",
    "TEMPLATES",
    "build_tiny_checkpoint",
    "generate_replies",
    "load_adapter",
    "load_model",
    "load_state_dict",
    "load_tokenizer",
    "read_config",
    "save_model",
    "stop_token_ids",
]
