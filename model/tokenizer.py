"""Tokenizers: any HF tokenizer folder, or InternLM2's sentencepiece ``tokenizer.model``.

InternLM2 ships a sentencepiece BPE model (byte fallback, bos ``<s>`` = 1, eos ``</s>`` = 2) and
remote tokenizer classes we never execute. We read the model file ourselves (``model.spm``) and
build an equivalent ``tokenizers`` BPE, so the result is a plain fast tokenizer that
``AutoTokenizer`` loads again after ``save_pretrained``, with the chat template attached.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import generate_merges

from . import spm
from .templates import END_OF_TURN, INTERNLM2_CHAT, INTERNLM2_SPECIAL_TOKENS

log = logging.getLogger(__name__)


def tokenizer_from_spm(model_file: str | Path, tokenizer_config: dict | None = None) -> PreTrainedTokenizerFast:
    """Build a fast tokenizer equal to a sentencepiece BPE model, with InternLM2's special tokens."""
    proto = spm.load(model_file)
    if proto.model_type != spm.BPE:
        raise spm.SpmFormatError(f"{model_file}: only BPE sentencepiece models are supported (this one is type {proto.model_type})")
    cfg = tokenizer_config or {}
    special_types = (spm.CONTROL, spm.USER_DEFINED, spm.UNKNOWN)
    vocab = {p.text: i for i, p in enumerate(proto.pieces)}
    specials = {p.text for p in proto.pieces if p.type in special_types}
    byte_pieces = {p.text for p in proto.pieces if p.type == spm.BYTE}
    scores = {p.text: p.score for p in proto.pieces if p.text not in specials and p.text not in byte_pieces}
    merges = generate_merges(vocab, scores, skip_tokens=specials | byte_pieces)
    unk = next((p.text for p in proto.pieces if p.type == spm.UNKNOWN), None)

    backend = Tokenizer(models.BPE(vocab, merges, unk_token=unk, fuse_unk=True, byte_fallback=proto.byte_fallback))
    # Sentencepiece escapes spaces as U+2581 and, with add_dummy_prefix, prepends one to the text.
    steps = [normalizers.Precompiled(proto.precompiled_charsmap)] if proto.precompiled_charsmap else []
    if proto.remove_extra_whitespaces:
        steps += [normalizers.Replace(Regex(" {2,}"), " "), normalizers.Replace(Regex("^ +| +$"), "")]
    if proto.add_dummy_prefix:
        steps.append(normalizers.Prepend("▁"))
    backend.normalizer = normalizers.Sequence(steps + [normalizers.Replace(" ", "▁")])
    dec = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if proto.add_dummy_prefix:
        dec.append(decoders.Strip(" ", 1, 0))
    backend.decoder = decoders.Sequence(dec)

    bos = cfg.get("bos_token", "<s>")
    eos = cfg.get("eos_token", "</s>")
    extra = [t for t in cfg.get("additional_special_tokens", INTERNLM2_SPECIAL_TOKENS)]
    extra += [v["content"] for v in cfg.get("added_tokens_decoder", {}).values()
              if v.get("special") and v["content"] not in extra and v["content"] not in (bos, eos, unk)]
    if cfg.get("add_bos_token", True) and bos in vocab:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])]
        )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=eos,
        unk_token=unk,
        pad_token=cfg.get("pad_token", eos),
        additional_special_tokens=extra,
        clean_up_tokenization_spaces=False,
        chat_template=cfg.get("chat_template") or INTERNLM2_CHAT,
    )
    return tok


def _read_tokenizer_config(folder: Path) -> dict:
    path = folder / "tokenizer_config.json"
    if not path.exists():
        return {}
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        from .checkpoint import CheckpointError

        raise CheckpointError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None
    # Values that are dicts (older transformers) carry the text under "content".
    for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
        if isinstance(cfg.get(key), dict):
            cfg[key] = cfg[key]["content"]
    return cfg


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load the tokenizer of a model folder, never executing remote code; always with a chat template."""
    from .checkpoint import CheckpointError, check_not_lfs_pointer, not_there

    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(not_there(folder, "model folder"))
    cfg = _read_tokenizer_config(folder)
    spm_file = folder / "tokenizer.model"
    remote_class = bool(cfg.get("auto_map")) or cfg.get("tokenizer_class", "").startswith("InternLM2")
    if (folder / "tokenizer.json").exists() and not remote_class:
        check_not_lfs_pointer(folder / "tokenizer.json")
        tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    elif spm_file.exists():
        check_not_lfs_pointer(spm_file)
        try:
            tok = tokenizer_from_spm(spm_file, cfg)
        except spm.SpmFormatError as err:
            raise CheckpointError(f"{err}; the file is damaged or not a tokenizer — fetch it again") from None
    else:
        raise CheckpointError(
            f"{folder}: no tokenizer found (expected tokenizer.json or tokenizer.model); "
            "copy the tokenizer files of the base model into this folder"
        )
    if not tok.chat_template:
        log.warning("%s has no chat template; using internlm2_chat", folder)
        tok.chat_template = INTERNLM2_CHAT
    return tok


def stop_token_ids(tokenizer) -> list[int]:
    """Token ids that end an assistant turn: eos, plus <|im_end|> where the vocabulary has it."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    end = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    if end is not None and end != tokenizer.unk_token_id and end not in ids:
        ids.append(end)
    return ids
