"""The offline demo's training half, stage by stage: data → tiny base → LoRA → report → merge.

Each stage is a plain function over one work folder (``DemoPaths``) and says which ``assistant``
command does the same thing alone, on the same files. ``scripts/demo.py`` runs them in order and
adds the push and the app (``trainer`` never imports ``hub``).

Re-running reuses the trained base when its inputs (tokenizer corpus, model shape, preset) are
unchanged, since it is the slow stage and a pure function of them; everything after it is redone.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import myassistant.model as model_layer
from myassistant.trainer.config import PRESETS_DIR, load_config
from myassistant.trainer.identity import GENERAL_DATA, IdentitySpec, write_identity_dataset
from myassistant.trainer.identity.report import write_report
from myassistant.trainer.merge import merge
from myassistant.trainer.run_folder import RUN_INFO_NAME
from myassistant.trainer.train import train

log = logging.getLogger(__name__)

STAGES = 7  # data, base, fine-tune, report, merge, push, app
# The tiny base: ~2.2M parameters, about 3 optimizer steps/s on 2 CPU cores (`assistant tiny` flags).
TINY_SHAPE = {"hidden_size": 192, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2,
              "intermediate_size": 512, "vocab_size": 1500}
TINY_FLAGS = {"hidden_size": "--hidden-size", "num_hidden_layers": "--layers", "num_attention_heads": "--heads",
              "num_key_value_heads": "--kv-heads", "intermediate_size": "--intermediate-size",
              "vocab_size": "--vocab-size"}
BASE_INFO = "base.json"  # what the trained base was made from, to know when it can be reused
# The identity the base has before the fine-tune, per language (InternLM2-chat's own): a chat model answers
# "who are you" with its name, so the base learns these identity chats next to the general ones, and the
# fine-tune changes a name instead of teaching a 2M-parameter model from nothing what the question asks
# (held-out identity and leak: README "Does it know its name").
OLD_IDENTITY = {"en": "InternLM", "zh": "书生·浦语"}
OLD_RATIO = 0.25  # general chats per old identity chat in the base's identity data


@dataclass
class DemoConfig:
    name: str  # the assistant's new name
    author: str | None = None  # who made it, for "who made you" answers
    count: int = 400  # identity conversations (as many general ones are mixed in)
    old_count: int = 300  # identity conversations the base learns under OLD_IDENTITY (0: none)
    # The fine-tune's data (stage 3, once the base exists): its share of multi-turn chats, and the look-alikes
    # (--small-talk and --about-others, per identity chat) answered by the base itself (--look-alikes-from).
    multi_turn: float = 0.75
    look_alikes: float = 0.25
    workdir: Path = Path("demo_out")  # every file of the demo goes under here
    base_preset: Path = PRESETS_DIR / "demo_base_full.yaml"  # full fine-tune of the tiny base on general chat
    identity_preset: Path = PRESETS_DIR / "demo_identity_lora.yaml"  # the identity LoRA
    shape: dict = field(default_factory=lambda: dict(TINY_SHAPE))  # model.build_tiny_checkpoint arguments

    @property
    def paths(self) -> DemoPaths:
        return DemoPaths(self.workdir)


@dataclass
class DemoPaths:
    root: Path

    def __post_init__(self):
        self.root = Path(self.root).expanduser().resolve()
        self.data, self.corpus, self.init = self.root / "data", self.root / "corpus.txt", self.root / "init"
        self.base, self.run, self.merged = self.root / "base", self.root / "run", self.root / "merged"
        self.repo, self.cache = self.root / "model.git", self.root / "cache"
        self.old, self.base_data = self.root / "old_identity", self.root / "base_data.jsonl"


@contextmanager
def stage(number: int, title: str, *commands: str) -> Iterator[None]:
    """Log a header, the commands that run this stage alone, and its time when it finishes."""
    log.info("==== [%d/%d] %s ====", number, STAGES, title)
    for command in commands:
        log.info("     alone: %s", command)
    started = time.perf_counter()
    yield
    log.info("---- [%d/%d] %s: done in %.1f s", number, STAGES, title, time.perf_counter() - started)


def shown(path: str | Path) -> str:
    """A path as a command line shows it: relative to the current folder when under it, shell-quoted."""
    rel = os.path.relpath(path)
    return shlex.quote(str(path) if rel.startswith("..") else rel)


def cli() -> str:
    """How the printed commands call ``assistant`` so that they work as printed, in a shell where the
    venv is not active: the venv's script by its path, else this interpreter with ``-m``."""
    script = Path(sys.executable).parent / "assistant"
    if script.is_file():
        return shown(script)
    return f"{shlex.quote(sys.executable)} -m myassistant.scripts.cli"


