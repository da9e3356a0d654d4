"""How a model is served: one config for the app and `assistant chat`.

`assistant chat` fills it from its flags; `app.py` from the environment, because hosting platforms
(Hugging Face Spaces, OpenXLab) configure an app with variables, not flags. `ServeConfig.from_env`
is the one place that reads serving variables; README "Environment variables" lists them.
What to answer with (temperature, top-p, ...) is not here: that is `GenerationSettings`, with the
defaults the model folder's ``generation_config.json`` gives.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass

from myassistant.chat.errors import EngineError

# Fields with a fixed set of values (the first is the default).
CHOICES = {"quantize": ("auto", "int8", "int8_two_pass", "int4", "none"), "int8_kernel": ("auto", "blocks", "dynamic", "weight_only"),
           "dtype": ("auto", "bf16", "bfloat16", "fp16", "float16", "fp32", "float32")}


def _requirement(field: str, value: object) -> str | None:
    """What `value` of `field` fails to be (None when it is fine)."""
    if field in CHOICES and value not in CHOICES[field]:
        return f"must be one of {', '.join(CHOICES[field])}"
    if field in ("decode_rows", "concurrency") and not (isinstance(value, int) and value >= 1):
        return "must be a whole number >= 1"
    return None


@dataclass
class ServeConfig:
    # the engine
    device: str = "auto"  # auto (a GPU if there is one) | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (GPU bf16, else fp16; CPU fp32) | bf16 | fp16 | fp32
    # int8 / int4 weights: auto = int8 on the CPU, none on a GPU | int8 | int8_two_pass | int4 | none. CPU: every
    # Linear on chat.quant's kernels; GPU: the decoder layers' weights weight-only int8 / int4 (chat.weight_only)
    quantize: str = "auto"
    int8_kernel: str = "auto"  # auto (blocks, else dynamic, else weight_only) | blocks | dynamic | weight_only
    fast_decode: bool = True  # static-cache decoder where the model allows; False = the model's own forward
    compile: bool | None = None  # torch.compile the decode step; None = on a GPU only
    decode_rows: int = 8  # chats decoded together on a GPU (rows of the batched cache)
    # the app's page
    title: str = ""  # page title; "" = the assistant's name the model folder gives
    system_prompt: str = ""  # "" = none: a prompt the fine-tune never saw can override what it learned
    identity_guard: bool = False  # the system prompt's sentences naming the assistant only on turns asking about
    # it (chat.guard; the report measures it)
    concurrency: int = 8  # chats generating at once (they share each decode step, chat.batch); more wait

    def __post_init__(self) -> None:
        problems = [f"{f.name}={getattr(self, f.name)!r}: {req}" for f in dataclasses.fields(self)
                    if (req := _requirement(f.name, getattr(self, f.name)))]
        if problems:
            raise EngineError("serving config: " + "; ".join(problems))

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> ServeConfig:
        """The config the variables of `ENV` set (unset ones keep the defaults); a bad value is an
        EngineError naming the variable."""
        values: dict = {}
        for name, (field, kind) in ENV.items():
            raw = env.get(name, "").strip()
            if not raw:
                continue
            if kind is bool:
                if raw not in ("0", "1"):
                    raise EngineError(f"{name}={raw!r}: must be 0 or 1")
                value: object = raw == "1"
            elif kind is int:
                value = int(raw) if raw.isdigit() else raw
            else:
                value = raw.lower() if field in CHOICES else env[name]
            if requirement := _requirement(field, value):
                raise EngineError(f"{name}={raw!r}: {requirement}")
            values[field] = value
        return cls(**values)


# Serving variables -> (ServeConfig field, type): what a hosting platform may need to set, no more.
ENV: dict[str, tuple[str, type]] = {
    "ASSISTANT_QUANTIZE": ("quantize", str),
    "ASSISTANT_INT8_KERNEL": ("int8_kernel", str),
    "ASSISTANT_FAST_DECODE": ("fast_decode", bool),
    "ASSISTANT_COMPILE": ("compile", bool),
    "ASSISTANT_DECODE_ROWS": ("decode_rows", int),
    "APP_TITLE": ("title", str),
    "APP_SYSTEM_PROMPT": ("system_prompt", str),
    "APP_IDENTITY_GUARD": ("identity_guard", bool),
    "APP_CONCURRENCY": ("concurrency", int),
}
