"""The studio's page: the whole pipeline in pipeline order, one tab a stage, served where ``studio.serve`` allows."""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from myassistant.studio import runs, tab_chat, tab_data, tab_model, tab_publish, tab_report, tab_runs, tab_train
from myassistant.studio.serve import StudioError, login_for, warn_if_exposed
from myassistant.studio.ui import CSS, THEME, Workspace


def build(workdir: str | Path) -> gr.Blocks:
    ws = Workspace(Path(workdir))
    for folder in (ws.root, ws.runs, ws.data):
        folder.mkdir(parents=True, exist_ok=True)
    with gr.Blocks(title="myassistant studio", analytics_enabled=False) as demo:  # offline; pushes use tokens
        gr.Markdown(f"# myassistant studio\nTurn an open chat model into your own assistant: base model → data → "
                    f"train → report → chat → merge and push. Every file lives under `{ws.root}`; every stage runs "
                    "the same `assistant` command you could type.", elem_classes=["studio-header"])
        with gr.Tabs():
            with gr.Tab("1 · Base model", elem_id="tab-model"):
                model = tab_model.build(ws)
            with gr.Tab("2 · Data", elem_id="tab-data"):
                data = tab_data.build(ws, model["folder"])
            with gr.Tab("3 · Train", elem_id="tab-train"):
                train = tab_train.build(ws, model["folder"], data["train_file"])
                live = tab_runs.build(ws, train["started_run"])
            with gr.Tab("4 · Report", elem_id="tab-report") as report_tab:
                report = tab_report.build(ws, data["data_dir"])
            with gr.Tab("5 · Chat", elem_id="tab-chat") as chat_tab:
                chat = tab_chat.build(ws)
            with gr.Tab("6 · Merge & push", elem_id="tab-publish") as publish_tab:
                publish = tab_publish.build(ws)

        def run_choices():
            return gr.update(choices=[f"runs/{p.name}" for p in runs.list_runs(ws.runs)])

        report_tab.select(lambda: gr.update(choices=report["targets"]()), None, report["target"])
        chat_tab.select(lambda: gr.update(choices=report["targets"]()), None, chat["target"])
        publish_tab.select(run_choices, None, publish["run"])
        refresh, inputs, outputs = live["refresh"]
        demo.load(lambda n, o: refresh(n, o, {}), inputs[:2], outputs)  # a reload reconnects to the runs on disk
        demo.load(lambda run, base, file: tab_train.fresh_inputs(ws, run, base, file),
                  [train["run"], train["base"], train["train_file"]],
                  [train["run"], train["base"], train["train_file"]]).then(
            train["on_change"], train["form_inputs"], train["command"])
    return demo


def launch(workdir: str | Path, *, host: str = "127.0.0.1", port: int = 7861, share: bool = False,
           auth: str | None = None, open_browser: bool = False) -> None:
    """Serve the studio; refuses to listen beyond loopback (or share) without a login."""
    login = login_for(host, share, auth)
    warn_if_exposed(host, share)
    demo = build(workdir)
    try:
        # quiet unless shared (gradio prints the public link): its hint "set share=True in launch()" is no flag here
        demo.queue(default_concurrency_limit=4).launch(server_name=host, server_port=port, share=share, auth=login,
                                                       inbrowser=open_browser, theme=THEME, css=CSS, quiet=not share,
                                                       footer_links=[], show_error=False, prevent_thread_lock=True)
    except OSError as err:
        if "empty port" not in str(err):  # gradio's words when the port is taken
            raise
        raise StudioError(f"port {port} on {host} is in use (another studio or app?): pass --port N") from None
    if not share:
        print(f"assistant studio: {demo.local_url} (workspace {Path(workdir).resolve()}); Ctrl-C stops it; "
              "--share --auth user:password gives a public link", flush=True)
    demo.block_thread()
