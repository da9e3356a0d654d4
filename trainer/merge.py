"""Adapter + base -> standalone weights that plain ``AutoModelForCausalLM`` loads offline.

The base path comes from the run folder (``run.json``) or the adapter's ``adapter_config.json``, so a
run folder is all ``merge`` needs. The base is reloaded unquantised (a QLoRA adapter is merged into
full-precision weights, never into 4-bit ones), merged with peft's ``safe_merge`` and written through
``model.save_model``. ``merge.json`` in the output records what was merged; a second identical call
says "already merged" and does nothing.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

import myassistant.model as model_layer
from myassistant.model import ADAPTER_CONFIG, ADAPTER_WEIGHTS, CheckpointError, load_adapter

log = logging.getLogger(__name__)

MERGE_INFO_NAME = "merge.json"
RUN_INFO_NAME = "run.json"  # written by trainer.train


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_source(source: Path) -> dict:
    """What to merge: base path, and the adapter file or the full-weights folder, from a run or adapter folder."""
    if not source.is_dir():
        raise CheckpointError(f"{source}: no such folder; pass a run folder written by `assistant train` or an adapter folder")
    run = json.loads((source / RUN_INFO_NAME).read_text()) if (source / RUN_INFO_NAME).exists() else {}
    if run and not run.get("adapter", True):  # full fine-tune: the run folder holds the weights
        weights = [source / n for n in ("model.safetensors", "model.safetensors.index.json") if (source / n).exists()]
        if not weights:
            raise CheckpointError(f"{source}: full fine-tune run without model.safetensors; did the run finish?")
        return {"base": str(source), "adapter": None, "weights_sha256": _sha256(weights[0]), "run": run}
    if not (source / ADAPTER_CONFIG).exists() or not (source / ADAPTER_WEIGHTS).exists():
        raise CheckpointError(f"{source}: no {ADAPTER_CONFIG} + {ADAPTER_WEIGHTS}; pass the run folder of a finished "
                              "`assistant train` (or one of its checkpoint-N folders)")
    adapter_cfg = json.loads((source / ADAPTER_CONFIG).read_text())
    base = run.get("base_model") or adapter_cfg.get("base_model_name_or_path")
    if not base:
        raise CheckpointError(f"{source / ADAPTER_CONFIG}: no base_model_name_or_path and no {RUN_INFO_NAME}; "
                              "set base_model_name_or_path to the base model folder")
    return {"base": base, "adapter": str(source), "weights_sha256": _sha256(source / ADAPTER_WEIGHTS), "run": run}


def _check_finite(model: torch.nn.Module, where: Path) -> None:
    bad = [name for name, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise CheckpointError(f"{where}: merged weights are not finite in {len(bad)} tensors (first: {bad[0]}); "
                              "the adapter diverged during training — use an earlier checkpoint-N")


def merge(source: str | Path, out_dir: str | Path, *, layout: str = "llama", dtype: str = "bfloat16",
          max_shard_size: str | int = "2GB") -> Path:
    """Merge the adapter of ``source`` (run or adapter folder) into its base; write ``out_dir``; return it."""
    source, out_dir = Path(source).resolve(), Path(out_dir)
    if dtype not in ("bfloat16", "float16", "float32"):
        raise CheckpointError(f"dtype {dtype!r} is not one of bfloat16, float16, float32")
    src = read_source(source)
    info = {"source": str(source), "base_model": src["base"], "weights_sha256": src["weights_sha256"],
            "layout": layout, "dtype": dtype, "method": src["run"].get("method", "lora"),
            "steps": src["run"].get("steps"), "final_loss": src["run"].get("final_loss")}
    done = out_dir / MERGE_INFO_NAME
    if done.exists():
        previous = json.loads(done.read_text())
        if all(previous.get(k) == info[k] for k in ("weights_sha256", "layout", "dtype")):
            log.info("already merged: %s (from %s)", out_dir, source)
            return out_dir
    if out_dir.exists() and any(out_dir.iterdir()) and not done.exists():
        raise CheckpointError(f"{out_dir}: exists and is not a merge output; choose another --out or remove it")

    # The merge runs in the output dtype: fp32 for exact checks, bf16 halves the memory of a 7B merge.
    torch_dtype = getattr(torch, dtype)
    base = model_layer.load_model(src["base"], dtype=torch_dtype)
    tokenizer = model_layer.load_tokenizer(src["base"])
    if src["adapter"] is None:
        merged = base
    else:
        merged = load_adapter(base, Path(src["adapter"])).merge_and_unload(safe_merge=True)
    _check_finite(merged, source)
    model_layer.save_model(merged, tokenizer, out_dir, layout=layout, dtype=torch_dtype, max_shard_size=max_shard_size)
    tmp = done.with_name(MERGE_INFO_NAME + ".tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    tmp.replace(done)
    log.info("merged %s into %s -> %s (%s layout, %s)", source, src["base"], out_dir, layout, dtype)
    return out_dir
