"""The hosted chat app (Hugging Face Spaces / OpenXLab apps / your own machine): `python app.py`.

Environment (README "Environment variables" lists them all):
  MODEL_REPO         the model: a git URL (cloned with git-lfs), a Hugging Face repo id, or a local
                     folder; unset = the project's tiny demo model (built on first start). A multimodal
                     (Llava) model gets a message box that takes pictures too.
  MODEL_CACHE        where cloned models live (default ./.cache/models next to this file)
  DEMO_MODEL_DIR     where the demo model is built (default ./.cache/demo-model)
  APP_TITLE, APP_SYSTEM_PROMPT, APP_IDENTITY_GUARD, APP_CONCURRENCY and the ASSISTANT_* serving switches:
                     chat.ServeConfig
  GRADIO_SERVER_NAME / GRADIO_SERVER_PORT   where to listen (default 0.0.0.0:7860 on a hosting
                     platform, 127.0.0.1:7860 elsewhere)

Importing this file loads no model (tests, tools and `gradio app.py` reloads stay fast): `python app.py`
fetches the model folder (a clone or download; whether it reads pictures decides the message box), then
loads the weights beside the starting server; the first page view or request waits for them. The page
then shows the assistant's name (APP_TITLE, else what the model folder records), and its sliders start
from the model's generation_config.json.
"""
from __future__ import annotations

import html
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

if (_port := os.environ.get("GRADIO_SERVER_PORT", "").strip()) and not (_port.isdigit() and 0 < int(_port) < 65536):
    # checked before gradio's import, which reads it and stops with a traceback
    sys.exit(f"app.py: error: GRADIO_SERVER_PORT={_port!r} is not a port number (1-65535)")

import gradio as gr  # noqa: E402

from myassistant.chat import (ChatEngine, EngineError, GenerationSettings, GenerationStats,  # noqa: E402
                              ServeConfig, ensure_demo_model)
from myassistant.chat.engine import read_generation_config  # noqa: E402
from myassistant.chat.stream import Pacer  # noqa: E402
from myassistant.chat.vision import is_llava, user_message  # noqa: E402
# redact: URL credentials and token values out of what the page shows
from myassistant.hub import assistant_name, fetch_model, model_info, redact  # noqa: E402

log = logging.getLogger("app")
if __name__ == "__main__":  # before the model loads, so its messages show
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request Gradio makes to its own server
ROOT = Path(__file__).resolve().parent
MODEL_REPO = os.environ.get("MODEL_REPO", "").strip()
MODEL_CACHE = Path(os.environ.get("MODEL_CACHE") or ROOT / ".cache" / "models")
DEMO_MODEL_DIR = Path(os.environ.get("DEMO_MODEL_DIR") or ROOT / ".cache" / "demo-model")
HOSTED = os.environ.get("SYSTEM") == "spaces" or any(
    key in os.environ for key in ("SPACE_ID", "OPENXLAB_APP_ID", "OPENXLAB_SPACE_ID", "OPENXLAB_USER"))
try:
    CONFIG, CONFIG_ERROR = ServeConfig.from_env(), None
except EngineError as err:  # shown on the page like any other load failure
    CONFIG, CONFIG_ERROR = ServeConfig(), str(err)
TAB_TITLE_JS = "() => { const h = document.getElementById('app-title'); if (h) document.title = h.textContent; }"
MAX_NEW_TOKENS = 4096  # the slider's end where the model's context is not known before it loads
EXAMPLES = ["Who are you?", "What can you help me with?", "请用中文介绍一下你自己。"]


def source_name() -> str:
    """What the page calls the model before it is loaded: the repo's or folder's last name."""
    if not MODEL_REPO:
        return "Demo model"
    return redact(MODEL_REPO).rstrip("/").removesuffix(".git").rsplit("/", 1)[-1] or MODEL_REPO


RETRY_AFTER_S = 30  # a failed clone or load is tried again by the next visitor after this long


