"""Adapter + base -> standalone weights that plain ``AutoModelForCausalLM`` loads offline.

The base path comes from the run folder (``run_config.yaml``, through ``trainer.run_folder``) or the
adapter's ``adapter_config.json``, so a run folder is all ``merge`` needs. The base is reloaded
unquantised (a QLoRA adapter is merged into full-precision weights, never into 4-bit ones), merged with
peft's ``safe_merge`` and written through ``model.save_model``. The run's config and report go along
(``run_folder.CARRIED``) and ``merge.json`` records what was merged (name, base, method, steps), so the
model card of a push says how the model was made. The folder is written whole (merge.json, listing the
files and their sizes, with it) and renamed into place; a second identical call into a folder that still holds
every file merge.json lists says "already merged" and only refreshes the carried files, any other writes it again.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

import myassistant.model as model_layer
from myassistant.model import ADAPTER_CONFIG, ADAPTER_WEIGHTS, CheckpointError, file_sha256, load_adapter
from myassistant.trainer import run_folder
from myassistant.trainer.run_folder import MERGE_INFO_NAME

log = logging.getLogger(__name__)

# The merged model's generation_config.json: what the app and `assistant chat` sample with unless told
# otherwise. Cold: a fine-tune answers best near its training targets, and a small one turns to word
# salad at the usual 0.8 (top_k 0 = off, so top_p alone cuts the tail).
SERVE_SAMPLING = {"do_sample": True, "temperature": 0.3, "top_p": 0.8, "top_k": 0}


def read_source(source: Path) -> dict:
    """What to merge, from a run, checkpoint or adapter folder: ``load`` (the weights to load: the base, or a
    full fine-tune's own), ``adapter`` (None for a full fine-tune) and what ``merge.json`` records."""
    if not source.is_dir():
        raise CheckpointError(f"{source}: no such folder; pass a run folder written by `assistant train` or an adapter folder")
    cfg, info = run_folder.run_config(source), run_folder.run_info(source)
    facts = {"name": info.get("name"), "base_model": run_folder.base_model(source),
             "method": cfg.quant.method if cfg else "lora", "steps": info.get("steps"), "final_loss": info.get("final_loss")}
    if cfg is not None and cfg.vision.encoder:  # a multimodal (LLaVA) run: projector, + adapter after a finetune
        from myassistant.trainer.multimodal.merge import read_multimodal_source

        return read_multimodal_source(source, cfg, facts)
    if facts["method"] == "full":  # full fine-tune: the run folder holds the weights
        weights = [source / n for n in ("model.safetensors", "model.safetensors.index.json") if (source / n).exists()]
        if not weights:
            raise CheckpointError(f"{source}: full fine-tune run without model.safetensors; did the run finish?")
        return {"load": str(source), "adapter": None, "weights_sha256": file_sha256(weights[0]), **facts}
    if not (source / ADAPTER_CONFIG).exists() or not (source / ADAPTER_WEIGHTS).exists():
        raise CheckpointError(f"{source}: no {ADAPTER_CONFIG} + {ADAPTER_WEIGHTS}; pass the run folder of a finished "
                              "`assistant train` (or one of its checkpoint-N folders)")
    if not facts["base_model"]:
        raise CheckpointError(f"{source / ADAPTER_CONFIG}: no base_model_name_or_path and no "
                              f"{run_folder.RUN_CONFIG_NAME}; set base_model_name_or_path to the base model folder")
    return {"load": facts["base_model"], "adapter": str(source), "weights_sha256": file_sha256(source / ADAPTER_WEIGHTS),
            **facts}


def _check_finite(model: torch.nn.Module, where: Path) -> None:
    bad = [name for name, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise CheckpointError(f"{where}: merged weights are not finite in {len(bad)} tensors (first: {bad[0]}); "
                              "the adapter diverged during training — use an earlier checkpoint-N")


def merge(source: str | Path, out_dir: str | Path, *, layout: str = "llama", dtype: str = "bfloat16",
          max_shard_size: str | int = "2GB", base: str | Path | None = None) -> Path:
    """Merge the adapter of ``source`` (run or adapter folder) into its base; write ``out_dir``; return it.
    ``base``: the base model's folder where it is no longer where the run's config says (moved, another machine)."""
    source, out_dir = Path(source).resolve(), Path(out_dir)
    if dtype not in ("bfloat16", "float16", "float32"):
        raise CheckpointError(f"dtype {dtype!r} is not one of bfloat16, float16, float32")
    src = read_source(source)
    on_base = src["load"] != str(source)  # (a full fine-tune's weights are its own)
    if base is not None and on_base:
        src = {**src, "load": str(base), "base_model": str(base)}
    elif on_base and not Path(src["load"]).expanduser().exists():
        raise CheckpointError(f"{src['load']}: no such model folder: the base {source} was trained on, as its "
                              f"{run_folder.RUN_CONFIG_NAME} (or adapter_config.json) says; moved? give its folder "
                              "with --base DIR")
    info = {"source": str(source), **{k: v for k, v in src.items() if k not in ("load", "adapter")},
            "layout": layout, "dtype": dtype, "max_shard_size": str(max_shard_size).replace(" ", "").upper()}
    run, done = run_folder.run_root(source), out_dir / MERGE_INFO_NAME
    if _merged_already(out_dir, info, run):
        log.info("already merged: %s (from %s)", out_dir, source)
        previous = run_folder.read_json(done)
        carried = run_folder.carry(run, out_dir)  # a report written since the merge
        if carried != previous.get("carried"):
            run_folder.write_json(done, {**previous, "carried": carried})
        return out_dir

    # The merge runs in the output dtype: fp32 for exact checks, bf16 halves the memory of a 7B merge.
    torch_dtype = getattr(torch, dtype)
    if src.get("vision_encoder") and layout != "llama":
        raise CheckpointError(f"{source}: a multimodal run merges into a Llava folder; --layout {layout} is for text models")
    with model_layer.written_whole(out_dir) as stage:  # out_dir: the whole merge, merge.json with it, or as it was
        if src.get("vision_encoder"):
            from myassistant.trainer.multimodal.merge import trained_llava

            merged, processor = trained_llava(src, torch_dtype)
            _check_finite(merged, source)
            merged.generation_config.update(**SERVE_SAMPLING)
            model_layer.save_llava(merged, processor, stage, dtype=torch_dtype, max_shard_size=max_shard_size)
        else:
            _merge_text(src, source, stage, layout, torch_dtype, max_shard_size)
        info["files"] = {p.name: p.stat().st_size for p in sorted(stage.iterdir()) if p.is_file()}  # what is whole
        info["carried"] = run_folder.carry(run, stage)  # the run's config and report
        run_folder.write_json(stage / MERGE_INFO_NAME, info)
        _replaces_only_a_merge(out_dir, stage)
    if src.get("vision_encoder") and not src.get("adapter"):  # LLaVA stage 1: the projector is what it trained
        log.info("merged %s (its projector) with its base %s and encoder %s -> %s (Llava, %s)", source, src["load"],
                 src["vision_encoder"], out_dir, dtype)
    elif src.get("adapter"):
        log.info("merged %s with its base %s -> %s (%s layout, %s)", source, src["load"], out_dir, layout, dtype)
    else:  # a full fine-tune's weights: nothing to merge, only written in the chosen layout
        log.info("wrote %s -> %s (%s layout, %s; a full fine-tune: no adapter to merge)", src["load"], out_dir, layout,
                 dtype)
    return out_dir


SAME_MERGE = ("weights_sha256", "layout", "dtype", "max_shard_size")  # merge.json's keys that decide the files


def _merged_already(out_dir: Path, info: dict, run: Path) -> bool:
    """Whether ``out_dir`` holds this very merge whole: its merge.json's SAME_MERGE keys are ``info``'s and each file
    it lists is there at its size. Otherwise says why it is written again; refuses a folder that is no merge output
    (or the run itself)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise CheckpointError(f"--out {out_dir}: is a file; name a folder to write the merged model in")
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return False
    done = out_dir / MERGE_INFO_NAME
    if not done.is_file():
        saved, ours = out_dir / run_folder.RUN_CONFIG_NAME, run / run_folder.RUN_CONFIG_NAME
        if out_dir.resolve() == run or not (saved.is_file() and ours.is_file() and saved.read_bytes() == ours.read_bytes()):
            raise CheckpointError(f"{out_dir}: exists and is not a merge output (no {MERGE_INFO_NAME}); choose "
                                  "another --out or remove it")
        log.warning("%s: a merge of %s without its %s: merging again", out_dir, run, MERGE_INFO_NAME)
        return False
    try:
        previous = run_folder.read_json(done)
    except ValueError as err:
        log.warning("%s: damaged (%s): merging again", done, err)
        return False
    files = previous.get("files") if isinstance(previous, dict) else None
    if not isinstance(files, dict) or not files:
        log.warning("%s: lists no files to check the merge by (an older merge): merging again", done)
        return False
    for name, size in files.items():
        path = out_dir / name
        if not path.is_file() or path.stat().st_size != size:
            log.warning("%s: %s (%s lists %s bytes): merging again", out_dir, f"{name} is missing" if not path.is_file()
                        else f"{name} is {path.stat().st_size} bytes", MERGE_INFO_NAME, size)
            return False
    changed = [f"{key} {previous.get(key)} -> {info[key]}" for key in SAME_MERGE if previous.get(key) != info[key]]
    if changed:
        log.info("%s: merged with other settings (%s): merging again", out_dir, ", ".join(changed))
    return not changed


def _replaces_only_a_merge(out_dir: Path, stage: Path) -> None:
    """A merge that lost its merge.json is replaced only when it holds nothing the new merge does not write."""
    if not out_dir.is_dir() or (out_dir / MERGE_INFO_NAME).is_file():
        return
    extra = sorted({p.name for p in out_dir.iterdir()} - {p.name for p in stage.iterdir()})
    if extra:
        raise CheckpointError(f"{out_dir}: holds {extra[0]}, which a merge does not write, and no {MERGE_INFO_NAME}; "
                              "choose another --out or remove it")


def _merge_text(src: dict, source: Path, out_dir: Path, layout: str, torch_dtype, max_shard_size) -> None:
    base = model_layer.load_model(src["load"], dtype=torch_dtype)
    tokenizer = model_layer.load_tokenizer(src["load"])
    if src["adapter"] is None:
        merged = base
    else:
        merged = load_adapter(base, Path(src["adapter"])).merge_and_unload(safe_merge=True)
    _check_finite(merged, source)
    merged.generation_config.update(**SERVE_SAMPLING)
    model_layer.save_model(merged, tokenizer, out_dir, layout=layout, dtype=torch_dtype, max_shard_size=max_shard_size,
                           release=src["base_model"] or src["load"])  # the original download: its remote code
