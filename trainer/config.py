"""One config object per training run: typed dataclasses grouped by concern, loaded from YAML.

Keys use the names of the transformers / peft / bitsandbytes arguments they feed (``r``,
``lora_alpha``, ``bnb_4bit_quant_type``, ``learning_rate`` ...), so nothing needs translating.
Every field has a type, a default and a one-line ``help``. A YAML file lists only what differs
from these defaults; ``section.key=value`` overrides on the command line go on top. All problems
are collected and raised together as one :class:`ConfigError`.
"""
from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from myassistant.trainer.data.corpus import TEXT_UNITS
from myassistant.trainer.data.encodings import unknown_encoding
from myassistant.trainer.data.formats import FORMATS
from myassistant.trainer.yaml_fields import apply_tree, key_lines, parse_override, repeated_keys

PRESETS_DIR = Path(__file__).resolve().parents[1] / "configs"

# InternLM2 module names -> the Llama names they become when model.load_model converts the layout.
INTERNLM2_TO_LLAMA = {
    "wqkv": ("q_proj", "k_proj", "v_proj"),
    "wo": ("o_proj",),
    "w1": ("gate_proj",),
    "w3": ("up_proj",),
    "w2": ("down_proj",),
}
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

METHODS = ("qlora", "lora", "full")
DTYPES = ("auto", "bfloat16", "float16", "float32")
DEEPSPEED_PRESETS = ("zero2", "zero3", "zero2_offload", "zero3_offload")
DATA_FORMATS = ("auto", *FORMATS)
LM_LOSSES = ("auto", "cce")
VISION_STAGES = ("pretrain", "finetune")
SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")


class ConfigError(ValueError):
    """A config file or override the user can fix; the message lists every problem."""

    user_error = True


def _f(default: Any, help: str) -> Any:  # noqa: A002 - "help" as in argparse / peft metadata
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class ModelConfig:
    base: str = _f("", "folder of the base model (InternLM2 or any causal LM checkpoint); required")
    dtype: str = _f("auto", "weights dtype: auto | bfloat16 | float16 | float32 (auto: bf16 on a bf16 GPU, else fp32)")


@dataclass
class LoraConfig:
    r: int = _f(64, "LoRA rank")
    lora_alpha: int = _f(16, "LoRA scaling numerator (scale = lora_alpha / r)")
    lora_dropout: float = _f(0.0, "dropout on the LoRA input, 0 <= p < 1 (peft's and Unsloth's default; XTuner "
                                  "uses 0.1; above 0 the GPU step cannot be a CUDA graph)")
    target_modules: list[str] = _f(ALL_LINEAR, "modules to adapt; InternLM2 names wqkv/wo/w1/w2/w3 are mapped; or [all-linear]")
    rank_pattern: list[str] = _f([], "other ranks for some of them, NAME=RANK (peft's rank_pattern; lora_alpha "
                                     "follows so alpha / r stays), e.g. [q_proj=4, k_proj=4]")
    bias: str = _f("none", "train biases: none | all | lora_only")


@dataclass
class QuantConfig:
    method: str = _f("qlora", "qlora (4-bit base + LoRA, CUDA) | lora (full-precision base + LoRA) | full (all weights)")
    bnb_4bit_quant_type: str = _f("nf4", "4-bit data type for QLoRA: nf4 | fp4")
    bnb_4bit_use_double_quant: bool = _f(True, "also quantise the quantisation constants (saves ~0.4 bit/param)")
    bnb_4bit_compute_dtype: str = _f("bfloat16", "dtype the 4-bit weights are dequantised to for matmuls")


@dataclass
class SourceConfig:
    path: str = _f("", "a data file, a folder or a glob; required")
    kind: str = _f("auto", "text (pre-training: every token, in max_length blocks) | chat (instruction data: "
                           "truncated to max_length) | auto (from the format)")
    format: str = _f("", "data format of this source; empty = data.format")
    text_unit: str = _f("", "what one document of a .txt file is; empty = data.text_unit")
    text_field: str = _f("", "the field / column holding the text; empty = data.text_field")
    encoding: str = _f("", "text encoding of the files; empty = data.encoding")


SOURCE_KINDS = ("auto", "text", "chat")


