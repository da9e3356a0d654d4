"""Serving: a streaming chat engine (decode loop, incremental detokenisation, history trimming)."""
from myassistant.chat.decode import GenerationSettings
from myassistant.chat.engine import ChatEngine, EngineError, GenerationStats, ensure_demo_model

__all__ = ["ChatEngine", "EngineError", "GenerationSettings", "GenerationStats", "ensure_demo_model"]
