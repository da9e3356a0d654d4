"""Tab 6, merge and push: ``assistant merge``, ``assistant push`` and ``assistant push-app`` as jobs.

A token typed here goes to the push job's process environment only (HF_TOKEN for ``hf:`` targets,
GIT_TOKEN for git remotes), where ``hub`` reads it; it is never shown, logged, or written anywhere. Left
empty, the job inherits the studio's environment (HF_TOKEN / OPENXLAB_TOKEN / GIT_TOKEN).
"""
from __future__ import annotations

import gradio as gr

from myassistant.hub import redact
from myassistant.studio import jobs, runs
from myassistant.studio.ui import Workspace, error_slot, note, show

TOKEN_HELP = ("Blank = from the studio's environment (HF_TOKEN for hf: targets, OPENXLAB_TOKEN / GIT_TOKEN for git). "
              "A typed token is handed to the push process only; never shown, logged or saved.")


def secrets_for(remote: str, token: str) -> dict[str, str]:
    token = (token or "").strip()
    if not token:
        return {}
    return {"HF_TOKEN": token} if remote.startswith("hf:") else {"GIT_TOKEN": token}


def _finish(log: str, token: str) -> str:
    """What the page may show of a job log: URLs' credentials and the typed token taken out."""
    text = redact(log)
    return text.replace(token.strip(), "***") if (token or "").strip() else text