@dataclass
class DataConfig:
    train_file: str = _f("", "training data: a file (JSON/JSONL conversations, or raw text), a folder or a glob; "
                             "this or data.sources is required")
    sources: list[SourceConfig] = _f([], "several sources mixed in one run, each with its own rule, e.g. "
                                        "[{path: corpus/, kind: text}, {path: chats.jsonl, kind: chat}]")
    format: str = _f("auto", "data format: auto | openai | xtuner | alpaca | sharegpt | text")
    max_length: int = _f(2048, "tokens per sample: raw text is cut into blocks of this many tokens (nothing lost); "
                               "longer conversations are truncated and counted")
    text_unit: str = _f("paragraph", "one document of a .txt file: paragraph (blank-line separated) | line | file")
    text_field: str = _f("text", "the field of .jsonl/.json records (column of .parquet) holding raw text")
    encoding: str = _f("utf-8", "encoding of raw-text files (e.g. gb18030 for GBK text)")
    num_proc: int = _f(0, "processes tokenising a raw-text corpus (0 = one per CPU core); cached on disk")
    pack: bool = _f(True, "pack short samples into max_length sequences (no attention across samples)")
    eval_prompts: list[str] = _f([], "prompts answered (greedy) every train.eval_steps and at the end")
    image_folder: str = _f("", "multimodal: the folder the records' image paths are relative to; empty = the data file's folder")


@dataclass
class VisionConfig:
    encoder: str = _f("", "vision encoder folder (CLIP / SigLIP) for a LLaVA run (pictures + chats); empty = text only")
    stage: str = _f("finetune", "pretrain: only the projector trains, encoder and LLM frozen | finetune: the projector "
                                "and LoRA/QLoRA on the LLM (quant.method)")
    projector: str = _f("", "finetune: a pretrain run folder or projector.safetensors to start from; empty = a new projector")
    lora_encoder: bool = _f(False, "finetune: LoRA (lora.r, lora.lora_alpha) on the vision encoder's linear layers too")


@dataclass
class TrainConfig:
    output_dir: str = _f("runs/run", "the run folder: checkpoints, adapter, logs, run.json")
    learning_rate: float = _f(2e-4, "peak learning rate")
    lr_scheduler_type: str = _f("cosine", "learning-rate schedule after warmup: cosine | linear | constant | ...")
    warmup_ratio: float = _f(0.03, "share of the steps spent warming up linearly, 0 <= x < 1")
    num_train_epochs: float = _f(1.0, "passes over the data (ignored when max_steps > 0)")
    max_steps: int = _f(-1, "optimizer steps to run; -1 = from num_train_epochs")
    per_device_train_batch_size: int = _f(1, "sequences per device per micro-step")
    gradient_accumulation_steps: int = _f(16, "micro-steps per optimizer step")
    max_grad_norm: float = _f(1.0, "gradient clipping norm")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    optim: str = _f("adamw_torch", "optimizer, as transformers names it: adamw_torch | adamw_bnb_8bit (bitsandbytes, "
                                   "CUDA; keeps the 7B QLoRA step under 8 GiB) | paged_adamw_8bit | ...")
    save_steps: int = _f(500, "write a checkpoint every N optimizer steps")
    save_total_limit: int | None = _f(2, "keep only the newest N checkpoints (null = keep all)")
    eval_steps: int = _f(500, "answer data.eval_prompts every N steps (0 = only at the end)")
    eval_max_new_tokens: int = _f(64, "tokens generated per eval prompt")
    logging_steps: int = _f(10, "log loss / lr / tokens/s every N steps")
    seed: int = _f(0, "seed for weights init, data order and dropout")
    deepspeed: str | None = _f(None, "ZeRO preset: zero2 | zero3 | zero2_offload | zero3_offload (or a .json path); null = off")
    gradient_checkpointing: bool = _f(True, "recompute activations in backward: less memory, ~30% slower")
    compile: bool = _f(True, "GPU LoRA/QLoRA: torch.compile each decoder layer (a minute of compiling at the start, "
                             "then fewer, fused kernels); false = eager")
    cuda_graphs: bool = _f(True, "GPU LoRA/QLoRA with compile, lora_dropout 0: replay each micro-step as a CUDA graph "
                                 "(no kernel-launch overhead); false = launch kernels one by one")
    fast_path: bool = _f(True, "GPU LoRA/QLoRA: frozen weights in bf16, chunked loss, varlen flash attention for packed "
                               "rows (trainer.gpu.fast); false = plain transformers + peft (and no compile, no graphs)")
    qlora_fold: bool = _f(True, "GPU QLoRA on the fast path: fold each adapter into its weight as it is dequantised, "
                                "one GEMM a layer (trainer.gpu.qlora_fold); false = peft's forward")
    qlora_keep_folded: bool = _f(True, "folded QLoRA with compile and gradient_checkpointing: the weight the checkpoint's "
                                       "recompute folds serves backward (2 folds a step, not 3; one layer's bf16 weight "
                                       "more at the peak: ~0.1 GiB at 1.8B, ~0.4 GiB at 7B)")
    qlora_fp8: bool = _f(False, "GPU QLoRA on the fast path, fp8 GPUs (L4, RTX 40xx, H100, H200): the frozen weights' "
                                "products in fp8 (e4m3, a scale a weight row and a token; the adapters' stay bf16): "
                                "faster (7B: -16 % a step on an H200), ~2-3 % rounding of those products, so "
                                "results differ from the bf16 default; at 7B a LoRA fits one batch more slowly "
                                "(benchmarks/README.md, session 33) (trainer.gpu.qlora_fp8)")
    lm_loss: str = _f("auto", "GPU fast path's loss: auto (cuBLAS GEMMs + a Triton pass for a frozen lm_head, else "
                              "cut_cross_entropy) | cce (cut_cross_entropy first)")
    report_to: str = _f("tensorboard", "tensorboard | none (metrics.jsonl is always written)")


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)
    data: DataConfig = field(default_factory=DataConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)


