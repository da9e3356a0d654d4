"""A model folder -> one GGUF file that llama.cpp, Ollama and LM Studio run.

Weights are read through `model.load_model` (InternLM2 folders arrive as transformers' Llama), named
by llama.cpp's own table (`gguf.get_tensor_name_map`) and written by llama.cpp's own writer (the
`gguf` package). Two things differ from the transformers layout and are done here:
- q and k projections are permuted back to the interleaved rotary order llama.cpp's "llama"
  architecture expects (transformers rotates halves: rows of each head are [evens..., odds...]);
- 1-D tensors (norms, biases) stay float32, as llama.cpp's converter keeps them.
f16 and q8_0/q4_0 blocks are made by the `gguf` package (llama.cpp's reference quantisers in numpy);
the k-quant q4_k_m needs llama.cpp's own quantiser (`export.quantize`).
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch

from myassistant.export.modelfile import modelfile_path, sampling_of, write_modelfile
from myassistant.export.quantize import llama_cpp_quantize, require_quantiser
from myassistant.export.vocab import vocab_from_tokenizer, write_vocab
from myassistant.hub.card import assistant_name
from myassistant.model import ADAPTER_CONFIG, CheckpointError, load_model, load_tokenizer, read_config

log = logging.getLogger(__name__)

# quant -> (how 2-D weights are stored, llama.cpp's file type, what --help says)
QUANTS: dict[str, tuple[str, gguf.LlamaFileType, str]] = {
    "f16": ("F16", gguf.LlamaFileType.MOSTLY_F16, "16-bit floats: exact to the bf16/fp16 weights (~2 bytes/weight)"),
    "q8_0": ("Q8_0", gguf.LlamaFileType.MOSTLY_Q8_0, "8-bit blocks of 32: near-lossless (~1.06 bytes/weight)"),
    "q4_0": ("Q4_0", gguf.LlamaFileType.MOSTLY_Q4_0,
             "4-bit blocks of 32, output layer in q8_0: small, some quality loss (~0.6 bytes/weight)"),
    "q4_k_m": ("F16", gguf.LlamaFileType.MOSTLY_Q4_K_M,
               "llama.cpp's k-quant mix (4/6-bit), the usual laptop pick; needs llama-cpp-python installed"),
}
LAYOUTS = ("llama", "internlm2")  # model_type values whose weights map onto llama.cpp's "llama" architecture


class ExportError(ValueError):
    user_error = True


@dataclass
class ExportResult:
    gguf: Path
    quant: str
    tensors: int
    bytes: int


def check_source(folder: Path) -> dict:
    """The folder's config, after refusing what cannot be exported (adapters, other layouts)."""
    if folder.is_dir() and (folder / ADAPTER_CONFIG).exists() and not (folder / "config.json").exists():
        raise ExportError(f"{folder}: a LoRA adapter / training run folder, not a model; merge first: "
                          f"`assistant merge {folder} --out MERGED_DIR`, then export MERGED_DIR")
    try:
        cfg = read_config(folder)
    except CheckpointError as err:
        raise ExportError(str(err)) from None
    if cfg["model_type"] == "llava":
        raise ExportError(f"{folder}: a multimodal (Llava) model; GGUF export writes text models (llama.cpp runs a "
                          "picture model as two files, the LLM and its vision projector, which this does not write)")
    if cfg["model_type"] not in LAYOUTS:
        raise ExportError(f"{folder / 'config.json'}: model_type {cfg['model_type']!r} is not a Llama-layout model; "
                          f"GGUF export supports {', '.join(LAYOUTS)}")
    return cfg