def build(ws: Workspace) -> dict:
    gr.Markdown("### 1 · Merge\nThe adapter folded into its base: standalone safetensors that plain transformers loads.")
    with gr.Row():
        with gr.Column(scale=2):
            run = gr.Dropdown([], label="Run", allow_custom_value=True, elem_id="merge-run")
            run_err = error_slot()
        with gr.Column(scale=2):
            out = gr.Textbox(label="Merged model folder", placeholder="merged/<run>", elem_id="merge-out")
            out_err = error_slot()
        dtype = gr.Radio(["bfloat16", "float16", "float32"], value="bfloat16", label="dtype", scale=3,
                         elem_id="merge-dtype")
        merge = gr.Button("Merge", variant="primary", scale=1, elem_id="merge-run-btn")
    merge_status = gr.Markdown("", elem_id="merge-status")
    gr.Markdown("### 2 · Push the model\nTo any git-lfs remote (OpenXLab, a `file://` bare repo, …) or `hf:owner/name`.")
    with gr.Row():
        with gr.Column(scale=2):
            folder = gr.Textbox(label="Model folder", elem_id="push-folder")
            folder_err = error_slot()
        with gr.Column(scale=3):
            remote = gr.Textbox(label="Model repo", placeholder="https://code.openxlab.org.cn/you/alice.git · hf:you/alice",
                                elem_id="push-remote")
            remote_err = error_slot()
    with gr.Row():
        token = gr.Textbox(label="Access token", type="password", info=TOKEN_HELP, scale=3, elem_id="push-token")
        private = gr.Checkbox(label="private (Hugging Face)", scale=1)
        push = gr.Button("Push model", variant="primary", scale=1, elem_id="push-model")
    gr.Markdown("### 3 · Push the app\nA Gradio app repo (Spaces / OpenXLab apps) that clones the model repo at start-up.")
    with gr.Row():
        with gr.Column(scale=3):
            app_remote = gr.Textbox(label="App repo", placeholder="https://code.openxlab.org.cn/you/alice-app.git · "
                                    "hf:you/alice-chat", elem_id="push-app-remote")
            app_err = error_slot()
        push_app = gr.Button("Push app", variant="primary", scale=1, elem_id="push-app")
    status = gr.Markdown("", elem_id="push-status")
    log = gr.Textbox(label="log", lines=8, max_lines=8, visible=False, autoscroll=True, elem_id="publish-log")

    def on_merge(run_: str | None, out_: str, dtype_: str):
        keep = [gr.update()] * 4
        run_dir = ws.path(run_) if run_ else None
        if run_dir is None or not run_dir.is_dir():
            yield show("pick a finished run"), show(None), *keep
            return
        if runs.status(run_dir) != "finished":
            yield show(f"{run_} is {runs.status(run_dir)}; merge a finished run"), show(None), *keep
            return
        out_dir = ws.path(out_) if (out_ or "").strip() else ws.merged / run_dir.name
        args = ["merge", ws.rel(run_dir), "--out", ws.rel(out_dir), "--dtype", dtype_]
        text = ""
        for running, text in jobs.run_streaming(args, cwd=ws.root, folder=ws.jobs / "merge"):
            if running:
                yield (show(None), show(None), note(f"Merging … `{jobs.shown(args)}`", "run"), gr.update(),
                       gr.update(value=text, visible=True), gr.update())
        if not text.rstrip().endswith("[exit 0]"):
            yield show(None), show(jobs.job_error(text)), "", gr.update(), gr.update(value=text, visible=True), gr.update()
            return
        yield (show(None), show(None), note(f"Merged into `{ws.rel(out_dir)}` (`{jobs.shown(args)}`)"), "",
               gr.update(value=text, visible=False), ws.rel(out_dir))

    def pushed(args: list[str], secrets: dict, token_: str):
        """Run a push job: yields ("running" | "ok" | "failed", the log as the page may show it)."""
        text = ""
        for running, text in jobs.run_streaming(args, cwd=ws.root, folder=ws.jobs / args[0], secrets=secrets):
            if running:
                yield "running", _finish(text, token_)
        yield ("ok" if text.rstrip().endswith("[exit 0]") else "failed"), _finish(text, token_)

    def on_push(folder_: str, remote_: str, token_: str, private_: bool):
        if not (folder_ or "").strip() or not (ws.path(folder_) / "config.json").exists():
            yield show(f"{folder_}: no model here (no config.json); merge a run first and push the merged folder"
                       if (folder_ or "").strip() else "pick a merged model folder (merge a run first)"), \
                show(None), "", gr.update()
            return
        if not (remote_ or "").strip():
            yield show(None), show("where to push: a git URL, a bare repo path or hf:owner/name"), "", gr.update()
            return
        args = ["push", ws.rel(ws.path(folder_)), "--to", remote_.strip(), "--cache-dir", ws.rel(ws.cache)]
        args += ["--private"] if private_ else []
        messages = {"running": note(f"Pushing the model … `{jobs.shown(args)}`", "run"),
                    "ok": note(f"Pushed `{folder_}` to `{redact(remote_.strip())}`"), "failed": ""}
        for state, text in pushed(args, secrets_for(remote_, token_), token_):
            error = jobs.job_error(text) if state == "failed" else None
            yield show(None), show(error), messages[state], gr.update(value=text, visible=True)

    def on_push_app(app_: str, remote_: str, token_: str, private_: bool):
        if not (app_ or "").strip():
            yield show("where to push the app: a git URL, a bare repo path or hf:owner/name"), "", gr.update()
            return
        if not (remote_ or "").strip():
            yield show("fill in the model repo above: the app clones it at start-up"), "", gr.update()
            return
        args = ["push-app", "--model-repo", remote_.strip(), "--to", app_.strip(), "--cache-dir", ws.rel(ws.cache)]
        args += ["--private"] if private_ else []
        messages = {"running": note(f"Pushing the app … `{jobs.shown(args)}`", "run"), "failed": "",
                    "ok": note(f"Pushed the app for `{redact(remote_.strip())}` to `{redact(app_.strip())}`")}
        for state, text in pushed(args, secrets_for(app_, token_), token_):
            error = jobs.job_error(text) if state == "failed" else None
            yield show(error), messages[state], gr.update(value=text, visible=True)

    merge.click(on_merge, [run, out, dtype], [run_err, out_err, merge_status, status, log, folder])
    push.click(on_push, [folder, remote, token, private], [folder_err, remote_err, status, log])
    push_app.click(on_push_app, [app_remote, remote, token, private], [app_err, status, log])
    return {"run": run}
