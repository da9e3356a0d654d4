"""Tab 3, train (the form): a preset, the knobs that matter, the exact ``assistant train`` command, Start.

The form becomes ``section.key=value`` overrides on top of the preset: the same strings the CLI takes,
checked by the same ``trainer.config.load_config`` before anything starts. The live view of the runs
is ``tab_runs``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import shlex

import gradio as gr

from myassistant.model import read_config
from myassistant.studio import jobs, runs
from myassistant.studio.ui import Workspace, error_slot, note, one_line, show, slug
from myassistant.trainer import runlock
from myassistant.trainer.config import ConfigError, copy_preset, list_presets, load_config, preset_path
from myassistant.trainer.preflight import data_problems
from myassistant.trainer.run_folder import RUN_INFO_NAME
from myassistant.trainer.resume import complete_checkpoints

DEFAULT_PRESET = "tiny_lora_cpu"
REAL_MODEL_PRESET = "internlm2_chat_1_8b_qlora_assistant"  # for a base that is no tiny test model, on a GPU
TINY_HIDDEN = 512  # widest hidden size the tiny presets' settings (big steps for random weights) are meant for
# form field -> the config key it sets (the rest of the config comes from the preset)
KNOBS = {"method": "quant.method", "epochs": "train.num_train_epochs", "lr": "train.learning_rate", "rank": "lora.r",
         "max_length": "data.max_length"}
ADVANCED = {"max_steps": "train.max_steps", "batch": "train.per_device_train_batch_size",
            "accum": "train.gradient_accumulation_steps", "alpha": "lora.lora_alpha", "save_steps": "train.save_steps",
            "eval_steps": "train.eval_steps", "logging_steps": "train.logging_steps", "eval_prompts": "data.eval_prompts"}
FIELDS = {**KNOBS, **ADVANCED}
KEY_FIELD = {**{v: k for k, v in FIELDS.items()}, "model.base": "base", "data.train_file": "train_file",
             "train.output_dir": "run"}
SLOTS = ("run", "base", "train_file", *FIELDS, "extra", "general")


def preset_values(name: str) -> dict:
    """The preset's resolved value for every form field (base and data are placeholders here)."""
    cfg = load_config(preset_path(name), ["model.base=x", "data.train_file=x"]).to_dict()
    values = {}
    for field, key in FIELDS.items():
        section, k = key.split(".")
        values[field] = cfg[section][k]
    values["eval_prompts"] = "\n".join(values["eval_prompts"])
    return values


def _same(value, preset) -> bool:
    if isinstance(preset, (int, float)) and not isinstance(preset, bool):
        try:
            return float(value) == float(preset)
        except (TypeError, ValueError):
            return False
    return str(value) == str(preset)