class Served:
    """The model folder and its engine, each made once (the first caller makes it, the others wait).

    A failure is kept for RETRY_AFTER_S, then tried again: a repo pushed after the app started, or a network that
    was down at start-up, serves without a restart."""

    def __init__(self) -> None:
        self.engine: ChatEngine | None = None
        self.folder: Path | None = None
        self.error: str | None = None
        self.failed_at = 0.0
        self.lock = threading.RLock()

    def _retry_due(self) -> None:
        if self.error is not None and not CONFIG_ERROR and time.monotonic() - self.failed_at >= RETRY_AFTER_S:
            log.info("trying to load the model again (it failed %.0f s ago)", time.monotonic() - self.failed_at)
            self.error = None

    def fetch(self) -> Path | None:
        """The model folder (cloned, downloaded or built); None (and `error` set) when that fails."""
        with self.lock:
            self._retry_due()
            if self.folder is None and self.error is None:
                self._attempt(lambda: setattr(self, "folder", fetch_model(MODEL_REPO, MODEL_CACHE) if MODEL_REPO
                                              else ensure_demo_model(DEMO_MODEL_DIR)))
        return self.folder

    def get(self) -> ChatEngine | None:
        """The engine; None (and `error` set) when the model cannot be loaded."""
        with self.lock:  # fetch() tries a failure again once it is due
            if self.engine is None and self.fetch() is not None:
                self._attempt(self._load)
        return self.engine

    def _load(self) -> None:
        engine = ChatEngine.from_pretrained(self.folder, config=CONFIG)
        engine.warm_up()  # on a GPU: compile and capture the decode steps before the first user waits
        self.engine = engine

    def _attempt(self, step) -> None:
        try:
            if CONFIG_ERROR:
                raise EngineError(CONFIG_ERROR)
            step()
        except Exception as err:  # noqa: BLE001 - any failure becomes a message on the page
            # a path the file system refused (DEMO_MODEL_DIR read-only, a disk full) names itself: no traceback
            said = getattr(type(err), "user_error", False) or (isinstance(err, OSError) and err.filename)
            log.error("cannot load the model: %s", err, exc_info=not said)
            self.error, self.failed_at = redact(f"{type(err).__name__}: {err}"), time.monotonic()


served = Served()


def title() -> str:
    """APP_TITLE, else the assistant's name the served folder records, else the model's own name."""
    if CONFIG.title:
        return CONFIG.title
    return (served.folder and assistant_name(served.folder)) or source_name()


def load_error_text() -> str:
    return f"⚠️ **The model could not be loaded**, so this app cannot answer.\n\n> {served.error}"


def header() -> str:
    """The page's heading and the line under it (Markdown): who this is, what it runs on, or why it cannot answer."""
    heading = f"<h1 id='app-title'>{html.escape(title())}</h1>\n\n"
    if served.error is not None:
        source = f"`{redact(MODEL_REPO)}`" if MODEL_REPO else "unset: the demo model"
        return heading + (f"{load_error_text()}\n\nCheck `MODEL_REPO` (now {source}) and the app's logs; the next "
                          f"message or page view after {RETRY_AFTER_S} s tries again.")
    engine = served.engine
    if engine is None:
        return heading + "Loading the model…"
    base = model_info(served.folder).get("base_model")
    made = f"Fine-tuned from `{Path(base).name if Path(base).is_absolute() else base}`" if base else "A chat model"
    where = f"`{redact(MODEL_REPO)}`" if MODEL_REPO else "the built-in demo model"
    text = f"{made}, served from {where} · {engine.model.device.type}, context {engine.max_context:,} tokens."
    if not MODEL_REPO:
        text += (" The demo model is tiny and untrained, so its replies are gibberish: set `MODEL_REPO` to a git URL,"
                 " a Hugging Face repo id or a local folder to serve your own assistant.")
    return heading + text


def folder_at_hand() -> Path | None:
    """The model folder when it is known without loading weights: a local MODEL_REPO, or what `python app.py`
    fetched before building the page."""
    return served.folder or (Path(MODEL_REPO) if MODEL_REPO and Path(MODEL_REPO).is_dir() else None)


