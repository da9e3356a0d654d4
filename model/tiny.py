"""Tiny InternLM2-format checkpoints, made locally: for tests and the offline demo.

The folder looks like a real InternLM2 download (original key names, fused ``wqkv``, remote-code
``auto_map`` entries we must ignore, a sentencepiece BPE ``tokenizer.model`` with byte fallback and
the six special tokens), only small. Nothing ever comes from a hub.
"""
from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

from . import internlm2, spm
from .checkpoint import CheckpointError, written_whole
from .templates import INTERNLM2_CHAT, INTERNLM2_SPECIAL_TOKENS

_EN = [
    "Hello! How can I help you today?", "What is the weather like tomorrow?",
    "Please write a short poem about the sea.", "Who are you and who made you?",
    "Explain how a neural network learns from data.", "I like reading books in the evening.",
    "The quick brown fox jumps over the lazy dog.", "Can you recommend a good movie?",
    "Python is a popular programming language.", "Thank you very much for your help.",
    "Tell me a joke about cats.", "How do I cook rice?", "My name is Alice, nice to meet you.",
    "Translate this sentence into Chinese.", "What time is it now?", "Good morning, everyone!",
]
_ZH = [
    "你好！今天有什么可以帮你的吗？", "你是谁？请介绍一下你自己。", "明天的天气怎么样？",
    "请写一首关于大海的短诗。", "神经网络是如何从数据中学习的？", "我喜欢在晚上读书。",
    "谢谢你的帮助。", "给我讲一个关于猫的笑话。", "怎么煮米饭？", "我叫小明，很高兴认识你。",
    "请把这句话翻译成英文。", "现在几点了？", "大家早上好！", "我是你的助手，由开发者训练。",
]


def default_corpus() -> list[str]:
    """A small zh+en text: enough to train a BPE that covers ASCII and common Chinese."""
    lines = _EN + _ZH
    return [f"{a} {b}" for a in lines for b in lines[::3]]


def train_spm_tokenizer(corpus: Iterable[str], out_file: Path, vocab_size: int = 1000,
                        add_dummy_prefix: bool = False, nul_piece: bool = False,
                        normalization: str = "identity") -> Path:
    """Train a sentencepiece BPE (byte fallback, InternLM2's special tokens) into ``out_file``."""
    import sentencepiece as sp  # only needed to build new tokenizers, never to load them

    buf = io.BytesIO()
    try:
        sp.SentencePieceTrainer.train(
            sentence_iterator=iter(list(corpus)), model_writer=buf, model_type="bpe", vocab_size=vocab_size,
            byte_fallback=True, character_coverage=1.0, hard_vocab_limit=False,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1, user_defined_symbols=INTERNLM2_SPECIAL_TOKENS,
            add_dummy_prefix=add_dummy_prefix, remove_extra_whitespaces=False, normalization_rule_name=normalization,
            split_digits=True, allow_whitespace_only_pieces=True, num_threads=1, minloglevel=2,
        )
    except RuntimeError as err:  # sentencepiece's own words, e.g. a vocabulary smaller than the corpus's characters
        if need := re.search(r"smaller than required_chars\. \d+ vs (\d+)", str(err)):
            raise CheckpointError(f"a vocabulary of {vocab_size} pieces is too small for the tokenizer's corpus: it "
                                  f"needs at least {need[1]} (its characters, the 256 bytes, the special tokens)") from None
        raise CheckpointError(f"training the tokenizer failed: {str(err).splitlines()[-1]}") from None
    model = spm.parse(buf.getvalue())
    if nul_piece:
        # The real InternLM2 tokenizer.model holds a piece with a NUL byte, which sentencepiece
        # 0.2.2 refuses to load; keep one here so loading is tested against it.
        model.pieces.append(spm.Piece(text="a\x00b", score=-1e6, type=spm.NORMAL))
    out_file.write_bytes(spm.serialize(model))
    return out_file


def _tokenizer_config(pieces: list[spm.Piece]) -> dict:
    ids = {p.text: i for i, p in enumerate(pieces)}
    specials = ["<unk>", "<s>", "</s>", *INTERNLM2_SPECIAL_TOKENS]
    return {  # as internlm2-chat ships it, remote classes included (they must be ignored)
        "add_bos_token": True, "add_eos_token": False,
        "additional_special_tokens": INTERNLM2_SPECIAL_TOKENS,
        "added_tokens_decoder": {str(ids[t]): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                               "single_word": False, "special": True} for t in specials},
        "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer",
                                       "tokenization_internlm2_fast.InternLM2TokenizerFast"]},
        "bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>",
        "chat_template": INTERNLM2_CHAT, "clean_up_tokenization_spaces": False,
        "tokenizer_class": "InternLM2Tokenizer",
    }


def build_tiny_checkpoint(out_dir: str | Path, *, seed: int = 0, hidden_size: int = 64, num_hidden_layers: int = 2,
                          num_attention_heads: int = 4, num_key_value_heads: int = 2, intermediate_size: int = 128,
                          vocab_size: int = 1000, max_position_embeddings: int = 2048, rope_theta: float = 1e6,
                          rope_scaling: dict | None = None, corpus: Iterable[str] | None = None,
                          nul_piece: bool = False, add_dummy_prefix: bool = False,
                          dtype: str = "float32") -> Path:
    """Write a complete tiny InternLM2-format model folder with random weights; returns its path.

    ``vocab_size`` is the sentencepiece target; the model's vocabulary is what training produced.
    """
    out_dir = Path(out_dir)
    with written_whole(out_dir) as tmp:
        train_spm_tokenizer(corpus or default_corpus(), tmp / "tokenizer.model", vocab_size,
                            add_dummy_prefix=add_dummy_prefix, nul_piece=nul_piece)
        pieces = spm.load(tmp / "tokenizer.model").pieces
        internlm_cfg = {
            "vocab_size": len(pieces), "hidden_size": hidden_size, "intermediate_size": intermediate_size,
            "num_hidden_layers": num_hidden_layers, "num_attention_heads": num_attention_heads,
            "num_key_value_heads": num_key_value_heads, "max_position_embeddings": max_position_embeddings,
            "rope_theta": rope_theta, "rope_scaling": rope_scaling, "rms_norm_eps": 1e-5,
            "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2, "torch_dtype": dtype,
        }
        llama_cfg: LlamaConfig = internlm2.llama_config_from_internlm2(internlm_cfg)
        torch.manual_seed(seed)
        sd = LlamaForCausalLM(llama_cfg).to(getattr(torch, dtype)).state_dict()
        save_file({k: v.contiguous() for k, v in internlm2.state_dict_to_internlm2(sd, llama_cfg).items()},
                  str(tmp / "model.safetensors"), metadata={"format": "pt"})
        config = internlm2.internlm2_config_from_llama(llama_cfg)
        config["auto_map"] = {"AutoConfig": "configuration_internlm2.InternLM2Config",
                              "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM"}
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        (tmp / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2}))
        (tmp / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(pieces), indent=2, ensure_ascii=False))
        (tmp / "special_tokens_map.json").write_text(json.dumps(
            {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "</s>",
             "additional_special_tokens": INTERNLM2_SPECIAL_TOKENS}, indent=2))
    return out_dir