def interleave_rotary(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """transformers' rotate-half row order -> the interleaved order of llama.cpp (per head)."""
    rest = weight.shape[1:]
    return weight.reshape(heads, 2, weight.shape[0] // heads // 2, *rest).transpose(1, 2).reshape(weight.shape)


def llama_cpp_tensors(model) -> Iterator[tuple[str, torch.Tensor]]:
    """(GGUF name, float32 tensor) for every weight of a transformers ``LlamaForCausalLM``."""
    cfg = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    state = model.state_dict()
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # llama.cpp uses token_embd when output is absent
    for key, tensor in state.items():
        if key.endswith("rotary_emb.inv_freq"):
            continue
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ExportError(f"weight {key!r} has no llama.cpp name; the model is not plain Llama layout")
        tensor = tensor.detach().float()
        if key.endswith(("q_proj.weight", "q_proj.bias")):
            tensor = interleave_rotary(tensor, cfg.num_attention_heads)
        elif key.endswith(("k_proj.weight", "k_proj.bias")):
            tensor = interleave_rotary(tensor, cfg.num_key_value_heads)
        yield name, tensor


def storage_type(name: str, tensor: torch.Tensor, quant: str) -> gguf.GGMLQuantizationType:
    kind = QUANTS[quant][0]
    if tensor.ndim == 1:
        return gguf.GGMLQuantizationType.F32
    if kind == "Q4_0" and name == "output.weight":
        kind = "Q8_0"
    qtype = gguf.GGMLQuantizationType[kind]
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if tensor.shape[-1] % block:  # rows that do not split into blocks stay f16, as llama.cpp does
        return gguf.GGMLQuantizationType.F16
    return qtype


def write_hparams(writer: gguf.GGUFWriter, cfg, name: str, file_type: gguf.LlamaFileType) -> None:
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    writer.add_name(name)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    rope = dict(getattr(cfg, "rope_parameters", None) or {})
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))))
    kind = rope.get("rope_type", "default")
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    elif kind == "dynamic":  # dynamic NTK changes nothing inside max_position_embeddings, where llama.cpp stays
        log.warning("dynamic rope scaling is not in GGUF; exported without it (exact up to %d tokens)",
                    cfg.max_position_embeddings)
    elif kind != "default":
        raise ExportError(f"rope scaling {kind!r} is not supported by the GGUF export")
    writer.add_file_type(int(file_type))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _encode(tensor: torch.Tensor, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    data = tensor.numpy()
    if qtype == gguf.GGMLQuantizationType.F32:
        return data
    if qtype == gguf.GGMLQuantizationType.F16:
        return data.astype(np.float16)
    return gguf.quants.quantize(data, qtype)


def _nbytes(shape: tuple[int, ...], qtype: gguf.GGMLQuantizationType) -> int:
    if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        return int(np.prod(shape)) * (4 if qtype == gguf.GGMLQuantizationType.F32 else 2)
    return int(np.prod(gguf.quant_shape_to_byte_shape(shape, qtype)))


def write_gguf(model, tokenizer, path: Path, quant: str, name: str) -> int:
    """Write the GGUF file at `path` (weights as `quant` asks, q4_k_m as f16); returns the tensor count.

    Tensors are converted one at a time as they are written (the header first lists their sizes), so
    the peak memory is the model plus one tensor, not the model plus the whole file.
    """
    kind, file_type, _ = QUANTS[quant]
    if kind == "F16" and quant != "f16":
        file_type = gguf.LlamaFileType.MOSTLY_F16  # the input of llama.cpp's quantiser
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    write_hparams(writer, model.config, name, file_type)
    write_vocab(writer, vocab_from_tokenizer(tokenizer, model.config.vocab_size, name))
    count = 0
    for tensor_name, tensor in llama_cpp_tensors(model):
        qtype = storage_type(tensor_name, tensor, quant)
        writer.add_tensor_info(tensor_name, tuple(tensor.shape), np.dtype(np.float32),
                               _nbytes(tuple(tensor.shape), qtype), raw_dtype=qtype)
        count += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor_name, tensor in llama_cpp_tensors(model):
        writer.write_tensor_data(_encode(tensor, storage_type(tensor_name, tensor, quant)))
    writer.close()
    return count


def save_gguf(model, tokenizer, out: Path, quant: str, name: str, sampling: dict | None = None) -> int:
    """Write a loaded ``LlamaForCausalLM`` + tokenizer as the GGUF `out` (temporary sibling, then renamed)
    and its Modelfile (`sampling`: the model's parameters, `modelfile.sampling_of`); returns the tensor count."""
    made = [p for p in out.absolute().parents if not p.exists()]  # innermost first: removed again on a failure
    there = next(p for p in out.absolute().parents if p.exists())  # where they are made (its free space said)
    out.parent.mkdir(parents=True, exist_ok=True)
    num_ctx = min(model.config.max_position_embeddings, 4096)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    staged = tmp.with_suffix(".f16.tmp")
    try:
        with torch.inference_mode():
            if QUANTS[quant][0] == "F16" and quant != "f16":  # a k-quant: llama.cpp quantises an f16 file
                count = write_gguf(model, tokenizer, staged, quant, name)
                llama_cpp_quantize(staged, tmp, QUANTS[quant][1])
            else:
                count = write_gguf(model, tokenizer, tmp, quant, name)
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)  # mkstemp made it private; a model file is as readable as any other
        tmp.replace(out)
    except BaseException as err:
        for path in (tmp, staged):
            path.unlink(missing_ok=True)
        for folder in made:
            with contextlib.suppress(OSError):
                folder.rmdir()
        if isinstance(err, OSError):  # numpy's short write on a full disk says so without an errno
            free = shutil.disk_usage(there).free
            raise ExportError(f"--out {out}: writing failed ({err.strerror or err}); {free / 2**20:.0f} MiB free "
                              "there (a full disk?)") from None
        raise
    write_modelfile(out, tokenizer, num_ctx, sampling)
    return count