def accepts_images() -> bool:
    """Whether the page takes pictures: the model reads them (a multimodal model)."""
    folder = folder_at_hand()
    return folder is not None and is_llava(folder)


def context_window() -> int:
    """The model's context as its config.json says (a LLaVA's in its text_config), else MAX_NEW_TOKENS: the end of
    the max-tokens slider as the server checks it. Page loads move the page's slider to the loaded model's context,
    but an API caller's value is checked against the slider the page was built with."""
    folder = folder_at_hand()
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8")) if folder else {}
        context = config.get("text_config", config).get("max_position_embeddings")
    except (OSError, ValueError, AttributeError):
        return MAX_NEW_TOKENS  # the engine's load says what is wrong with the folder
    return context if isinstance(context, int) and context > 0 else MAX_NEW_TOKENS


def respond(
    message: str | dict,
    history: list[dict],
    system_prompt: str | None = None,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    repetition_penalty: float | None = None,
    max_new_tokens: int | None = None,
) -> Iterator[str]:
    """Stream the growing reply to `message` after `history` (Gradio messages format); `message` is a
    {"text", "files"} dict when the page takes pictures.

    Settings left at None take the model's defaults (`engine.defaults`); an empty message gets no reply.
    """
    if not_empty(message)["is_valid"] is False:
        return
    engine = served.get()
    if engine is None:
        yield load_error_text()
        return
    given = {"temperature": (float, temperature), "top_p": (float, top_p), "top_k": (int, top_k),
             "repetition_penalty": (float, repetition_penalty), "max_new_tokens": (int, max_new_tokens)}
    try:
        settings = replace(engine.defaults, system_prompt=system_prompt or None, identity_guard=CONFIG.identity_guard,
                           **{k: kind(v) for k, (kind, v) in given.items() if v is not None})
    except (TypeError, ValueError) as err:
        yield f"⚠️ {err}"
        return
    if isinstance(message, dict):  # the multimodal textbox: pictures (file paths) and text
        files = [f.get("path") if isinstance(f, dict) else f for f in message.get("files") or []]
        message = user_message(message.get("text") or "", files)
    else:
        message = user_message(message)
    reply, shown, stats, pacer = "", "", GenerationStats(), Pacer()
    try:
        for delta in engine.stream([*history, message], settings, stats=stats):
            if not reply:
                say_what_was_left_out(stats, len(history))
            reply += delta
            if pacer.due():  # the page gets the growing reply at most every 50 ms
                shown = reply
                yield reply
    except EngineError as err:  # a picture that cannot be read
        yield f"{reply}\n\n⚠️ {err}".lstrip()
        return
    if reply != shown:
        yield reply
    if not reply:
        say_what_was_left_out(stats, len(history))
        yield "(the model ended its reply without any text)"


def say_what_was_left_out(stats: GenerationStats, history_messages: int) -> None:
    """A notice on the page when the conversation did not fit the model's context."""
    if stats.message_cut:
        gr.Warning(f"Your message is longer than the model's context: only its last {stats.prompt_tokens:,} "
                   "tokens were read, the start was cut off.", duration=20)
    elif stats.dropped_messages:
        gr.Info(f"The {stats.dropped_messages} oldest of {history_messages} messages no longer fit the model's "
                "context and were left out.")


def not_empty(message: str | dict | None) -> dict:
    """The send check: an empty or blank message (and no picture) is not sent."""
    if isinstance(message, dict):
        filled = bool((message.get("text") or "").strip() or message.get("files"))
    else:
        filled = bool((message or "").strip())
    return gr.validate(filled, "Type a message first.")


def page_load() -> tuple:
    """On each page view (after the model has loaded): the heading, the chat's placeholder, and the sliders at
    the model's defaults (max new tokens up to its context)."""
    engine = served.get()
    d = engine.defaults if engine is not None else GenerationSettings()
    longest = engine.max_context if engine is not None else MAX_NEW_TOKENS
    return (header(), gr.Chatbot(placeholder=placeholder()), d.temperature, d.top_p, d.top_k, d.repetition_penalty,
            gr.Slider(value=min(d.max_new_tokens, longest), maximum=longest))