SECTIONS: dict[str, type] = {f.name: f.default_factory for f in dataclasses.fields(RunConfig)}  # type: ignore[misc]


def lora_rank_pattern(lora: LoraConfig) -> tuple[dict[str, int], dict[str, float]]:
    """peft ``rank_pattern`` and ``alpha_pattern`` of ``lora.rank_pattern`` (validated): the same scale alpha / r."""
    pairs = [(name.strip(), int(rank)) for name, _, rank in (entry.partition("=") for entry in lora.rank_pattern)]
    ranks = {mapped: rank for name, rank in pairs for mapped in INTERNLM2_TO_LLAMA.get(name, (name,))}
    return ranks, {name: rank * lora.lora_alpha / lora.r for name, rank in ranks.items()}


def lora_target_modules(names: list[str]) -> list[str] | str:
    """peft ``target_modules`` for the Llama layout: InternLM2 names mapped, duplicates dropped."""
    if names == ["all-linear"]:
        return "all-linear"
    out: list[str] = []
    for name in names:
        for mapped in INTERNLM2_TO_LLAMA.get(name, (name,)):
            if mapped not in out:
                out.append(mapped)
    return out


_NAME_SEPARATORS = re.compile(r"[,\s]+")


def validate(cfg: RunConfig) -> list[str]:
    """Every value problem in ``cfg`` (empty when the config can run)."""
    m, lo, q, d, t, v = cfg.model, cfg.lora, cfg.quant, cfg.data, cfg.train, cfg.vision
    checks = [
        (bool(m.base), "model.base: required: the base model folder, e.g. model.base=models/internlm2-chat-1_8b"),
        (m.dtype in DTYPES, f"model.dtype: {m.dtype!r} is not one of {', '.join(DTYPES)}"),
        (lo.r > 0, f"lora.r: must be > 0, got {lo.r}"),
        (lo.lora_alpha > 0, f"lora.lora_alpha: must be > 0, got {lo.lora_alpha}"),
        (0 <= lo.lora_dropout < 1, f"lora.lora_dropout: must be in [0, 1), got {lo.lora_dropout}"),
        (bool(lo.target_modules), "lora.target_modules: empty; e.g. [q_proj, v_proj] or [all-linear]"),
        *((" " not in name and "," not in name, f"lora.target_modules: {name!r} is one name; a list is written "
           f"[{', '.join(_NAME_SEPARATORS.split(name.strip()))}]") for name in lo.target_modules),
        *((bool(re.fullmatch(r"\s*[\w.]+\s*=\s*[1-9]\d*\s*", e)), f"lora.rank_pattern: {e!r} is not NAME=RANK, e.g. q_proj=4")
          for e in lo.rank_pattern),
        (lo.bias in ("none", "all", "lora_only"), f"lora.bias: {lo.bias!r} is not one of none, all, lora_only"),
        (q.method in METHODS, f"quant.method: {q.method!r} is not one of {', '.join(METHODS)}"),
        (q.bnb_4bit_quant_type in ("nf4", "fp4"), f"quant.bnb_4bit_quant_type: {q.bnb_4bit_quant_type!r} is not nf4 or fp4"),
        (q.bnb_4bit_compute_dtype in DTYPES[1:],
         f"quant.bnb_4bit_compute_dtype: {q.bnb_4bit_compute_dtype!r} is not one of {', '.join(DTYPES[1:])}"),
        (bool(d.train_file) or bool(d.sources),
         "data.train_file: required: a JSON/JSONL/text file, e.g. data.train_file=data/identity.jsonl (or data.sources)"),
        (not (d.train_file and d.sources), "data.sources: set data.train_file or data.sources, not both"),
        (d.format in DATA_FORMATS, f"data.format: {d.format!r} is not one of {', '.join(DATA_FORMATS)}"),
        (d.text_unit in TEXT_UNITS, f"data.text_unit: {d.text_unit!r} is not one of {', '.join(TEXT_UNITS)}"),
        (d.num_proc >= 0, f"data.num_proc: must be >= 0 (0 = one per CPU core), got {d.num_proc}"),
        *((bool(s.path), f"data.sources[{i}].path: required") for i, s in enumerate(d.sources)),
        *((s.kind in SOURCE_KINDS, f"data.sources[{i}].kind: {s.kind!r} is not one of {', '.join(SOURCE_KINDS)}")
          for i, s in enumerate(d.sources)),
        *((s.format in ("",) + DATA_FORMATS, f"data.sources[{i}].format: {s.format!r} is not one of "
           f"{', '.join(DATA_FORMATS)}") for i, s in enumerate(d.sources)),
        *((s.text_unit in ("",) + TEXT_UNITS, f"data.sources[{i}].text_unit: {s.text_unit!r} is not one of "
           f"{', '.join(TEXT_UNITS)}") for i, s in enumerate(d.sources)),
        (d.max_length > 0, f"data.max_length: must be > 0, got {d.max_length}"),
        (v.stage in VISION_STAGES, f"vision.stage: {v.stage!r} is not one of {', '.join(VISION_STAGES)}"),
        (not v.encoder or v.stage == "pretrain" or q.method != "full",
         "quant.method: full is not a multimodal finetune method; use lora or qlora"),
        (not (v.projector or v.lora_encoder) or bool(v.encoder), "vision.projector / vision.lora_encoder: need vision.encoder"),
        (not (v.encoder and d.sources), "data.sources: a multimodal run (vision.encoder) reads one LLaVA file, "
         "data.train_file (with data.image_folder), not data.sources"),
        (not unknown_encoding(d.encoding), unknown_encoding(d.encoding)),
        *((not s.encoding or not unknown_encoding(s.encoding),
           unknown_encoding(s.encoding, f"data.sources[{i}].encoding")) for i, s in enumerate(d.sources)),
        (bool(t.output_dir), "train.output_dir: required"),
        (not t.output_dir or not Path(t.output_dir).is_file(),
         f"train.output_dir: {t.output_dir} is a file; the run folder must be a folder (new or a run's)"),
        (t.learning_rate > 0, f"train.learning_rate: must be > 0, got {t.learning_rate}"),
        (t.lr_scheduler_type in SCHEDULERS, f"train.lr_scheduler_type: {t.lr_scheduler_type!r} is not one of {', '.join(SCHEDULERS)}"),
        (0 <= t.warmup_ratio < 1, f"train.warmup_ratio: must be in [0, 1), got {t.warmup_ratio}"),
        (t.max_steps > 0 or (t.max_steps == -1 and t.num_train_epochs > 0),
         f"train.max_steps: must be > 0, or -1 with num_train_epochs > 0 (got {t.max_steps}, {t.num_train_epochs})"),
        (t.per_device_train_batch_size >= 1, f"train.per_device_train_batch_size: must be >= 1, got {t.per_device_train_batch_size}"),
        (t.gradient_accumulation_steps >= 1, f"train.gradient_accumulation_steps: must be >= 1, got {t.gradient_accumulation_steps}"),
        (t.save_steps >= 1, f"train.save_steps: must be >= 1, got {t.save_steps}"),
        (t.save_total_limit is None or t.save_total_limit >= 1, f"train.save_total_limit: must be >= 1 or null, got {t.save_total_limit}"),
        (t.eval_steps >= 0, f"train.eval_steps: must be >= 0 (0 = only at the end), got {t.eval_steps}"),
        (t.eval_max_new_tokens >= 1, f"train.eval_max_new_tokens: must be >= 1, got {t.eval_max_new_tokens}"),
        (t.logging_steps >= 1, f"train.logging_steps: must be >= 1, got {t.logging_steps}"),
        (t.deepspeed is None or t.deepspeed in DEEPSPEED_PRESETS or t.deepspeed.endswith(".json"),
         f"train.deepspeed: {t.deepspeed!r} is not one of {', '.join(DEEPSPEED_PRESETS)}, a .json file or null"),
        (t.report_to in ("tensorboard", "none"), f"train.report_to: {t.report_to!r} is not tensorboard or none"),
        (t.lm_loss in LM_LOSSES, f"train.lm_loss: {t.lm_loss!r} is not one of {', '.join(LM_LOSSES)}"),
        (not t.qlora_fp8 or (q.method == "qlora" and t.fast_path and t.qlora_fold),
         f"train.qlora_fp8: runs QLoRA layers on the GPU fast path; it needs quant.method qlora (got {q.method}), "
         f"train.fast_path and train.qlora_fold true"),
    ]
    return [msg for ok, msg in checks if not ok]