def check_writable(out: Path) -> None:
    """Refuse, before any work, an `out` that cannot be written: a folder at its name or its Modelfile's, a parent
    that is a file, a place the file system does not let us write."""
    for path in (out, modelfile_path(out)):
        if path.is_dir():
            raise ExportError(f"--out {out}: {path} is a folder; name the .gguf file to write")
    parent = next(p for p in out.absolute().parents if p.exists())
    if not parent.is_dir():
        raise ExportError(f"--out {out}: {parent} is a file, not a folder")
    try:  # where the folders to make would go (they are made when the file is written: a refusal leaves none)
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as err:
        raise ExportError(f"--out {out}: cannot write there ({err.strerror})") from None


def export_gguf(model_dir: str | Path, out: str | Path, quant: str = "q8_0", name: str | None = None) -> ExportResult:
    """`model_dir` (InternLM2 or Llama layout, merged) -> the GGUF file `out` and an Ollama Modelfile beside it.

    The file appears complete or not at all. `name` (general.name, which llama.cpp and LM Studio show): default the
    assistant's name the merged folder records, else the folder's name.
    """
    if quant not in QUANTS:
        raise ExportError(f"--quant {quant!r} is not one of {', '.join(QUANTS)}")
    if str(out).endswith(("/", "\\")) or (Path(out).expanduser().is_dir() and Path(out).suffix.lower() != ".gguf"):
        raise ExportError(f"--out {out}: a folder; give the .gguf file to write in it, e.g. "
                          f"{Path(out) / (Path(model_dir).name + '-' + quant + '.gguf')}")
    folder, out = Path(model_dir).expanduser(), Path(out).expanduser()
    if folder.is_file():
        raise ExportError(f"{folder} is a file: give the model's folder (the one with config.json)")
    check_source(folder)
    if out.suffix.lower() != ".gguf":
        raise ExportError(f"{out}: the output file should end in .gguf")
    check_writable(out)
    if QUANTS[quant][0] == "F16" and quant != "f16":  # a k-quant: llama.cpp's quantiser, checked before the work
        require_quantiser()
    try:
        tokenizer = load_tokenizer(folder)
        model = load_model(folder, dtype=torch.float32)
    except CheckpointError as err:
        raise ExportError(str(err)) from None
    if type(model).__name__ != "LlamaForCausalLM":
        raise ExportError(f"{folder}: loads as {type(model).__name__}, not a Llama-layout model")
    if out.exists():
        log.info("replacing %s", out)
    count = save_gguf(model, tokenizer, out, quant, name or assistant_name(folder) or folder.name, sampling_of(folder))
    size = out.stat().st_size
    log.info("wrote %s (%s, %d tensors, %.1f MiB)", out, quant, count, size / 2**20)
    return ExportResult(gguf=out, quant=quant, tensors=count, bytes=size)
