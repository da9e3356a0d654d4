"""Tab 1, base model: a folder, a Hugging Face id or a git URL (cloned and verified by ``assistant clone``)."""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from myassistant.hub.remote import hf_repo_id, is_bare_repo, is_git_url
from myassistant.model import load_tokenizer, read_config
from myassistant.model.checkpoint import weight_files
from myassistant.studio import jobs
from myassistant.studio.ui import Workspace, error_slot, note, one_line, show

FAMILIES = {"internlm2": "InternLM2 (loaded as Llama, no remote code)", "llama": "Llama", "qwen2": "Qwen2",
            "mistral": "Mistral", "gemma": "Gemma", "phi3": "Phi-3"}


def source_problem(ws: Workspace, text: str) -> str | None:
    """Why ``text`` is nothing Load can clone (None for a bare repo, a git URL or a Hugging Face id)."""
    local = ws.path(text)
    if local.is_file():
        return f"{text}: a file; give the model's folder (the one with config.json)"
    if not (is_git_url(text) or is_bare_repo(local) or hf_repo_id(text)):
        return f"{text!r}: no such folder, and not a git URL or a Hugging Face id (owner/name)"
    return None


def _parameters(files: list[Path]) -> int | None:
    """Parameter count from the safetensors headers (no weights read); None for .bin files."""
    from safetensors import safe_open

    total = 0
    for f in files:
        if f.suffix != ".safetensors":
            return None
        with safe_open(str(f), framework="pt") as fh:
            for key in fh.keys():
                n = 1
                for dim in fh.get_slice(key).get_shape():
                    n *= dim
                total += n
    return total


def _human(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def describe_model(folder: Path) -> tuple[list[list[str]], str]:
    """(rows of what was found, the chat template) for a model folder; CheckpointError when it is not one."""
    cfg = read_config(folder)
    files = weight_files(folder)
    tokenizer = load_tokenizer(folder)
    size = sum(f.stat().st_size for f in files)
    rows = [
        ["family", FAMILIES.get(cfg["model_type"], cfg["model_type"])],
        ["parameters", _human(_parameters(files))],
        ["dtype", str(cfg.get("torch_dtype") or cfg.get("dtype") or "float32")],
        ["layers × hidden", f"{cfg.get('num_hidden_layers', '?')} × {cfg.get('hidden_size', '?')}"],
        ["context", str(cfg.get("max_position_embeddings", "?"))],
        ["vocabulary", f"{len(tokenizer):,}"],
        ["weights", f"{len(files)} file(s), {size / 2**20:,.1f} MiB"],
        ["folder", str(folder)],
    ]
    return rows, tokenizer.chat_template or ""


def _dir_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20 if folder.exists() else 0.0


def build(ws: Workspace) -> dict:
    gr.Markdown("Start from a chat model: a **folder** on this machine, a **Hugging Face id** (`owner/name`) or a "
                "**git URL** (OpenXLab, ModelScope, any git-lfs remote; cloned and every weight file verified).")
    with gr.Row():
        with gr.Column(scale=3):
            source = gr.Textbox(label="Base model", placeholder="models/internlm2-chat-1_8b · internlm/internlm2-chat-1_8b "
                                "· https://code.openxlab.org.cn/OpenLMLab/internlm2-chat-1.8b.git", elem_id="base-source")
            source_err = error_slot()
        load = gr.Button("Load", variant="primary", scale=1, elem_id="base-load")
    status = gr.Markdown("")
    progress = gr.Textbox(label="clone progress", lines=6, max_lines=6, visible=False, autoscroll=True)
    with gr.Row():
        info = gr.Dataframe(headers=["", "found"], label="What was found", interactive=False, visible=False,
                            elem_id="base-info", scale=2)
        template = gr.Code(label="Chat template", language="jinja2", visible=False, lines=12, scale=3)
    folder = gr.Textbox(visible=False, elem_id="base-folder")  # the resolved folder, read by the other tabs

    def shown(path: Path):
        rows, tmpl = describe_model(path)
        return (show(None), note(f"Base model ready: `{path}`"), gr.update(visible=False),
                gr.update(value=rows, visible=True), gr.update(value=tmpl, visible=True), str(path))

    def failed(message: str, log: str | None = None):
        return (show(message), "", gr.update(value=log or "", visible=bool(log)), gr.update(visible=False),
                gr.update(visible=False), gr.update())

    def on_load(text: str):
        text = (text or "").strip()
        if not text:
            yield failed("enter a model folder, a Hugging Face id (owner/name) or a git URL")
            return
        local = ws.path(text)
        bare = is_bare_repo(local)
        try:
            if local.is_dir() and not bare:
                yield shown(local)
                return
        except Exception as err:  # noqa: BLE001 - the loader's one-line message, never a trace
            yield failed(one_line(err))
            return
        problem = source_problem(ws, text)
        if problem:
            yield failed(problem)
            return
        args = ["clone", str(local) if bare else text, "--cache-dir", ws.rel(ws.models)]
        before = _dir_mib(ws.models)
        log = ""
        for running, log in jobs.run_streaming(args, cwd=ws.root, folder=ws.jobs / "clone",
                                               progress=lambda: f"downloaded {_dir_mib(ws.models) - before:,.1f} MiB"):
            if running:
                yield (show(None), note(f"Cloning `{text}` …", "run"), gr.update(value=log, visible=True),
                       gr.update(), gr.update(), gr.update())
        if not log.rstrip().endswith("[exit 0]"):
            yield failed(jobs.job_error(log), log)
            return
        try:
            yield shown(Path(jobs.last_stdout_line(log)))
        except Exception as err:  # noqa: BLE001
            yield failed(one_line(err), log)

    outputs = [source_err, status, progress, info, template, folder]
    load.click(on_load, source, outputs)
    source.submit(on_load, source, outputs)
    return {"folder": folder, "source": source}