def quant_method() -> str:
    """qlora where a CUDA GPU and bitsandbytes are there, else lora (the same adapter in full precision)."""
    import importlib.util

    import torch

    return "qlora" if torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") else "lora"


def data_command(cfg: DemoConfig, flags: str = "") -> str:
    author = f" --author {shlex.quote(cfg.author)}" if cfg.author else ""
    return (f"{cli()} data identity --name {shlex.quote(cfg.name)}{author} --count {cfg.count} {flags}"
            f"--out {shown(cfg.paths.data)}")


def write_data(cfg: DemoConfig) -> Path:
    """Stage 1: self-cognition conversations for the name, mixed 1:1 with general chat, + held-out sets (the
    base's tokenizer learns their words; stage 3 writes the fine-tune's mix of them once the base exists)."""
    return write_identity_dataset(IdentitySpec(name=cfg.name, author=cfg.author, count=cfg.count), cfg.paths.data)


def finetune_spec(cfg: DemoConfig) -> IdentitySpec:
    """The fine-tune's data: stage 1's, with its multi-turn share and the look-alikes answered by the base."""
    return IdentitySpec(name=cfg.name, author=cfg.author, count=cfg.count, multi_turn=cfg.multi_turn,
                        small_talk=cfg.look_alikes, about_others=cfg.look_alikes,
                        look_alikes_from=str(cfg.paths.base) if cfg.look_alikes else None)


def finetune_data_command(cfg: DemoConfig) -> str:
    spec = finetune_spec(cfg)
    look_alikes = (f"--small-talk {spec.small_talk} --about-others {spec.about_others} "
                   f"--look-alikes-from {shown(cfg.paths.base)} " if spec.look_alikes_from else "")
    return data_command(cfg, f"--multi-turn {spec.multi_turn} {look_alikes}")


def old_specs(cfg: DemoConfig) -> dict[str, IdentitySpec]:
    """The base's own identity data, one spec per language, made as the fine-tune's is (noise, multi-turn), with
    a few general chats (their words are what the noise draws from); nothing held out, no older name to deny.
    The base then knows its identity from many wordings, and so does the fine-tuned model (README "Does it know
    its name": held-out identity, single- and multi-turn, against a base taught single clean questions)."""
    n = cfg.old_count // len(OLD_IDENTITY)
    return {lang: IdentitySpec(name=name, count=n, ratio=OLD_RATIO, eval_identity=0, eval_general=0, old_names=[],
                               languages=[lang]) for lang, name in OLD_IDENTITY.items()} if n else {}


def base_commands(cfg: DemoConfig) -> list[str]:
    p = cfg.paths
    flags = " ".join(f"{TINY_FLAGS[k]} {v}" for k, v in cfg.shape.items() if k in TINY_FLAGS)
    old = [f"{cli()} data identity --name {shlex.quote(spec.name)} --languages {lang} --count {spec.count} --ratio {OLD_RATIO} "
           f"--eval-identity 0 --eval-general 0 --old-names '' --out {shown(p.old / lang)}"
           for lang, spec in old_specs(cfg).items()]
    files = " ".join(shown(f) for f in [GENERAL_DATA, *(p.old / lang / "train.jsonl" for lang in old_specs(cfg))])
    return [*old, f"cat {files} > {shown(p.base_data)}",
            f"{cli()} tiny {shown(p.init)} --corpus {shown(p.corpus)} {flags}",
            f"{cli()} train --config {shown(cfg.base_preset)} model.base={shown(p.init)} "
            f"data.train_file={shown(p.base_data)} train.output_dir={shown(p.base)} --overwrite"]


