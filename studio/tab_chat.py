"""Tab 5, chat: the fine-tuned model (a run's adapter, or a merged folder) side by side with its base.

Both are ``chat.ChatEngine``s (``adapter=`` for a run), loaded once and kept until another pair is
loaded; a reply streams into both columns at once, token by token in turn.
"""
from __future__ import annotations

import threading
from pathlib import Path

import gradio as gr

from myassistant.chat import ChatEngine, EngineError, GenerationSettings
from myassistant.chat.history import message_text
from myassistant.chat.stream import Pacer
from myassistant.chat.vision import user_message
from myassistant.model import ADAPTER_CONFIG, PROJECTOR_WEIGHTS
from myassistant.studio import runs
from myassistant.studio.ui import Workspace, error_slot, note, one_line, show
from myassistant.trainer.run_folder import base_model, chat_parts

_engines: dict[str, ChatEngine] = {}  # "fine-tuned" / "base" -> the loaded pair (one pair at a time)
_loaded: dict[str, str] = {}
_lock = threading.Lock()


def resolve(ws: Workspace, target: str) -> tuple[Path, Path | None, str | None]:
    """(model folder, adapter folder or None, base folder for the side-by-side) of a run or merged folder."""
    folder = ws.path(target)
    if not folder.is_dir():
        raise EngineError(f"{target}: no such folder")
    try:
        model, adapter = chat_parts(folder)  # a run: its base with its adapter, or its newest checkpoint's
    except ValueError as err:
        raise EngineError(str(err)) from None
    if adapter is None and not (folder / "config.json").exists() and not (folder / PROJECTOR_WEIGHTS).is_file():
        raise EngineError(f"{target}: no run_config.yaml or adapter_config.json names its base model"
                          if (folder / ADAPTER_CONFIG).is_file() else
                          f"{target}: no adapter, no model weights and no checkpoint yet; wait for the training "
                          "to save one, or pick another run")
    return model, adapter, base_model(folder)  # (a LLaVA run: the engine says to merge it first)


def _emptied(already: bool) -> tuple:
    """The message box's and the picture's values in a reply's update: emptied by its first, kept after that."""
    return (gr.update(), gr.update()) if already else ("", None)


def _text(history: list[dict], pictures: bool) -> list[dict]:
    """A column's history as the engine takes it: Gradio's messages (a picture: a file part), or their text alone
    for a model that reads no pictures."""
    return [{"role": m["role"], "content": m["content"] if pictures else message_text(m["content"])} for m in history]


