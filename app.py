"""The hosted chat app (Hugging Face Spaces / OpenXLab apps / your own machine): `python app.py`.

Environment:
  MODEL_REPO         the model: a git URL (cloned with git-lfs), a Hugging Face repo id, or a local
                     folder; unset = the project's tiny demo model (built on first start). A multimodal
                     (Llava) model gets a message box that takes pictures too.
  MODEL_CACHE        where cloned models live (default ./.cache/models next to this file)
  DEMO_MODEL_DIR     where the demo model is built (default ./.cache/demo-model)
  APP_LAZY_LOAD=1    load the model on the first request instead of at import
  APP_CONCURRENCY    chats generating at once (default 8: they share each decode step, chat.batch;
                     more wait in Gradio's queue)
  APP_SYSTEM_PROMPT  the system prompt box's default (default empty: no system message)
  APP_IDENTITY_GUARD=1  a system prompt's sentences naming the assistant ("You are Alice.") reach the
                     model only on turns that ask about it, so general answers stay free of the name
  APP_TEMPERATURE    the temperature slider's default (default 0.8; 0 = greedy)
  GRADIO_SERVER_NAME / GRADIO_SERVER_PORT   where to listen (default 0.0.0.0:7860 on a hosting
                     platform, 127.0.0.1:7860 elsewhere)
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import gradio as gr

from myassistant.chat import ChatEngine, EngineError, GenerationSettings, ensure_demo_model
from myassistant.chat.vision import is_llava, user_message
from myassistant.hub import fetch_model, redact  # redact: URL credentials and token values out of what the page shows

log = logging.getLogger("app")
if __name__ == "__main__":  # before the model loads, so its messages show
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
ROOT = Path(__file__).resolve().parent
MODEL_REPO = os.environ.get("MODEL_REPO", "").strip()
MODEL_CACHE = Path(os.environ.get("MODEL_CACHE") or ROOT / ".cache" / "models")
DEMO_MODEL_DIR = Path(os.environ.get("DEMO_MODEL_DIR") or ROOT / ".cache" / "demo-model")
LAZY_LOAD = os.environ.get("APP_LAZY_LOAD", "0") == "1"
CONCURRENCY = int(os.environ.get("APP_CONCURRENCY", "8"))
HOSTED = os.environ.get("SYSTEM") == "spaces" or any(
    key in os.environ for key in ("SPACE_ID", "OPENXLAB_APP_ID", "OPENXLAB_SPACE_ID", "OPENXLAB_USER"))
# Empty by default: a prompt the fine-tune never saw can override what it learned (a tiny model then
# answers everything with its identity); set APP_SYSTEM_PROMPT to the one used in training, if any.
DEFAULT_SYSTEM_PROMPT = os.environ.get("APP_SYSTEM_PROMPT", "")
DEFAULT_TEMPERATURE = float(os.environ.get("APP_TEMPERATURE", "0.8"))
IDENTITY_GUARD = os.environ.get("APP_IDENTITY_GUARD", "0") == "1"  # chat.guard; the report measures it


def model_title() -> str:
    if not MODEL_REPO:
        return "demo model"
    return redact(MODEL_REPO).rstrip("/").removesuffix(".git").rsplit("/", 1)[-1] or MODEL_REPO


def load_engine() -> ChatEngine:
    """Fetch (clone / download / reuse) the model named by MODEL_REPO, or build the demo model."""
    if MODEL_REPO:
        folder = fetch_model(MODEL_REPO, MODEL_CACHE)
    else:
        folder = ensure_demo_model(DEMO_MODEL_DIR)
    engine = ChatEngine.from_pretrained(folder)
    engine.warm_up()  # on a GPU: compile and capture the decode steps before the first user waits on them
    return engine


_engine: ChatEngine | None = None
_load_error: str | None = None
_load_lock = threading.Lock()


def get_engine() -> ChatEngine | None:
    """The engine, loaded once; None (and `_load_error` set) when the model cannot be loaded."""
    global _engine, _load_error
    with _load_lock:
        if _engine is None and _load_error is None:
            try:
                _engine = load_engine()
            except Exception as err:  # noqa: BLE001 - any failure becomes a message on the page
                log.error("cannot load the model: %s", err, exc_info=not getattr(type(err), "user_error", False))
                _load_error = redact(f"{type(err).__name__}: {err}")
    return _engine


def load_error_text() -> str:
    return f"⚠️ The model could not be loaded, so this app cannot answer.\n\n{_load_error}"


def respond(
    message: str | dict,
    history: list[dict],
    system_prompt: str = DEFAULT_SYSTEM_PROMPT,
    temperature: float = DEFAULT_TEMPERATURE,
    top_p: float = 0.8,
    top_k: int = 0,
    repetition_penalty: float = 1.0,
    max_new_tokens: int = 512,
) -> Iterator[str]:
    """Stream the growing reply to `message` after `history` (Gradio messages format); `message` is a
    {"text", "files"} dict when the page takes pictures."""
    engine = get_engine()
    if engine is None:
        yield load_error_text()
        return
    try:
        settings = GenerationSettings(system_prompt=system_prompt or None, temperature=float(temperature),
                                      top_p=float(top_p), top_k=int(top_k),
                                      repetition_penalty=float(repetition_penalty), max_new_tokens=int(max_new_tokens),
                                      identity_guard=IDENTITY_GUARD)
    except ValueError as err:
        yield f"⚠️ {err}"
        return
    if isinstance(message, dict):  # the multimodal textbox: pictures (file paths) and text
        files = [f.get("path") if isinstance(f, dict) else f for f in message.get("files") or []]
        message = user_message(message.get("text") or "", files)
    else:
        message = user_message(message)
    reply = ""
    try:
        for delta in engine.stream([*history, message], settings):
            reply += delta
            yield reply
    except EngineError as err:  # a picture that cannot be read
        yield f"{reply}\n\n⚠️ {err}".lstrip()
        return
    if not reply:
        yield "(the model ended its reply without any text)"


def description() -> str:
    if not LAZY_LOAD:
        get_engine()
    if _load_error is not None:
        source = redact(MODEL_REPO) or "unset"
        return f"**{load_error_text()}**\n\nCheck `MODEL_REPO` (now `{source}`) and the logs."
    where = f"`{redact(MODEL_REPO)}`" if MODEL_REPO else "the project's built-in demo model"
    text = f"Chat with **{model_title()}**, served from {where}."
    if not MODEL_REPO:
        text += (" It is tiny and has random weights, so its replies are gibberish: set `MODEL_REPO` to a git URL,"
                 " a Hugging Face repo id or a local folder to serve your own assistant.")
    if _engine is not None:
        text += f" Running on `{_engine.model.device}`, context {_engine.max_context} tokens."
    return text


def accepts_images() -> bool:
    """Whether the served model reads pictures (a multimodal model): then the message box takes them.
    Loaded lazily, only a local MODEL_REPO folder can be checked before the page is built."""
    if LAZY_LOAD:
        return bool(MODEL_REPO) and Path(MODEL_REPO).is_dir() and is_llava(MODEL_REPO)
    engine = get_engine()
    return engine is not None and engine.vision is not None


IMAGES = accepts_images()
demo = gr.ChatInterface(
    respond,
    multimodal=IMAGES,
    textbox=gr.MultimodalTextbox(file_types=["image"], file_count="multiple", sources=["upload"],
                                 placeholder="Type a message, or add a picture…") if IMAGES else None,
    title=f"{model_title()} chat",
    description=description(),
    additional_inputs=[
        gr.Textbox(DEFAULT_SYSTEM_PROMPT, label="System prompt", lines=2),
        gr.Slider(0.0, 2.0, value=DEFAULT_TEMPERATURE, step=0.05, label="Temperature (0 = greedy)"),
        gr.Slider(0.05, 1.0, value=0.8, step=0.05, label="Top-p"),
        gr.Slider(0, 200, value=0, step=1, label="Top-k (0 = off)"),
        gr.Slider(1.0, 2.0, value=1.0, step=0.05, label="Repetition penalty"),
        gr.Slider(1, 2048, value=512, step=1, label="Max new tokens"),
    ],
    additional_inputs_accordion="Settings",
    examples=[[{"text": text, "files": []} if IMAGES else text]
              for text in ("Who are you?", "What can you help me with?", "请用中文介绍一下你自己。")],
    cache_examples=False,  # caching would run the model at start-up on Spaces
    concurrency_limit=CONCURRENCY,
    api_name="chat",
)


if __name__ == "__main__":
    demo.queue().launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME") or ("0.0.0.0" if HOSTED else "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT") or 7860),
    )
