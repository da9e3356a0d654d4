"""Load and save model folders of any family; InternLM2 is mapped onto transformers' Llama.

Every file problem a user can meet (no config, unknown type, missing or truncated shards, git-lfs
pointer files where weights should be) becomes one ``CheckpointError`` line naming the file and
what to do, checked before anything is handed to torch.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from transformers import CONFIG_MAPPING, AutoModelForCausalLM, LlamaForCausalLM, PreTrainedModel

from . import internlm2
from .tokenizer import stop_token_ids

log = logging.getLogger(__name__)

LFS_POINTER_PREFIX = b"version https://git-lfs"
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")
ADAPTER_CONFIG = "adapter_config.json"  # a peft LoRA adapter folder, as training writes it
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MERGE_INFO = "merge.json"  # what `assistant merge` made a folder from (trainer.merge), the merged weights' sha256 too


class CheckpointError(ValueError):
    user_error = True


def check_not_lfs_pointer(path: Path) -> None:
    with open(path, "rb") as fh:
        head = fh.read(len(LFS_POINTER_PREFIX))
    if head == LFS_POINTER_PREFIX:
        raise CheckpointError(
            f"{path} is a git-lfs pointer file, not the real content: run `git lfs pull` in "
            f"{path.parent} (install git-lfs first: apt-get install git-lfs)"
        )


def not_there(path: Path, what: str) -> str:
    """"PATH: no such WHAT", saying which folder a relative path was read from (a config's paths are read from where
    the command runs, not from the config's own folder)."""
    return f"{path}: no such {what}" + ("" if path.is_absolute() else f" (read from the working folder {Path.cwd()})")


def read_config(path: str | Path) -> dict:
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(not_there(folder, "model folder"))
    cfg_file = folder / "config.json"
    if not cfg_file.exists():
        raise CheckpointError(f"{folder}: no config.json — is this a model folder? (a merged model or base checkpoint)")
    check_not_lfs_pointer(cfg_file)
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{cfg_file}:{err.lineno}: invalid JSON ({err.msg})") from None
    if "model_type" not in cfg:
        raise CheckpointError(f"{cfg_file}: no model_type field")
    mt = cfg["model_type"]
    if mt != "internlm2" and mt not in CONFIG_MAPPING:
        raise CheckpointError(
            f"{cfg_file}: unknown model_type {mt!r}; supported: internlm2 and the transformers "
            "families (llama, qwen2, mistral, …); remote code is never executed"
        )
    return cfg


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a folder, checked to exist and to hold real content."""
    for index_name in INDEX_FILES:
        index = folder / index_name
        if index.exists():
            check_not_lfs_pointer(index)
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (json.JSONDecodeError, KeyError) as err:
                raise CheckpointError(f"{index}: not a valid shard index ({err})") from None
            missing = [s for s in shards if not (folder / s).exists()]
            if missing:
                raise CheckpointError(
                    f"{folder}: missing weight shards {', '.join(missing)} listed in {index_name}; download them again"
                )
            files = [folder / s for s in shards]
            break
    else:
        files = [folder / name for name in SINGLE_FILES if (folder / name).exists()][:1]
    if not files:
        raise CheckpointError(f"{folder}: no weights (model.safetensors, pytorch_model.bin or a sharded index)")
    for f in files:
        check_not_lfs_pointer(f)
    return files


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as fh:
                return {k: fh.get_tensor(k) for k in fh.keys()}
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (SafetensorError, RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"{path}: cannot read weights, the file is truncated or damaged ({err}); download it again") from None


def load_state_dict(folder: str | Path) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    for f in weight_files(Path(folder)):
        sd.update(_read_weights(f))
    return sd


def _check_against_model(sd: dict[str, torch.Tensor], model_cls, config, folder: Path) -> None:
    # Like nanoGPT's from_pretrained: compare names and shapes before anything is copied.
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in model_cls(config).state_dict().items()}
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    wrong = [f"{k} {tuple(sd[k].shape)} != {expected[k]}" for k in expected if k in sd and tuple(sd[k].shape) != expected[k]]
    if missing or unexpected or wrong:
        parts = [f"missing {missing[:5]}" if missing else "", f"unexpected {unexpected[:5]}" if unexpected else "",
                 f"wrong shapes {wrong[:5]}" if wrong else ""]
        raise CheckpointError(f"{folder}: weights do not match config.json: " + "; ".join(p for p in parts if p))


def _resolve_dtype(dtype, cfg: dict):
    if dtype in (None, "auto"):
        dtype = cfg.get("torch_dtype") or cfg.get("dtype") or "float32"
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


def load_model(path: str | Path, *, dtype=None, device=None, **kwargs) -> PreTrainedModel:
    """Load any supported checkpoint folder without remote code; InternLM2 becomes LlamaForCausalLM.

    ``dtype`` None keeps the checkpoint's; ``device`` is a device or device_map; other keyword
    arguments (``quantization_config``, ``attn_implementation``) go to ``from_pretrained``.
    """
    folder = Path(path)
    cfg = read_config(folder)
    torch_dtype = _resolve_dtype(dtype, cfg)
    kwargs.setdefault("attn_implementation", "sdpa")
    files = weight_files(folder)
    if cfg["model_type"] == "internlm2":
        try:
            llama_cfg = internlm2.llama_config_from_internlm2(cfg)
            sd = internlm2.state_dict_to_llama(load_state_dict(folder), llama_cfg)
        except internlm2.ConversionError as err:
            raise CheckpointError(f"{folder / 'config.json'}: {err}") from None
        _check_against_model(sd, LlamaForCausalLM, llama_cfg, folder)
        model = LlamaForCausalLM.from_pretrained(
            None, config=llama_cfg, state_dict=sd, dtype=torch_dtype, device_map=device, **kwargs
        )
    else:
        for f in files:  # opening each shard once catches truncation before transformers does
            if f.suffix == ".safetensors":
                _read_header(f)
        model = AutoModelForCausalLM.from_pretrained(
            str(folder), dtype=torch_dtype, device_map=device, trust_remote_code=False, **kwargs
        )
    gen_file = folder / "generation_config.json"
    if gen_file.exists():
        gen = json.loads(gen_file.read_text())
        for key in ("eos_token_id", "bos_token_id", "pad_token_id"):
            if key in gen:
                setattr(model.generation_config, key, gen[key])
    model.eval()
    return model


def _read_header(path: Path) -> None:
    try:
        with safe_open(str(path), framework="pt") as fh:
            fh.keys()
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path}: cannot read weights, the file is truncated or damaged ({err}); download it again") from None


@contextlib.contextmanager
def written_whole(out_dir: Path) -> Iterator[Path]:
    """A temporary sibling folder to write ``out_dir``'s files into: renamed into its place (an existing folder
    replaced) when the block ends, removed when it raises, so ``out_dir`` is complete or as it was. A file at
    ``out_dir`` is refused, not replaced."""
    if out_dir.exists() and not out_dir.is_dir():
        raise CheckpointError(f"{out_dir}: is a file, not a folder; name a folder to write the model in")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        yield tmp
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _readable_by_all(folder: Path) -> None:
    """mkdtemp makes the folder 0700 and safetensors writes 0600: give the folder and its files the modes
    any new file gets (0755 / 0644 under the usual umask), so another user or a container can serve them."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    _readable_by_all(tmp)
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old)
    else:
        tmp.rename(out_dir)