def build(ws: Workspace) -> dict:
    with gr.Row():
        with gr.Column(scale=3):
            target = gr.Dropdown([], label="Fine-tuned model: a run (its adapter on the base) or a merged folder",
                                 allow_custom_value=True, elem_id="chat-target")
            target_err = error_slot()
        load = gr.Button("Load", variant="primary", scale=1, elem_id="chat-load")
    status = gr.Markdown("", elem_id="chat-status")
    with gr.Row():
        tuned = gr.Chatbot(label="fine-tuned", height=340, elem_id="chat-tuned")
        base = gr.Chatbot(label="base", height=340, elem_id="chat-base")
    with gr.Row():
        message = gr.Textbox(placeholder="Ask both models…", show_label=False, scale=5, elem_id="chat-message")
        send = gr.Button("Send", variant="primary", scale=1, elem_id="chat-send")
        clear = gr.Button("Clear", scale=1)
    # shown for a multimodal (Llava) model: the picture goes with the next message (its base LLM reads the text)
    picture = gr.Image(type="filepath", sources=["upload"], label="Picture for your next message", height=160,
                       visible=False, elem_id="chat-picture")
    message_err = error_slot()
    with gr.Accordion("Settings", open=False):
        with gr.Row():
            temperature = gr.Slider(0, 2, value=0, step=0.05, label="Temperature (0 = greedy)")
            max_new = gr.Slider(1, 1024, value=64, step=1, label="Max new tokens")
            system = gr.Textbox(label="System prompt (optional)")

    def on_load(target_: str | None):
        if not target_:
            return show("pick a run or a merged model"), "", gr.update(), gr.update()
        try:
            model_dir, adapter, base_dir = resolve(ws, target_)
            if runs.status(ws.path(target_)) in ("running", "starting") and adapter is not None:
                note_ = f" (still training: its newest checkpoint, `{adapter.name}`)"
            else:
                note_ = ""
            with _lock:
                _engines.clear()
                _loaded.clear()
                _engines["fine-tuned"] = ChatEngine.from_pretrained(model_dir, adapter, quantize="none")
                if base_dir:
                    _engines["base"] = ChatEngine.from_pretrained(base_dir, quantize="none")
                _loaded.update({"fine-tuned": target_, "base": str(base_dir or "")})
        except Exception as err:  # noqa: BLE001 - the loader's one-line error next to the field
            return show(one_line(err)), "", gr.update(), gr.update()
        where = f"base `{ws.rel(base_dir)}`" if base_dir else "no base found to compare with"
        sees = _engines["fine-tuned"].vision is not None
        if sees:
            where += " (it reads the text only). The model reads pictures: add one below with your message" \
                if base_dir else ". It reads pictures: add one below with your message"
        return (show(None), note(f"Loaded **{target_}**{note_} and {where}."), show(None),  # no "load a model first"
                gr.update(visible=sees, value=None))

    def on_send(text: str, picture_: str | None, tuned_hist: list, base_hist: list, temp: float, max_new_: float,
                system_: str):
        if not (text or "").strip() and not picture_:
            yield show("type a message"), gr.update(), gr.update(), tuned_hist, base_hist
            return
        if "fine-tuned" not in _engines:
            yield show("load a model first (Load, above)"), gr.update(), gr.update(), tuned_hist, base_hist
            return
        settings = GenerationSettings(temperature=float(temp), max_new_tokens=int(max_new_),
                                      system_prompt=(system_ or "").strip() or None)
        hists = {"fine-tuned": list(tuned_hist or []), "base": list(base_hist or [])}
        streams = {}
        for key, engine in list(_engines.items()):
            reads_pictures = engine.vision is not None
            sees = reads_pictures and bool(picture_)
            earlier = _text(hists[key], pictures=reads_pictures)
            streams[key] = engine.stream([*earlier, user_message(text, [picture_] if sees else [])], settings)
            # the column shows the picture (Gradio's file message), and hands it back with the history next time
            shown = [{"path": picture_}, text] if sees else text
            hists[key] = [*earlier, {"role": "user", "content": shown}, {"role": "assistant", "content": ""}]
        pacer = Pacer()  # the page gets the growing replies at most every 50 ms
        sent = False  # the message box and the picture are emptied once: what is typed meanwhile is the next message
        try:
            while streams:
                for key in list(streams):
                    delta = next(streams[key], None)
                    if delta is None:
                        del streams[key]
                    else:
                        hists[key][-1]["content"] += delta
                if pacer.due():
                    yield show(None), *_emptied(sent), hists["fine-tuned"], hists["base"]
                    sent = True
        except EngineError as err:  # a picture that cannot be read
            yield show(one_line(err)), gr.update(), gr.update(), tuned_hist, base_hist
            return
        for key in hists:
            if hists[key] and not hists[key][-1]["content"]:
                hists[key][-1]["content"] = "(no text: the model ended its reply at once)"
        yield show(None), *_emptied(sent), hists["fine-tuned"], hists["base"]

    load.click(on_load, target, [target_err, status, message_err, picture])
    send_args = (on_send, [message, picture, tuned, base, temperature, max_new, system],
                 [message_err, message, picture, tuned, base])
    send.click(*send_args)
    message.submit(*send_args)
    clear.click(lambda: ([], []), None, [tuned, base])
    return {"target": target}
