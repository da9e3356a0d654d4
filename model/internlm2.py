"""InternLM2 ⇄ Llama: config and weight conversion, pure functions on dicts and tensors.

InternLM2 is a Llama with renamed weights and a fused ``wqkv``. Mapping it onto transformers' own
Llama modules at load time gives us sdpa/flash attention, static caches, ``generate``, peft and
kernel libraries for free; these functions also write the original layout back.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from transformers import LlamaConfig

_LAYER_RENAMES = {
    "attention.wo": "self_attn.o_proj",
    "feed_forward.w1": "mlp.gate_proj",
    "feed_forward.w3": "mlp.up_proj",
    "feed_forward.w2": "mlp.down_proj",
    "attention_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
_TOP_RENAMES = {
    "model.tok_embeddings.weight": "model.embed_tokens.weight",
    "model.norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_KEY = re.compile(r"^model\.layers\.(\d+)\.(.+)\.(weight|bias)$")


class ConversionError(ValueError):
    user_error = True


def _rope_parameters(cfg: dict) -> dict:
    theta = float(cfg.get("rope_theta", 10000.0))
    scaling = cfg.get("rope_scaling")
    if not scaling:
        return {"rope_type": "default", "rope_theta": theta}
    # The original code accepts exactly {"type", "factor"} with type linear or dynamic.
    kind = scaling.get("type") or scaling.get("rope_type")
    factor = scaling.get("factor")
    if kind not in ("linear", "dynamic") or not isinstance(factor, (int, float)) or factor < 1:
        raise ConversionError(
            f"rope_scaling {scaling!r} is not supported: InternLM2 allows "
            '{"type": "linear" or "dynamic", "factor": a number >= 1}'
        )
    return {"rope_type": kind, "factor": float(factor), "rope_theta": theta}


def llama_config_from_internlm2(cfg: dict) -> LlamaConfig:
    """The LlamaConfig that computes exactly what an InternLM2 config.json describes."""
    missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
               if k not in cfg]
    if missing:
        raise ConversionError(f"config.json lacks {', '.join(missing)}")
    heads = cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads") or heads
    if heads % kv_heads or cfg["hidden_size"] % heads:
        raise ConversionError(
            f"num_attention_heads {heads} must be a multiple of num_key_value_heads {kv_heads} "
            f"and divide hidden_size {cfg['hidden_size']}"
        )
    return LlamaConfig(
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        hidden_act=cfg.get("hidden_act", "silu"),
        max_position_embeddings=cfg.get("max_position_embeddings", 2048),
        rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
        rope_parameters=_rope_parameters(cfg),
        attention_bias=bool(cfg.get("bias", False)),
        mlp_bias=False,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        bos_token_id=cfg.get("bos_token_id", 1),
        eos_token_id=cfg.get("eos_token_id", 2),
        pad_token_id=cfg.get("pad_token_id", 2),
        dtype=cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16",
        architectures=["LlamaForCausalLM"],
    )


def internlm2_config_from_llama(cfg: LlamaConfig) -> dict:
    """config.json in the original InternLM2 layout (for writing that layout back)."""
    rope = dict(cfg.rope_parameters or {})
    kind = rope.get("rope_type", "default")
    dtype = cfg.dtype if isinstance(cfg.dtype, str) else str(cfg.dtype).removeprefix("torch.")
    return {
        "architectures": ["InternLM2ForCausalLM"],
        "model_type": "internlm2",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "hidden_act": cfg.hidden_act,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": rope.get("rope_theta", 10000.0),
        "rope_scaling": None if kind == "default" else {"type": kind, "factor": rope["factor"]},
        "bias": bool(cfg.attention_bias),
        "tie_word_embeddings": bool(cfg.tie_word_embeddings),
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
        "torch_dtype": dtype,
        "attn_implementation": "eager",
        "use_cache": True,
    }


def _split_wqkv(t: torch.Tensor, cfg: LlamaConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # Rows are grouped per kv head: [q × groups, k, v] for kv head 0, then kv head 1, …
    kv, head_dim = cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads
    groups = cfg.num_attention_heads // kv
    grouped = t.reshape(kv, groups + 2, head_dim, *t.shape[1:])
    q = grouped[:, :groups].reshape(-1, *t.shape[1:])
    k = grouped[:, -2].reshape(-1, *t.shape[1:])
    v = grouped[:, -1].reshape(-1, *t.shape[1:])
    return q, k, v


def _fuse_wqkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cfg: LlamaConfig) -> torch.Tensor:
    kv, head_dim = cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads
    groups = cfg.num_attention_heads // kv
    rest = q.shape[1:]
    parts = [
        q.reshape(kv, groups, head_dim, *rest),
        k.reshape(kv, 1, head_dim, *rest),
        v.reshape(kv, 1, head_dim, *rest),
    ]
    return torch.cat(parts, dim=1).reshape(-1, *rest)


def state_dict_to_llama(sd: dict[str, torch.Tensor], cfg: LlamaConfig) -> dict[str, torch.Tensor]:
    """Rename InternLM2 weights to Llama names and split every wqkv into q/k/v projections."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in sd.items():
        if key in _TOP_RENAMES:
            out[_TOP_RENAMES[key]] = tensor
            continue
        m = _LAYER_KEY.match(key)
        if not m:
            raise ConversionError(f"unexpected InternLM2 weight {key!r}")
        layer, name, kind = m.groups()
        prefix = f"model.layers.{layer}"
        if name == "attention.wqkv":
            for proj, part in zip(("q_proj", "k_proj", "v_proj"), _split_wqkv(tensor, cfg)):
                out[f"{prefix}.self_attn.{proj}.{kind}"] = part.contiguous()
        elif name in _LAYER_RENAMES:
            out[f"{prefix}.{_LAYER_RENAMES[name]}.{kind}"] = tensor
        else:
            raise ConversionError(f"unexpected InternLM2 weight {key!r}")
    return out