def load_config(yaml_path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Defaults <- YAML file <- ``section.key=value`` overrides; raise one ConfigError listing all problems."""
    cfg, problems = RunConfig(), []
    if yaml_path is not None:
        path = Path(yaml_path)
        shipped = PRESETS_DIR / f"{path.name.removesuffix('.yaml')}.yaml"
        if not path.exists() and path.parent == Path(".") and shipped.is_file():
            path = shipped  # a shipped preset by the name `assistant presets list` prints
        try:
            raw = path.read_bytes()
            # Notepad's "Unicode" save is UTF-16 with a byte-order mark; a UTF-8 one may start with a mark too
            text = raw.decode("utf-16" if raw.startswith((b"\xff\xfe", b"\xfe\xff")) else "utf-8-sig")
            tree = yaml.safe_load(text)
        except (FileNotFoundError, IsADirectoryError):
            raise ConfigError(f"{path}: config file not found; `assistant presets list` shows the shipped ones") from None
        except UnicodeDecodeError as err:
            line = raw[:err.start].count(b"\n") + 1
            raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[err.start]:02x}); save the config as "
                              "UTF-8") from None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            line = f":{mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}{line}: not valid YAML: {getattr(err, 'problem', err)}") from None
        problems += repeated_keys(text, str(path))
        apply_tree(cfg, tree, str(path), problems, key_lines(text))
    in_file = len(problems)
    for text in overrides:
        parsed = parse_override(text)
        if isinstance(parsed, str):
            problems.append(parsed)
            continue
        section, key, value = parsed
        apply_tree(cfg, {section: {key: value}}, f"override {text!r}", problems)
    problems += validate(cfg)  # values that failed to parse kept their (valid) defaults
    if problems:
        where = str(yaml_path) if yaml_path and in_file else "config"  # (each problem names its file or override)
        raise ConfigError(f"{where}: {len(problems)} problem(s): " + "; ".join(problems))
    return cfg


def save_config(cfg: RunConfig, path: Path) -> Path:
    """Write the resolved config as YAML (atomically)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True), encoding="utf-8")
    tmp.replace(path)
    return path


