"""Serving: a streaming chat engine (decode loop, incremental detokenisation, history trimming)."""
from myassistant.chat.config import ServeConfig
from myassistant.chat.decode import GenerationSettings
from myassistant.chat.engine import ChatEngine, GenerationStats, ensure_demo_model
from myassistant.chat.errors import EngineError

__all__ = ["ChatEngine", "EngineError", "GenerationSettings", "GenerationStats", "ServeConfig", "ensure_demo_model"]
