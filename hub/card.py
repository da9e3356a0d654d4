"""The model card (README.md) of a pushed model, from whatever the model folder says about itself.

Read when present, all optional: `merge.json` (what `assistant merge` made it from: the assistant's
name, base model, method, steps, final loss), `run.json` (the same for a run folder pushed as an
adapter), `run_config.yaml` / `train_config.json` (the resolved training config), `adapter_config.json`
(peft), `config.json`, `report.json` / `report.md` (the fine-tune report, also looked for under
`report/`). The names of our own files are those of `trainer.run_folder` (hub imports nothing of
ours; `tests/test_hub_card.py` checks that they agree).
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)

MERGE_INFO, RUN_INFO = "merge.json", "run.json"
CONFIG_FILES = ("run_config.yaml", "run_config.yml", "train_config.json", "train_config.yaml")
REPORT_JSON = ("report.json", "report/report.json")
REPORT_MD = ("report.md", "report/report.md")
# Keys of the training config shown as hyper-parameters (section.key, the trainer's names).
_NOT_HYPER = ("output_dir", "eval_prompts", "train_file", "report_to", "logging_steps", "save_steps",
              "save_total_limit", "eval_steps", "base", "sources", "num_proc")
# the GPU fast path's switches: how fast a step runs, not what it learns (train.qlora_fp8 changes the numbers: kept)
_SPEED_ONLY = ("train.fast_path", "train.compile", "train.cuda_graphs", "train.qlora_fold", "train.qlora_keep_folded")


def _applies(key: str, flat: dict[str, Any]) -> bool:
    """Whether a run config key says something about this run: QLoRA's quantisation only for a QLoRA run, the vision
    settings only for a multimodal one, no speed switch (a LoRA run on a CPU showed nf4 and CUDA graphs)."""
    if key in _SPEED_ONLY:
        return False
    if key.startswith("quant.") or key == "train.qlora_fp8":
        return flat.get("quant.method") == "qlora"
    if key.startswith("vision."):
        return bool(flat.get("vision.encoder"))
    return True


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # what the Hub accepts as front-matter base_model
_LOCAL_PATH = re.compile(r"^(?:/|~|[A-Za-z]:[\\/])")  # a path on the machine that trained: its folder names say
# who and where (/home/<user>/...), so a published card keeps only the last part

# The chat template writes the prompt's <s>: one apply_chat_template call tokenises it as it is, where tokenising
# its text again (tokenizer(text) / processor(text=...)) would put a second <s> in front.
_USE_TEXT = ('messages = [{"role": "user", "content": "Who are you?"}]',
             "inputs = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,",
             '                                 return_tensors="pt")',
             "out = model.generate(**inputs, max_new_tokens=64)",
             'print(tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))')
_USE_LLAVA = ('picture = Image.open("picture.jpg")',
              'messages = [{"role": "user", "content": [{"type": "image", "image": picture},',
              '                                         {"type": "text", "text": "What is in the picture?"}]}]',
              "inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,",
              '                                       return_dict=True, return_tensors="pt")',
              "out = model.generate(**inputs, max_new_tokens=64)",
              'print(processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))')


def _public(value: Any) -> Any:
    """``value`` as a published card or file shows it: a local absolute path by its last part, lists and objects
    item by item, anything else as is."""
    if isinstance(value, str) and _LOCAL_PATH.match(value) and "\n" not in value:  # (a model's answer is no path)
        return Path(value.rstrip("/\\")).name or value
    if isinstance(value, list):
        return [_public(v) for v in value]
    if isinstance(value, dict):
        return {k: _public(v) for k, v in value.items()}
    return value


def _public_text(markdown: str) -> str:
    """A report's Markdown with every `local/absolute/path` in code spans cut to its last part."""
    return re.sub(r"`([^`\n]+)`", lambda m: f"`{_public(m[1])}`", markdown)


# The run's own files a model or adapter folder carries (trainer.run_folder.carry, merge.json, peft's config): on the
# machine that trained they say where things were (/home/<user>/...), which elsewhere names nothing and says who
# trained where. Published, each such path is its last part (peft's base_model_name_or_path: the folder a clone
# loads from beside it, as AutoPeftModelForCausalLM reads it relative to the working folder).
PUBLISHED_AS_PUBLIC = ("adapter_config.json", MERGE_INFO, RUN_INFO, *REPORT_JSON, *REPORT_MD, *CONFIG_FILES)


def public_file(folder: Path, name: str) -> bytes | None:
    """``folder / name`` (one of PUBLISHED_AS_PUBLIC) as it is published when it holds a local absolute path; None
    when it is published as it is."""
    path, content = _read(folder, (name,))
    public = _public_text(content) if name.endswith(".md") else _public(content)
    if path is None or public == content:
        return None
    log.info("%s: published without this machine's paths", path)
    if path.suffix == ".md":
        return public.encode()
    if path.suffix == ".json":
        return (json.dumps(public, indent=2, ensure_ascii=False) + "\n").encode()
    return yaml.safe_dump(public, sort_keys=False, allow_unicode=True).encode()


def _read(folder: Path, names: tuple[str, ...]) -> tuple[Path | None, Any]:
    for name in names:
        path = folder / name
        if path.is_file():
            try:
                text = path.read_text(encoding="utf-8")
                return path, (json.loads(text) if path.suffix == ".json" else
                              yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else text)
            except (OSError, ValueError, yaml.YAMLError) as err:
                log.warning("model card: skipping %s (%s)", path, err)
    return None, None


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _pick(flat: dict[str, Any], *names: str) -> Any:
    for name in names:
        for key, value in flat.items():
            if (key == name or key.endswith("." + name)) and value not in (None, ""):
                return value
    return None