def placeholder() -> str:
    """What the empty chat shows."""
    return f"<center><h2>{html.escape(title())}</h2>Ask a question, or pick one of the examples.</center>"


def folder_defaults() -> GenerationSettings:
    """The sampling settings of the model's generation_config.json when the folder is at hand (else the engine's
    defaults): the sliders' values when the page is built, which an API caller (gradio_client) gets for the
    settings it leaves out; a page view moves them to the loaded model's anyway."""
    folder = folder_at_hand()
    return GenerationSettings.from_generation_config(read_generation_config(folder)) if folder else GenerationSettings()


def build_page(images: bool) -> gr.Blocks:
    """The page; `images`: a message box that takes pictures (a multimodal model)."""
    d = folder_defaults()
    with gr.Blocks(title=title(), fill_height=True, analytics_enabled=False) as page:
        heading = gr.Markdown(header(), elem_id="app-header")  # "Loading the model…" until page_load
        sliders = [
            gr.Slider(0.0, 2.0, value=d.temperature, step=0.05, label="Temperature (0 = greedy)", render=False),
            gr.Slider(0.05, 1.0, value=d.top_p, step=0.05, label="Top-p", render=False),
            gr.Slider(0, 200, value=d.top_k, step=1, label="Top-k (0 = off)", render=False),
            gr.Slider(1.0, 2.0, value=d.repetition_penalty, step=0.05, label="Repetition penalty", render=False),
            gr.Slider(1, context_window(), value=d.max_new_tokens, step=1, label="Max new tokens", render=False),
        ]
        chatbot = gr.Chatbot(show_label=False, scale=1, min_height=420, elem_id="chat", placeholder=placeholder(),
                             render=False)
        gr.ChatInterface(
            respond,
            chatbot=chatbot,
            multimodal=images,
            textbox=gr.MultimodalTextbox(file_types=["image"], file_count="multiple", sources=["upload"],
                                         placeholder="Type a message, or add a picture…", label="Message",
                                         show_label=False, submit_btn=True, stop_btn=True, autofocus=True, scale=7)
            if images else gr.Textbox(placeholder="Type a message…", label="Message", show_label=False,
                                      submit_btn=True, stop_btn=True, autofocus=True, scale=7),
            additional_inputs=[gr.Textbox(CONFIG.system_prompt, label="System prompt", lines=2, render=False),
                               *sliders],
            additional_inputs_accordion=gr.Accordion("Settings", open=False, elem_id="settings", render=False),
            examples=[[{"text": text, "files": []} if images else text] for text in EXAMPLES],
            cache_examples=False,  # caching would run the model at start-up on Spaces
            concurrency_limit=CONFIG.concurrency,
            fill_height=True,
            api_name="chat",
            validator=not_empty,
        )
        # every page view waits for the model (concurrently), then shows its name, also in the browser's tab
        page.load(page_load, outputs=[heading, chatbot, *sliders], concurrency_limit=None,
                  api_visibility="private").then(None, js=TAB_TITLE_JS)
    return page


if __name__ == "__main__":
    served.fetch()  # the folder says whether the model reads pictures; the weights load beside the server
IMAGES = accepts_images()
demo = build_page(IMAGES)


if __name__ == "__main__":
    port = int(os.environ.get("GRADIO_SERVER_PORT") or 7860)
    threading.Thread(target=served.get, name="load-model", daemon=True).start()
    try:
        demo.queue().launch(server_name=os.environ.get("GRADIO_SERVER_NAME") or ("0.0.0.0" if HOSTED else "127.0.0.1"),
                            server_port=port)
    except OSError as err:
        if "empty port" not in str(err):  # gradio's words when the port is taken
            raise
        sys.stderr.write(f"app.py: error: port {port} is in use (another app?): set GRADIO_SERVER_PORT to a free one\n")
        os._exit(1)  # at once: the model may still be loading in its thread, and ending there aborts the process