def save_state_dict_sharded(sd: dict[str, torch.Tensor], folder: Path, max_shard_size: str | int = "2GB") -> None:
    split = split_torch_state_dict_into_shards(sd, max_shard_size=max_shard_size)
    for filename, names in split.filename_to_tensors.items():
        save_file({n: sd[n].contiguous() for n in names}, str(folder / filename), metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def save_model(model: PreTrainedModel, tokenizer, out_dir: str | Path, *, layout: str = "llama",
               dtype=None, max_shard_size: str | int = "2GB", release: str | Path | None = None) -> Path:
    """Write a standalone model folder: safetensors weights, config, tokenizer, generation config.

    ``layout="llama"`` is loadable by plain ``AutoModelForCausalLM``; ``"internlm2"`` writes the
    original InternLM2 key names and config, with the remote code, ``tokenizer.model`` and ``auto_map`` of
    ``release`` (the original download it was trained from) when it has them, so that the original code loads it
    too. The folder appears complete or not at all.
    """
    if layout not in ("llama", "internlm2"):
        raise CheckpointError(f"layout {layout!r} is not one of: llama, internlm2")
    out_dir = Path(out_dir)
    torch_dtype = _resolve_dtype(dtype, {"torch_dtype": str(model.dtype).removeprefix("torch.")})
    sd = {k: v.detach().to("cpu", torch_dtype) for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)
    with written_whole(out_dir) as tmp:
        config = model.config.__class__.from_dict(model.config.to_dict())
        config.dtype = torch_dtype
        if layout == "llama":
            save_state_dict_sharded(sd, tmp, max_shard_size)
            config.save_pretrained(tmp)
        else:
            if config.model_type != "llama":
                raise CheckpointError(f"layout internlm2 needs a Llama-layout model, got {config.model_type}")
            save_state_dict_sharded(internlm2.state_dict_to_internlm2(sd, config), tmp, max_shard_size)
            (tmp / "config.json").write_text(json.dumps(internlm2.internlm2_config_from_llama(config), indent=2))
        gen = model.generation_config
        gen.eos_token_id = stop_token_ids(tokenizer) or gen.eos_token_id
        gen.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if layout == "internlm2":
            carried = internlm2.carry_remote_code(Path(release), tmp) if release else []
            if not any(name.endswith(".py") for name in carried):
                log.warning("%s: InternLM2 key layout without InternLM2's remote code (modeling_internlm2.py ...: "
                            "not in %s); this project loads it, and the original code once those files are copied in",
                            out_dir, release or "the model")
    log.info("saved %s layout (%s) to %s", layout, str(torch_dtype).removeprefix("torch."), out_dir)
    return out_dir


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes (a merged folder's merge.json records its adapter's)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_adapter(base: torch.nn.Module, adapter_dir: str | Path):
    """``base`` with the LoRA adapter of ``adapter_dir`` (a peft PeftModel), after checking that every
    saved tensor found its layer."""
    import peft  # only adapter users pay for the import

    adapter_dir = Path(adapter_dir)
    try:
        model = peft.PeftModel.from_pretrained(base, str(adapter_dir))
    except (RuntimeError, ValueError) as err:  # shape mismatch / target modules missing
        raise CheckpointError(f"{adapter_dir}: adapter does not fit its base model ({str(err).splitlines()[0]}); "
                              "was it trained on a different base?") from err
    weights = adapter_dir / ADAPTER_WEIGHTS
    if weights.exists():  # an older peft's adapter_model.bin loads unchecked
        with safe_open(str(weights), framework="pt") as f:
            saved = sum("lora_" in k for k in f.keys())  # modules_to_save copies (a Llava's projector) aside
        loaded = sum(1 for name, _ in model.named_parameters() if "lora_" in name)
        if saved != loaded:
            raise CheckpointError(f"{weights}: holds {saved} tensors but the base has {loaded} "
                                  "LoRA parameters for it; was it trained on a different base?")
    return model
