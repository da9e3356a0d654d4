"""Tab 3, train (the live half): the run list, a run's loss curve, figures and eval answers, Stop and Resume.

Everything shown is read from the run folders once a second (``studio.runs``), so a reload or a second
browser sees the same trainings, and a training started from a terminal shows up too.
"""
from __future__ import annotations

import gradio as gr

from myassistant.studio import chart, jobs, runs
from myassistant.studio.ui import Workspace, error_slot, note, show
from myassistant.trainer import runlock
from myassistant.trainer.run_folder import RUN_CONFIG_NAME

RUN_COLUMNS = ["run", "status", "step", "loss", "method", "base", "started"]
REFRESH_S = 1.0


def loss_chart(series: dict[str, list[tuple[float, float]]]) -> str:
    """The training-loss chart of ``{run: [(step, loss), ...]}``."""
    return chart.line_chart(series, title="Training loss", x_title="optimizer step", y_title="loss")


def shown_runs(ws: Workspace, name: str | None, others: list[str] | None) -> list[str]:
    return [n for n in dict.fromkeys([name, *(others or [])]) if n and (ws.runs / n).is_dir()]


def eval_rows(ws: Workspace, name: str | None) -> list[list]:
    if not name:
        return []
    return [[r.get("step"), r.get("prompt"), r.get("answer")] for r in reversed(runs.eval_samples(ws.runs / name))]


def build(ws: Workspace, started_run: gr.Textbox) -> dict:
    gr.Markdown("### Runs")
    with gr.Row():
        selected = gr.Dropdown([], label="Run", scale=2, elem_id="runs-selected", allow_custom_value=True)
        compare = gr.Dropdown([], multiselect=True, label="Compare with", scale=3, elem_id="runs-compare")
        stop = gr.Button("Stop", variant="stop", scale=1, elem_id="runs-stop")
        resume = gr.Button("Resume", scale=1, elem_id="runs-resume")
    action_err = error_slot()
    action = gr.Markdown("", elem_id="runs-action")
    live = gr.Markdown("", elem_id="runs-live", elem_classes=["live-figures"])
    with gr.Row(equal_height=True):
        with gr.Column(scale=3, variant="panel"):
            plot = gr.HTML(loss_chart({}),
                           elem_id="runs-loss")
        evals = gr.Dataframe(headers=["step", "prompt", "answer"], label="Eval prompts, as answered during training",
                             interactive=False, wrap=True, scale=2, max_height=320, elem_id="runs-evals",
                             column_widths=["15%", "30%", "55%"])  # "step" stays one word
    with gr.Accordion("Training log", open=False):
        log = gr.Textbox(lines=12, max_lines=12, show_label=False, autoscroll=True, elem_id="runs-log")
    table = gr.Dataframe(headers=RUN_COLUMNS, label="All runs", interactive=False, elem_id="runs-table")
    seen = gr.State({})  # what the page shows already (run names, plotted points): unchanged parts are not resent

    def refresh(name: str | None, others: list[str] | None, shown: dict):
        names = [p.name for p in runs.list_runs(ws.runs)]
        out_selected = gr.update(choices=names) if shown.get("names") != names else gr.update()
        if not name and names:
            name = names[0]
            out_selected = gr.update(choices=names, value=name)
        summaries = [runs.summary(ws.runs / n) for n in names]
        table_rows = [[s[c] for c in RUN_COLUMNS] for s in summaries]
        picked = shown_runs(ws, name, others)
        series = {n: [(r["step"], r["loss"]) for r in runs.metrics(ws.runs / n)] for n in picked}
        key = (tuple(picked), tuple(len(v) for v in series.values()))
        out_plot = gr.update() if shown.get("plot") == key else loss_chart(series)
        text = runs.live_text(ws.runs / name) if name and (ws.runs / name).is_dir() else "No runs yet: start one above."
        tail = runs.tail(runs.log_path(ws.runs / name), 60) if name else ""
        evals_ = eval_rows(ws, name)
        new_seen = {"names": names, "plot": key}
        out_compare = gr.update(choices=[n for n in names if n != name]) if shown.get("names") != names else gr.update()
        return out_selected, out_compare, text, out_plot, evals_, tail, table_rows, new_seen

    outputs = [selected, compare, live, plot, evals, log, table, seen]
    timer = gr.Timer(REFRESH_S)
    timer.tick(refresh, [selected, compare, seen], outputs, show_progress="hidden")
    selected.change(lambda n, o: refresh(n, o, {}), [selected, compare], outputs, show_progress="hidden")
    compare.change(lambda n, o: refresh(n, o, {}), [selected, compare], outputs, show_progress="hidden")
    started_run.change(lambda n: gr.update(value=n, choices=[p.name for p in runs.list_runs(ws.runs)]),
                       started_run, selected)

    def on_stop(name: str | None):
        if not name:
            return show("pick a run"), ""
        if not jobs.stop(runs.job_path(ws.runs / name)):
            if (pid := runlock.holder(ws.runs / name)) is not None:  # started from a terminal: its Ctrl-C is there
                return show(f"{name} was started outside the studio (pid {pid}): stop it with Ctrl-C where it runs, "
                            f"or `kill -INT {pid}` (it stops at the end of its step)"), ""
            return show(f"{name} is not training"), ""
        return show(None), note(f"Stopping **{name}** (Ctrl-C to the training); Resume continues from its last "
                                "checkpoint.", "info")

    def on_resume(name: str | None):
        if not name:
            return show("pick a run"), ""
        run_dir = ws.runs / name
        state = runs.status(run_dir)
        if state in ("running", "starting"):
            return show(f"{name} is training right now"), ""
        if state == "finished":
            return show(f"{name} finished; start a new run to train further"), ""
        if not runs.resumable(run_dir):
            return show(f"{name} has no complete checkpoint to resume from; start it again"), ""
        args = ["train", "--config", ws.rel(run_dir / RUN_CONFIG_NAME), "--resume"]
        jobs.start(args, cwd=ws.root, job_file=runs.job_path(run_dir), log_file=runs.log_path(run_dir))
        return show(None), note(f"Resumed **{name}**: `{jobs.shown(args)}`")

    stop.click(on_stop, selected, [action_err, action])
    resume.click(on_resume, selected, [action_err, action])
    selected.input(lambda: (show(None), ""), None, [action_err, action])  # another run: no word about the last one
    return {"selected": selected, "refresh": (refresh, [selected, compare, seen], outputs)}