def _text(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return "" if value is None else str(value)


def overrides(ws: Workspace, preset: str, run: str, base: str, train_file: str, form: dict, extra: str) -> list[str]:
    """The ``section.key=value`` arguments the form means (only what differs from the preset)."""
    out = [f"model.base={ws.rel(ws.path(base)) if base.strip() else ''}",
           f"data.train_file={ws.rel(ws.path(train_file)) if train_file.strip() else ''}",
           f"train.output_dir={ws.rel(ws.runs / run)}"]
    try:
        values = preset_values(preset)
    except ConfigError:
        values = {}
    for field, key in FIELDS.items():
        value = form.get(field)
        if field == "eval_prompts":
            prompts = [p.strip() for p in (value or "").splitlines() if p.strip()]
            if prompts != [p for p in values.get(field, "").splitlines() if p.strip()]:
                out.append(f"{key}={json.dumps(prompts, ensure_ascii=False)}")
        elif field not in values or not _same(value, values[field]):
            out.append(f"{key}={_text(value)}")
    out += [line.strip() for line in (extra or "").splitlines() if line.strip()]
    return out


def next_run_name(ws: Workspace) -> str:
    """run-N with the first N whose folder does not exist yet."""
    n = 1
    while (ws.runs / f"run-{n}").exists():
        n += 1
    return f"run-{n}"


def last_inputs(ws: Workspace, base: str, train_file: str) -> tuple[str, str]:
    """(base, data file) for a fresh page: what is typed already, else the newest run's."""
    if not (base or "").strip() or not (train_file or "").strip():
        for run_dir in runs.list_runs(ws.runs):
            cfg = runs.run_config(run_dir)
            if cfg:
                return base or cfg["model"]["base"], train_file or cfg["data"]["train_file"]
    return base, train_file


def fresh_inputs(ws: Workspace, run: str, base: str, train_file: str) -> list:
    """A new page's run name and inputs (``next_run_name``, ``last_inputs``) as updates of only the fields they
    change: on a slow machine the answer can come after the user typed into a field, and must not blank it."""
    values = (next_run_name(ws), *last_inputs(ws, base, train_file))
    return [gr.update() if new == old else new for new, old in zip(values, (run, base, train_file))]


def train_args(ws: Workspace, preset: str, overrides_: list[str]) -> list[str]:
    return ["train", "--config", ws.rel(ws.presets / f"{preset}.yaml"), *overrides_]


def _in_workspace(ws: Workspace, cfg, train_file: str):
    """``cfg`` reading the form's data file, its data paths as the training, run in the workspace, reads them."""
    on = lambda path: str(ws.path(path)) if path else path  # noqa: E731
    train_file = "" if cfg.data.sources else on(train_file.strip())
    data = dataclasses.replace(cfg.data, train_file=train_file, image_folder=on(cfg.data.image_folder),
                               sources=[dataclasses.replace(s, path=on(s.path)) for s in cfg.data.sources])
    return dataclasses.replace(cfg, data=data)


def check(ws: Workspace, preset: str, run: str, base: str, train_file: str, overrides_: list[str],
          extra: str = "") -> dict[str, str]:
    """field -> problem, for everything that would stop the training; empty when it can start. A problem of a line
    of `extra` (the other overrides box) is shown there, not under the form field of its key."""
    typed = {line.strip() for line in extra.splitlines() if line.strip()}
    problems: dict[str, str] = {}
    if not run or slug(run) != run.lower():  # (capitals are letters too)
        problems["run"] = f"a run name is letters, digits, '-', '_' or '.' (e.g. {slug(run) or 'alice-lora'})"
    else:
        run_dir = ws.runs / run
        if runlock.holder(run_dir) is not None or runs.status(run_dir) in ("running", "starting"):
            problems["run"] = f"{run} is training right now; stop it first or choose another name"
        elif (run_dir / RUN_INFO_NAME).exists() or complete_checkpoints(run_dir):
            problems["run"] = f"runs/{run} already holds a run: Resume it, or choose another name"
    if not base.strip():
        problems["base"] = "load a base model in the Base model tab, or type its folder"
    else:
        try:
            read_config(ws.path(base))
        except Exception as err:  # noqa: BLE001 - the loader's one-line error
            problems["base"] = one_line(err)
    if not train_file.strip():
        problems["train_file"] = "generate or check a data file in the Data tab, or type its path"
    try:
        cfg = load_config(preset_path(preset), overrides_)
    except ConfigError as err:
        for problem in str(err).split(" problem(s): ", 1)[-1].split("; "):
            line = re.match(r"override '([^']*)': ", problem)
            field = "extra" if line and line[1] in typed else \
                next((KEY_FIELD[k] for k in KEY_FIELD if f"{k}:" in problem or f"'{k}=" in problem), None)
            if field is None and problem.startswith("override"):
                field = "extra"
            said = re.sub(r"^override '[^']*': ", "", problem) if field != "extra" else problem
            field = field or "general"
            problems[field] = f"{problems[field]}; {said}" if field in problems else said  # every one, not the first
    else:
        if train_file.strip() and "train_file" not in problems:  # read as training reads the preset's kind of data
            found = data_problems(_in_workspace(ws, cfg, train_file), open_pictures=False)
            if found:  # the CLI's lines, as they are
                problems["train_file"] = "; ".join(found)
        if cfg.quant.method == "qlora":  # what this machine lacks, as training would say it at its start
            from myassistant.trainer.lora import bnb_config

            try:
                bnb_config(cfg.quant)
            except ConfigError as err:
                problems[KEY_FIELD.get("quant.method", "general")] = str(err).removeprefix("quant.method: ")
    return problems


def build(ws: Workspace, base_folder: gr.Textbox, data_file: gr.Textbox) -> dict:
    presets = list_presets()
    start_values = preset_values(DEFAULT_PRESET if DEFAULT_PRESET in presets else next(iter(presets)))
    slots: dict[str, gr.Markdown] = {}
    comps: dict[str, gr.components.Component] = {}
    with gr.Row():
        preset = gr.Dropdown(list(presets), value=DEFAULT_PRESET, label="Preset", info=presets.get(DEFAULT_PRESET),
                             scale=2, elem_id="train-preset")
        with gr.Column(scale=1):
            run = gr.Textbox(label="Run name", value="run-1", elem_id="train-run")
            slots["run"] = error_slot()
    with gr.Row():
        with gr.Column():
            base = gr.Textbox(label="Base model folder", elem_id="train-base")
            slots["base"] = error_slot()
        with gr.Column():
            train_file = gr.Textbox(label="Training data file", elem_id="train-file")
            slots["train_file"] = error_slot()
    with gr.Row():
        for field, label, kind in (("method", "Method", "radio"), ("epochs", "Epochs", "float"),
                                   ("lr", "Learning rate", "text"), ("rank", "LoRA rank", "int"),
                                   ("max_length", "max_length (tokens)", "int")):
            with gr.Column(min_width=140):
                if kind == "radio":
                    comps[field] = gr.Radio(["lora", "qlora", "full"], value=start_values[field], label=label,
                                            elem_id=f"train-{field}")
                elif kind == "text":
                    comps[field] = gr.Textbox(value=_text(start_values[field]), label=label, elem_id=f"train-{field}")
                else:
                    comps[field] = gr.Number(value=start_values[field], label=label, elem_id=f"train-{field}",
                                             precision=0 if kind == "int" else None)
                slots[field] = error_slot()
    with gr.Accordion("Advanced", open=False):
        with gr.Row():
            for field, label in (("max_steps", "max_steps (-1 = epochs)"), ("batch", "batch size / device"),
                                 ("accum", "gradient accumulation"), ("alpha", "LoRA alpha")):
                with gr.Column(min_width=140):
                    comps[field] = gr.Number(value=start_values[field], precision=0, label=label,
                                             elem_id=f"train-{field}")
                    slots[field] = error_slot()
        with gr.Row():
            for field, label in (("save_steps", "checkpoint every N steps"), ("eval_steps", "eval prompts every N steps"),
                                 ("logging_steps", "log every N steps")):
                with gr.Column(min_width=140):
                    comps[field] = gr.Number(value=start_values[field], precision=0, label=label,
                                             elem_id=f"train-{field}")
                    slots[field] = error_slot()
        with gr.Row():
            with gr.Column():
                comps["eval_prompts"] = gr.Textbox(value=start_values["eval_prompts"], lines=3,
                                                   label="Eval prompts (one a line, answered during training)")
                slots["eval_prompts"] = error_slot()
            with gr.Column():
                extra = gr.Textbox(lines=3, label="Other overrides (section.key=value, one a line)",
                                   placeholder="train.warmup_ratio=0.05\nlora.lora_dropout=0.1", elem_id="train-extra")
                slots["extra"] = error_slot()
    command = gr.Code(label="The same from a terminal", language="shell", lines=2, interactive=False, wrap_lines=True, max_lines=4,
                      elem_id="train-command", elem_classes=["command"])
    with gr.Row():
        start = gr.Button("Start training", variant="primary", elem_id="train-start")
    slots["general"] = error_slot()
    started = gr.Markdown("", elem_id="train-started")
    started_run = gr.Textbox(visible=False, elem_id="train-started-run")  # the live panel follows it

    form_inputs = [preset, run, base, train_file, extra, *comps.values()]

    def form_of(values: tuple) -> tuple[str, str, str, str, str, dict]:
        preset_, run_, base_, file_, extra_, *rest = values
        return preset_, (run_ or "").strip(), base_ or "", file_ or "", extra_ or "", dict(zip(comps, rest))

    def on_change(*values):
        preset_, run_, base_, file_, extra_, form = form_of(values)
        args = train_args(ws, preset_, overrides(ws, preset_, run_, base_, file_, form, extra_))
        if not (ws.presets / f"{preset_}.yaml").exists():  # the command reads it: runs as shown before any Start
            with contextlib.suppress(ConfigError, OSError):
                copy_preset(preset_, ws.presets / f"{preset_}.yaml")
        return f"cd {shlex.quote(str(ws.root))} && {jobs.shown(args)}"  # its paths are the workspace's

    def on_preset(name: str):
        try:
            values = preset_values(name)
        except ConfigError as err:
            return [gr.update(info=one_line(err)), *[gr.update()] * len(comps)]
        return [gr.update(info=list_presets().get(name)),
                *[gr.update(value=_text(values[f]) if f == "lr" else values[f]) for f in comps]]

    def on_base(base_: str, preset_: str):
        """A real base model with a tiny model's preset (learning rate 2e-3, short samples): the GPU recipe's
        preset where there is a GPU, else a word under the dropdown."""
        try:
            hidden = read_config(ws.path(base_)).get("hidden_size") or 0
        except Exception:  # noqa: BLE001 - no model there yet: the Start check names it
            return gr.update()
        if hidden <= TINY_HIDDEN or not preset_.startswith("tiny_"):
            return gr.update()
        import torch

        if torch.cuda.is_available() and REAL_MODEL_PRESET in list_presets():
            return gr.update(value=REAL_MODEL_PRESET)
        return gr.update(info=f"⚠ {preset_} is for tiny test models (big steps for random weights); this base has "
                              f"hidden size {hidden}: lower the learning rate (e.g. 2e-4) and raise max_length")

    def on_start(*values):
        preset_, run_, base_, file_, extra_, form = form_of(values)
        over = overrides(ws, preset_, run_, base_, file_, form, extra_)
        problems = check(ws, preset_, run_, base_, file_, over, extra_)
        if problems:
            return [*[show(problems.get(k)) for k in SLOTS], "", gr.update(), gr.update()]
        ws.presets.mkdir(parents=True, exist_ok=True)
        copy_preset(preset_, ws.presets, force=True)  # `assistant presets copy`: the shown command runs as is
        run_dir = ws.runs / run_
        jobs.start(train_args(ws, preset_, over), cwd=ws.root, job_file=runs.job_path(run_dir),
                   log_file=runs.log_path(run_dir))
        # the name box moves on to a free name: Start again is the next run, not a clash with this one
        return [*[show(None) for _ in SLOTS], note(f"Started **{run_}**: follow it below."), run_, next_run_name(ws)]

    for comp in form_inputs:
        comp.change(on_change, form_inputs, command)
    run.input(lambda: show(None), None, slots["run"])  # another name: no word about the last one's state
    preset.change(on_preset, preset, [preset, *comps.values()])
    start.click(on_start, form_inputs, [*[slots[k] for k in SLOTS], started, started_run, run])
    base_folder.change(lambda v: v, base_folder, base)
    base.change(on_base, [base, preset], preset)
    data_file.change(lambda v: v, data_file, train_file)
    return {"started_run": started_run, "run": run, "base": base, "train_file": train_file, "command": command, "form_inputs": form_inputs, "on_change": on_change}

