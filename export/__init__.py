"""Export a model folder for other runtimes: GGUF for llama.cpp, Ollama and LM Studio."""
from .gguf import QUANTS, ExportError, ExportResult, export_gguf
from .quantize import QuantizeError, llama_cpp_available

__all__ = ["QUANTS", "ExportError", "ExportResult", "QuantizeError", "export_gguf", "llama_cpp_available"]