def state_dict_to_internlm2(sd: dict[str, torch.Tensor], cfg: LlamaConfig) -> dict[str, torch.Tensor]:
    """The inverse of ``state_dict_to_llama``."""
    top = {v: k for k, v in _TOP_RENAMES.items()}
    layer_names = {v: k for k, v in _LAYER_RENAMES.items()}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, tensor in sd.items():
        if key in top:
            out[top[key]] = tensor
            continue
        m = _LAYER_KEY.match(key)
        if not m:
            raise ConversionError(f"unexpected Llama weight {key!r}")
        layer, name, kind = m.groups()
        if name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
            qkv.setdefault((layer, kind), {})[name[-6]] = tensor
        elif name in layer_names:
            out[f"model.layers.{layer}.{layer_names[name]}.{kind}"] = tensor
        else:
            raise ConversionError(f"unexpected Llama weight {key!r}")
    for (layer, kind), parts in qkv.items():
        out[f"model.layers.{layer}.attention.wqkv.{kind}"] = _fuse_wqkv(parts["q"], parts["k"], parts["v"], cfg)
    return out


def carry_remote_code(release: Path, out: Path) -> list[str]:
    """Into ``out`` (an InternLM2-layout folder just written): the original release's remote code (its ``*.py``),
    ``tokenizer.model`` and the ``auto_map`` / ``tokenizer_class`` entries that point at them, so that the original
    code (XTuner, LMDeploy, OpenXLab's InternLM2 path: ``trust_remote_code=True``) loads the folder as it loads the
    release. Returns the names carried; none when the release has no remote code (its ``auto_map`` then stays out:
    it would name modules that are not there)."""
    code = sorted(p for p in release.glob("*.py") if p.is_file())
    carried = []
    for path in [*code, release / "tokenizer.model"]:
        if path.is_file():
            shutil.copyfile(path, out / path.name)
            carried.append(path.name)
    if not code:
        return carried
    for name, keys in (("config.json", ("auto_map",)), ("tokenizer_config.json", ("auto_map", "tokenizer_class"))):
        source, target = release / name, out / name
        if source.is_file() and target.is_file():
            given = json.loads(source.read_text(encoding="utf-8"))
            written = json.loads(target.read_text(encoding="utf-8"))
            written.update({k: given[k] for k in keys if k in given})
            target.write_text(json.dumps(written, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return carried
