"""Tab 4, report: ``assistant report`` on a run (or a merged model), as a table and a bar chart vs the base."""
from __future__ import annotations

import gradio as gr
import pandas as pd

from myassistant.studio import jobs, runs
from myassistant.studio.ui import Workspace, error_slot, note, show
from myassistant.trainer import run_folder
from myassistant.trainer.identity.report import cell


def bars(frame: pd.DataFrame | None):
    """The chart's update: its bars in the table's order (a plot sorts names alphabetically by default)."""
    return gr.update(value=frame, sort=None if frame is None else list(frame["measure"]))


def report_views(rep: dict | None) -> tuple[list[list], pd.DataFrame | None, list[list]]:
    """(table rows, bar-chart frame, example answers) of a report.json."""
    if not rep or "figures" not in rep:  # None, not an empty frame: that would fix the chart's colours to none
        return [], None, []
    rows, bars = [], []
    for key, f in rep["figures"].items():
        percent = key != "overlap"  # word overlap is a ratio, not a share of prompts
        rows.append([f["label"], cell(f["fine_tuned"], percent), cell(f["base"], percent), f["n"]["all"]])
        if percent:
            for side, values in (("fine-tuned", f["fine_tuned"]), ("base", f["base"])):
                if values and values.get("all") is not None:
                    # one bar per (measure, model): bars of one x would be stacked, adding the two up
                    # short names (the table has the long ones) that say which way is good
                    short = key.replace("_", " ") + (" (lower is better)" if key.startswith("leak") else "")
                    bars.append({"measure": f"{short} · {side}", "percent": round(100 * values["all"], 1),
                                 "model": side})
    examples = [list(e) for e in rep.get("examples", [])]
    return rows, pd.DataFrame(bars), examples


def build(ws: Workspace, data_dir: gr.Textbox) -> dict:
    gr.Markdown("Does the model know its name on questions it never saw, and does it blurt the name when nobody "
                "asked? Measured on the held-out sets of the generated data, fine-tuned vs base (greedy answers).")
    with gr.Row():
        with gr.Column(scale=2):
            target = gr.Dropdown([], label="Run or merged model", allow_custom_value=True, elem_id="report-target")
            target_err = error_slot()
        with gr.Column(scale=2):
            data = gr.Textbox(label="Data folder (from the Data tab)", elem_id="report-data")
            data_err = error_slot()
        run_btn = gr.Button("Run report", variant="primary", scale=1, elem_id="report-run")
    status = gr.Markdown("", elem_id="report-status")
    table = gr.Dataframe(headers=["measure", "fine-tuned: all (zh / en)", "base", "prompts"],
                         label="Fine-tune report", wrap=True,
                         interactive=False, elem_id="report-table")
    chart = gr.BarPlot(None, x="measure", y="percent", color="model", title="Fine-tuned vs base (all prompts)",
                       y_lim=[0, 100], height=380, x_label_angle=-35, elem_id="report-chart", sort=None)
    examples = gr.Dataframe(headers=["set", "question", "answer"], label="Example answers", interactive=False,
                            wrap=True, elem_id="report-examples")
    log = gr.Textbox(label="report log", lines=6, max_lines=6, visible=False, autoscroll=True)

    def targets() -> list[str]:
        found = [f"runs/{p.name}" for p in runs.list_runs(ws.runs)]
        found += [f"merged/{p.name}" for p in sorted(ws.merged.glob("*")) if (p / "config.json").exists()]
        return found

    def on_pick(target_: str | None, data_: str):
        folder = ws.path(target_) if target_ else None
        rows, frame, ex = report_views(runs.read_report(folder) if folder else None)
        found = run_folder.data_dir(folder) if folder and folder.is_dir() else None  # the run's identity data
        fill = found and not (data_ or "").strip()
        # another target: the last one's "Report written" and a data error answered by this fill are gone
        return (rows, bars(frame), ex, ws.rel(found) if fill else gr.update(), "", show(None) if fill else gr.update(),
                show(None))

    def on_run(target_: str | None, data_: str):
        keep = [gr.update()] * 5
        if not target_ or not ws.path(target_).is_dir():
            yield show("pick a run (or a merged model folder)"), show(None), *keep
            return
        if not (data_ or "").strip() or not (ws.path(data_) / "meta.json").exists():
            yield show(None), show(f"{data_}: no identity data here (no meta.json); pick the folder the Data tab's "
                                   "Generate wrote (it holds the held-out sets)" if (data_ or "").strip() else
                                   "pick the folder the Data tab's Generate wrote (it holds the held-out sets)"), *keep
            return
        if runs.status(ws.path(target_)) in ("running", "starting"):
            yield show(f"{target_} is still training"), show(None), *keep
            return
        args = ["report", target_, "--data", ws.rel(ws.path(data_))]
        log_text = ""
        for running, log_text in jobs.run_streaming(args, cwd=ws.root, folder=ws.jobs / "report"):
            if running:
                yield (show(None), show(None), note(f"Measuring `{target_}` … (`{jobs.shown(args)}`)", "run"),
                       gr.update(), gr.update(), gr.update(), gr.update(value=log_text, visible=True))
        if not log_text.rstrip().endswith("[exit 0]"):
            yield show(jobs.job_error(log_text)), show(None), "", gr.update(), gr.update(), gr.update(), \
                gr.update(value=log_text, visible=True)
            return
        rows, frame, ex = report_views(runs.read_report(ws.path(target_)))
        yield (show(None), show(None), note(f"Report written to `{target_}/report.md` (`{jobs.shown(args)}`)"),
               rows, bars(frame), ex, gr.update(value=log_text, visible=False))

    run_btn.click(on_run, [target, data], [target_err, data_err, status, table, chart, examples, log])
    target.change(on_pick, [target, data], [table, chart, examples, data, status, data_err, target_err])
    target.focus(lambda: gr.update(choices=targets()), None, target)
    data_dir.change(lambda v: ws.rel(v) if v else v, data_dir, data)
    return {"target": target, "targets": targets}