def changed_settings(cfg: RunConfig) -> list[str]:
    """``section.key=value`` for each setting of ``cfg`` that is not its default: a run's config in one line."""
    now, default = cfg.to_dict(), RunConfig().to_dict()
    return [f"{s}.{k}={v}" for s in now for k, v in now[s].items() if v != default[s][k]]


def describe_fields() -> str:
    """Every key with its default and help, one per line (for --help and docs)."""
    lines = []
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
            lines.append(f"  {section}.{f.name} = {default!r}: {f.metadata['help']}")
    return "\n".join(lines)


def list_presets() -> dict[str, str]:
    """Shipped presets: name -> the first line of its header comment."""
    out = {}
    for path in sorted(PRESETS_DIR.glob("*.yaml")):
        first = path.read_text(encoding="utf-8").splitlines()[0] if path.stat().st_size else ""
        out[path.stem] = first.lstrip("# ").strip()
    return out


def preset_path(name: str) -> Path:
    path = PRESETS_DIR / f"{name.removesuffix('.yaml')}.yaml"
    if not path.is_file():
        close = difflib.get_close_matches(name, list_presets(), n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        raise ConfigError(f"preset {name!r} not found in {PRESETS_DIR}; {hint}`assistant presets list` shows them")
    return path


def copy_preset(name: str, dest: str | Path, *, force: bool = False) -> Path:
    """Copy a preset to ``dest`` (a file, or a folder to put NAME.yaml in) for editing."""
    src, dest = preset_path(name), Path(dest)
    if dest.is_dir():
        dest = dest / src.name
    if dest.exists() and not force:
        raise ConfigError(f"{dest} exists; pass --force to overwrite it or choose another destination")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_text(src.read_text(encoding="utf-8"), encoding="utf-8")
    tmp.replace(dest)
    return dest