def _table(rows: dict[str, Any], head: tuple[str, str]) -> str:
    lines = [f"| {head[0]} | {head[1]} |", "| --- | --- |"]
    for key, value in rows.items():
        shown = f"{value:.4g}" if isinstance(value, float) else json.dumps(value) if isinstance(value, list) else value
        lines.append(f"| {key} | {shown} |")
    return "\n".join(lines)


def model_info(folder: str | Path) -> dict:
    """merge.json of a merged folder, else run.json of a run folder: the name, base, method, steps, loss
    ({} for other folders)."""
    folder = Path(folder)
    for name in (MERGE_INFO, RUN_INFO):
        _, info = _read(folder, (name,))
        if isinstance(info, dict):
            return info
    return {}


def assistant_name(folder: str | Path) -> str | None:
    """The assistant's name as the model folder records it (merge.json / run.json / the report), or None."""
    folder = Path(folder)
    _, report = _read(folder, REPORT_JSON)
    name = model_info(folder).get("name") or (report.get("name") if isinstance(report, dict) else None)
    return str(name) if name else None


def model_card(folder: str | Path, *, name: str | None = None) -> str:
    """README.md text: YAML front matter for the hubs, then what the model is and how it was made.

    The title is ``name``, else the assistant's name the folder records, else the folder's name.
    """
    folder = Path(folder)
    info = model_info(folder)
    _, cfg = _read(folder, CONFIG_FILES)
    _, adapter = _read(folder, ("adapter_config.json",))
    _, model_cfg = _read(folder, ("config.json",))
    _, report = _read(folder, REPORT_JSON)
    _, report_md = _read(folder, REPORT_MD)
    flat = _flatten(cfg) if isinstance(cfg, dict) else {}
    adapter = adapter if isinstance(adapter, dict) else {}
    base = info.get("base_model") or _pick(flat, "model.base", "base_model", "model_name_or_path", "base") or \
        adapter.get("base_model_name_or_path")
    method = info.get("method") or _pick(flat, "quant.method", "method", "finetune_type") or \
        (str(adapter.get("peft_type", "")).lower() or None)
    dataset = _pick(flat, "data.train_file", "dataset", "train_file")
    name = name or assistant_name(folder) or folder.name
    llava = isinstance(model_cfg, dict) and model_cfg.get("model_type") == "llava"  # a multimodal model
    front: dict[str, Any] = {"library_name": "peft" if adapter else "transformers",
                             "pipeline_tag": "image-text-to-text" if llava else "text-generation",
                             "tags": ["myassistant", *([str(method)] if method else [])]}
    if base and _HUB_ID.match(str(base)):  # a local path is no Hub id: the table below still names it
        front["base_model"] = str(base)
    base, dataset = _public(base), _public(dataset)
    parts = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).strip(), "---", "", f"# {name}", ""]
    kind = "A LoRA adapter" if adapter else "A chat model"
    parts.append(f"{kind} fine-tuned with myassistant" + (f" from `{base}`" if base else "") + ".")
    facts = {"base model": base, "method": method, "data set": dataset,
             "architecture": (model_cfg or {}).get("model_type") if isinstance(model_cfg, dict) else None,
             "steps": info.get("steps"), "final loss": info.get("final_loss")}
    facts = {k: f"{v:.4g}" if isinstance(v, float) else f"`{v}`" for k, v in facts.items() if v not in (None, "")}
    if facts:
        parts += ["", _table(facts, ("", ""))]
    hyper = {k: _public(v) for k, v in flat.items() if k.split(".")[-1] not in _NOT_HYPER and not isinstance(v, dict)
             and k not in ("quant.method", "data.format") and v not in (None, "", []) and _applies(k, flat)}
    if not hyper and adapter:
        hyper = {k: adapter[k] for k in ("r", "lora_alpha", "lora_dropout", "target_modules") if k in adapter}
    if hyper:
        parts += ["", "## Hyper-parameters", "", _table(hyper, ("parameter", "value"))]
    if isinstance(report_md, str) and report_md.strip():
        own_heading = report_md.lstrip().startswith("## ")  # the report's Markdown titles itself
        parts += ["", *([] if own_heading else ["## Fine-tune report", ""]), _public_text(report_md.strip())]
    elif isinstance(report, dict):
        figures = {k: _public(v) for k, v in _flatten(report).items()
                   if isinstance(v, (int, float, str)) and len(str(v)) < 80}
        if figures:
            parts += ["", "## Fine-tune report", "", _table(figures, ("figure", "value"))]
    loader = ("from peft import AutoPeftModelForCausalLM", "AutoPeftModelForCausalLM") if adapter else \
        ("from transformers import AutoModelForCausalLM", "AutoModelForCausalLM")
    if llava:
        loader = ("from transformers import AutoModelForImageTextToText", "AutoModelForImageTextToText")
    tokenizer = "AutoProcessor" if llava else "AutoTokenizer"
    use = [loader[0], f"from transformers import {tokenizer}", *(["from PIL import Image"] if llava else []), "",
           'path = "PATH"  # a local clone of this repo: `assistant clone <this repo>` prints it',
           f"{'processor' if llava else 'tok'} = {tokenizer}.from_pretrained(path)",
           f"model = {loader[1]}.from_pretrained(path)"]
    if adapter and base and not _HUB_ID.match(str(base)):  # AutoPeft loads the base from where the config says
        use += [f"# the base model loads from the folder `{base}` (adapter_config.json) in the working folder;",
                "# or: model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), path)"]
    parts += ["", "## Use", "", "```python", *use, *(_USE_LLAVA if llava else _USE_TEXT), "```", ""]
    return "\n".join(parts)
