"""An Ollama ``Modelfile`` beside a GGUF: the chat template in Go template syntax, stop tokens, defaults.

Ollama (and LM Studio's import) read the GGUF's weights and tokenizer but take the prompt format and
stop words from here. The sampling parameters are the model folder's generation_config.json (what `assistant merge`
writes, and what the app and `assistant chat` start from), else the app's defaults.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from myassistant.model.templates import END_OF_TURN

# ChatML as InternLM2-chat writes it; Ollama adds BOS itself (tokenizer.ggml.add_bos_token).
CHATML = ("{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
          "{{ end }}<|im_start|>assistant\n")
DEFAULTS = {"temperature": 0.8, "top_p": 0.8, "repeat_penalty": 1.0}
NUM_CTX = 4096
# Ollama's parameter for each of transformers' generation_config.json keys
GENERATION_KEYS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
                   "repetition_penalty": "repeat_penalty"}


def sampling_of(model_dir: Path) -> dict:
    """The Modelfile parameters a model folder's generation_config.json asks for ({} when it has none);
    ``do_sample: false`` is greedy, temperature 0 in Ollama."""
    try:
        gen = json.loads((model_dir / "generation_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(gen, dict):
        return {}
    params = {ours: gen[key] for key, ours in GENERATION_KEYS.items() if isinstance(gen.get(key), (int, float))}
    if gen.get("do_sample") is False:
        params["temperature"] = 0
    return params


def modelfile_path(gguf_file: Path) -> Path:
    return gguf_file.with_suffix(".Modelfile")


def modelfile_text(gguf_file: Path, tokenizer, num_ctx: int | None = None, sampling: dict | None = None) -> str:
    lines = [f"FROM ./{gguf_file.name}", ""]
    if END_OF_TURN in tokenizer.get_vocab():
        lines += [f'TEMPLATE """{CHATML}"""', "", f'PARAMETER stop "{END_OF_TURN}"', 'PARAMETER stop "<|im_start|>"']
    if tokenizer.eos_token:
        lines.append(f'PARAMETER stop "{tokenizer.eos_token}"')
    params = {**DEFAULTS, **(sampling or {}), "num_ctx": num_ctx or NUM_CTX}
    lines += [f"PARAMETER {key} {value}" for key, value in params.items()]
    return "\n".join(lines) + "\n"


def write_modelfile(gguf_file: Path, tokenizer, num_ctx: int | None = None, sampling: dict | None = None) -> Path:
    """Write ``<name>.Modelfile`` next to `gguf_file` (`ollama create NAME -f <name>.Modelfile`); `sampling`: the
    model's parameters (`sampling_of`) over the defaults."""
    path = modelfile_path(gguf_file)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(modelfile_text(gguf_file, tokenizer, num_ctx, sampling), encoding="utf-8")
    tmp.replace(path)
    return path