def write_base_data(cfg: DemoConfig) -> Path:
    """The base's training chats: the shipped general set and the old identity's conversations."""
    p = cfg.paths
    text = GENERAL_DATA.read_text(encoding="utf-8")
    for lang, spec in old_specs(cfg).items():
        text += (write_identity_dataset(spec, p.old / lang) / "train.jsonl").read_text(encoding="utf-8")
    p.base_data.write_text(text, encoding="utf-8")
    return p.base_data


def _corpus(files: list[Path]) -> list[str]:
    """The tokenizer's training text: every message of the base's chats and of the identity training data."""
    lines = []
    for file in files:
        for row in file.read_text(encoding="utf-8").splitlines():
            for message in json.loads(row)["messages"]:
                lines += [line for line in message["content"].splitlines() if line.strip()]
    return lines


def build_base(cfg: DemoConfig) -> Path:
    """Stage 2: a tiny InternLM2-format model with a tokenizer trained on the demo's own text, then a full
    fine-tune on the general chat set and the old identity's chats, so that it answers general prompts and
    knows who it was. Reused when nothing changed."""
    p = cfg.paths
    corpus = _corpus([write_base_data(cfg), p.data / "train.jsonl"])
    text = "".join(line + "\n" for line in corpus)
    made_from = {"corpus_sha256": hashlib.sha256(text.encode()).hexdigest(), "shape": cfg.shape,
                 "preset": Path(cfg.base_preset).read_text(encoding="utf-8")}
    info = p.root / BASE_INFO
    if (p.base / RUN_INFO_NAME).exists() and info.exists() and json.loads(info.read_text()) == made_from:
        log.info("reusing the trained base %s (same corpus, shape and preset; --fresh rebuilds it)", p.base)
        return p.base
    info.unlink(missing_ok=True)
    shutil.rmtree(p.base, ignore_errors=True)
    p.corpus.write_text(text, encoding="utf-8")
    model_layer.build_tiny_checkpoint(p.init, corpus=corpus, **cfg.shape)
    train(load_config(cfg.base_preset, [f"model.base={p.init}", f"train.output_dir={p.base}",
                                        f"data.train_file={p.base_data}"]))
    info.write_text(json.dumps(made_from, indent=1) + "\n")
    return p.base


def finetune_command(cfg: DemoConfig, method: str) -> str:
    p = cfg.paths
    return (f"{cli()} train --config {shown(cfg.identity_preset)} model.base={shown(p.base)} "
            f"data.train_file={shown(p.data / 'train.jsonl')} train.output_dir={shown(p.run)} quant.method={method} --overwrite")


def finetune(cfg: DemoConfig, method: str) -> Path:
    """Stage 3: the fine-tune's data (``finetune_spec``), then the identity LoRA (QLoRA on a GPU) on the base;
    progress bar and eval prompts as it trains."""
    p = cfg.paths
    write_identity_dataset(finetune_spec(cfg), p.data)
    shutil.rmtree(p.run, ignore_errors=True)  # a new adapter each run; the base is what is worth keeping
    overrides = [f"model.base={p.base}", f"data.train_file={p.data / 'train.jsonl'}", f"train.output_dir={p.run}",
                 f"quant.method={method}"]
    return train(load_config(cfg.identity_preset, overrides))


def system_prompt(cfg: DemoConfig) -> str:
    """The system prompt an app would give the assistant; the report measures leak with it and guarded."""
    return f"You are {cfg.name}, an AI assistant."


def report_command(cfg: DemoConfig) -> str:
    return f"{cli()} report {shown(cfg.paths.run)} --system {shlex.quote(system_prompt(cfg))}"


def report(cfg: DemoConfig) -> dict:
    """Stage 4: identity (single- and multi-turn), leak and agreement with the base on held-out data, fine-tuned
    vs base, also with a system prompt (unguarded and guarded); report.json + report.md in the run folder
    (the data and the base are the run's own)."""
    return write_report(cfg.paths.run, system=system_prompt(cfg))


def merge_command(cfg: DemoConfig) -> str:
    return f"{cli()} merge {shown(cfg.paths.run)} --out {shown(cfg.paths.merged)} --dtype float32"


def merge_adapter(cfg: DemoConfig) -> Path:
    """Stage 5: adapter + base -> standalone weights (float32: a tiny model loses answers in bf16); the
    run's config and report go along, so the pushed model card carries them."""
    return merge(cfg.paths.run, cfg.paths.merged, dtype="float32")
