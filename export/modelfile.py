"""An Ollama ``Modelfile`` beside a GGUF: the chat template in Go template syntax, stop tokens, defaults.

Ollama (and LM Studio's import) read the GGUF's weights and tokenizer but take the prompt format and
stop words from here. The defaults are the ones the app and `assistant chat` use.
"""
from __future__ import annotations

import os
from pathlib import Path

from myassistant.model.templates import END_OF_TURN

# ChatML as InternLM2-chat writes it; Ollama adds BOS itself (tokenizer.ggml.add_bos_token).
CHATML = ("{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
          "{{ end }}<|im_start|>assistant\n")
DEFAULTS = {"temperature": 0.8, "top_p": 0.8, "repeat_penalty": 1.0, "num_ctx": 4096}


def modelfile_path(gguf_file: Path) -> Path:
    return gguf_file.with_suffix(".Modelfile")


def modelfile_text(gguf_file: Path, tokenizer, num_ctx: int | None = None) -> str:
    lines = [f"FROM ./{gguf_file.name}", ""]
    if END_OF_TURN in tokenizer.get_vocab():
        lines += [f'TEMPLATE """{CHATML}"""', "", f'PARAMETER stop "{END_OF_TURN}"', 'PARAMETER stop "<|im_start|>"']
    if tokenizer.eos_token:
        lines.append(f'PARAMETER stop "{tokenizer.eos_token}"')
    params = dict(DEFAULTS, num_ctx=num_ctx or DEFAULTS["num_ctx"])
    lines += [f"PARAMETER {key} {value}" for key, value in params.items()]
    return "\n".join(lines) + "\n"


def write_modelfile(gguf_file: Path, tokenizer, num_ctx: int | None = None) -> Path:
    """Write ``<name>.Modelfile`` next to `gguf_file` (`ollama create NAME -f <name>.Modelfile`)."""
    path = modelfile_path(gguf_file)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(modelfile_text(gguf_file, tokenizer, num_ctx), encoding="utf-8")
    tmp.replace(path)
    return path
