"""Fine-tune a causal LM from one RunConfig: setup, data, model, trainer, save.

The transformers Trainer runs the loop (mixed precision, accumulation, checkpoints, resume with the
same data order and RNG state, DeepSpeed). This file wires our pieces into it and leaves a run folder
that describes itself:

    run_config.yaml   the resolved config           run.json          name, steps, final loss, tokens, time
    adapter_model.safetensors + adapter_config.json (LoRA/QLoRA) or model.safetensors + config.json (full)
    tokenizer files   metrics.jsonl   eval_samples.jsonl   tensorboard/   checkpoint-N/ (newest few)

Several GPUs: ``torchrun --nproc_per_node N -m myassistant.scripts.cli train --config X.yaml --deepspeed zero2``
(or ``accelerate launch -m myassistant.scripts.cli train ...``); the Trainer reads the launcher's environment.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import logging
import math
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import PrinterCallback, ProgressCallback, Trainer, TrainerState, TrainingArguments, set_seed
from transformers.integrations import TensorBoardCallback

import myassistant.model as model_layer
from myassistant.trainer import data as data_lib
from myassistant.trainer.gpu import bnb_step, fast, graphs, qlora_fp8
from myassistant.trainer.callbacks import (EvalPrompts, MetricsFile, ProgressBar, ScheduleOnResume, StopAtStepEnd,
                                          read_jsonl, truncate_jsonl)
from myassistant.trainer.config import ConfigError, RunConfig, changed_settings, save_config
from myassistant.trainer.data.sources import TrainingData, build_training_data
from myassistant.trainer.lora import bf16_supported, bnb_config, build_model, count_parameters
from myassistant.trainer import run_folder, runlock
from myassistant.trainer.resume import TRAINER_STATE, checkpoint_step, holds_run, prepare_run_dir, remove_run
from myassistant.trainer.run_folder import (DATA_SUMMARY_NAME, EVAL_SAMPLES_NAME, METRICS_NAME, RUN_CONFIG_NAME,
                                            RUN_INFO_NAME, assistant_name, read_json, write_json)

log = logging.getLogger(__name__)

# transformers >= 5.2x renamed gradient_checkpointing to activation_checkpointing (the old name warns)
CHECKPOINTING = ("activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
                 else "gradient_checkpointing")
DEEPSPEED_DIR = Path(__file__).resolve().parents[1] / "configs" / "deepspeed"


# ----------------------------------------------------------------------------- setup helpers

def deepspeed_config(name: str | None) -> str | None:
    """Path of the ZeRO config for train.deepspeed; fail clearly where deepspeed is not installed."""
    if name is None:
        return None
    path = Path(name) if name.endswith(".json") else DEEPSPEED_DIR / f"{name}.json"
    if not path.is_file():
        raise ConfigError(f"train.deepspeed: {path} not found")
    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(f"train.deepspeed: {name} needs the deepspeed package (pip install deepspeed) "
                          "on a machine with CUDA GPUs; or set train.deepspeed=null")
    return str(path)


def _compare_data(path: Path, summary: dict, checkpoint: Path | None) -> None:
    """Write the data's counts to ``path``; resuming on data whose counts differ from the last session's says so:
    the Trainer skips as many batches of the data it is given as were trained, so after an edit some rows are
    never trained on this epoch and others twice (run_config.yaml only shows that the path is the same)."""
    before = read_json(path)
    if checkpoint is not None and before and before != summary:
        changed = ", ".join(f"{key} {before.get(key)} -> {value}" for key, value in summary.items()
                            if before.get(key) != value)
        log.warning("the training data changed since this run's last session (%s); the resumed run skips the first "
                    "%d steps' batches of the new data as if it were the old: start a new run to train on it evenly",
                    changed, checkpoint_step(checkpoint))
    write_json(path, summary)


def training_arguments(cfg: RunConfig, run_dir: Path, deepspeed: str | None) -> TrainingArguments:
    t = cfg.train
    on_gpu = torch.cuda.is_available()
    return TrainingArguments(
        output_dir=str(run_dir),
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler_type,
        warmup_steps=t.warmup_ratio,  # a float below 1 is a share of the total steps
        num_train_epochs=t.num_train_epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.per_device_train_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        max_grad_norm=t.max_grad_norm,
        weight_decay=t.weight_decay,
        optim=t.optim,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        logging_steps=t.logging_steps,
        seed=t.seed,
        data_seed=t.seed,
        deepspeed=deepspeed,
        **{CHECKPOINTING: t.gradient_checkpointing,
           CHECKPOINTING + "_kwargs": {"use_reentrant": False} if t.gradient_checkpointing else None},
        bf16=on_gpu and bf16_supported(),
        fp16=on_gpu and not bf16_supported(),
        report_to="none",  # TensorBoard is added as a callback so its folder is fixed (run_dir/tensorboard)
        include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False,  # keep position_ids of packed samples
        ddp_find_unused_parameters=False,  # every weight (or adapter) takes part in each forward
        dataloader_num_workers=0,
        dataloader_pin_memory=on_gpu,
        disable_tqdm=True,  # our ProgressBar replaces the Trainer's
    )


# ----------------------------------------------------------------------------- recipes

@dataclasses.dataclass
class Recipe:
    """What a run trains on and how it is kept: ``text_recipe`` below, or trainer.multimodal's."""
    tokenizer: Any
    data: TrainingData  # rows of input_ids / labels (/ position_ids, / what wrap_collate reads), counts, kind
    model: torch.nn.Module
    wrap_collate: Callable[[Callable], Callable] = lambda collate: collate  # what batches need beyond token ids
    save: Callable | None = None  # (model, folder): the final weights, instead of trainer.save_model
    run_info: dict = dataclasses.field(default_factory=dict)  # more keys for run.json


def text_recipe(cfg: RunConfig) -> Recipe:
    """Chats and raw text through the tokenizer (``trainer.data.sources``), on ``trainer.lora.build_model``'s model."""
    tokenizer = model_layer.load_tokenizer(cfg.model.base)
    data = build_training_data(cfg.data, tokenizer)  # raw text: whole, in blocks; chats: truncated (logged)
    return Recipe(tokenizer, data, build_model(cfg))


# ----------------------------------------------------------------------------- train

def train(cfg: RunConfig, *, resume: bool = False, overwrite: bool = False, callbacks: tuple = ()) -> Path:
    """Run one training as ``cfg`` says; return the run folder. ``overwrite`` first removes a run that
    ``train.output_dir`` holds. ``callbacks`` are extra TrainerCallbacks."""
    if resume and overwrite:
        raise ConfigError("--resume continues the run in train.output_dir and --overwrite removes it: give one")
    locks: list[Path] = []  # the run folder's lock while this process writes it: one training per folder
    try:
        return _train(cfg, resume, overwrite, callbacks, locks)
    finally:
        for lock in locks:
            runlock.release(lock)


def _train(cfg: RunConfig, resume: bool, overwrite: bool, callbacks: tuple, locks: list[Path]) -> Path:
    # -- setup: fail on config, run folder and data before loading any weights
    run_dir = Path(cfg.train.output_dir).resolve()
    cfg = dataclasses.replace(cfg)  # paths are stored absolute so the run folder works from anywhere
    cfg.model = dataclasses.replace(cfg.model, base=_absolute(cfg.model.base))
    cfg.data = dataclasses.replace(cfg.data, train_file=_absolute(cfg.data.train_file),
                                   sources=[dataclasses.replace(s, path=_absolute(s.path)) for s in cfg.data.sources],
                                   image_folder=_absolute(cfg.data.image_folder))
    cfg.vision = dataclasses.replace(cfg.vision, encoder=_absolute(cfg.vision.encoder),
                                     projector=_absolute(cfg.vision.projector))
    cfg.train = dataclasses.replace(cfg.train, output_dir=str(run_dir))
    if cfg.train.qlora_fp8:  # before the run folder and the weights
        qlora_fp8.check_supported()
    if cfg.quant.method == "qlora":  # QLoRA on a CPU: said before the data is read (665K pictures are opened first)
        bnb_config(cfg.quant)
    args = training_arguments(cfg, run_dir, deepspeed_config(cfg.train.deepspeed))  # sets up the process group
    main = args.process_index == 0  # only the first process writes the run folder's own files
    if main and run_dir.is_dir():  # before prepare_run_dir cleans up what another training may be writing
        locks.append(runlock.acquire(run_dir, ConfigError))
    replacing = overwrite and not resume and holds_run(run_dir)
    checkpoint = prepare_run_dir(run_dir, cfg, resume, main, overwrite)  # --overwrite: the old run stays until below
    done_at = checkpoint_step(checkpoint) if checkpoint else 0
    # a schedule that ended at the checkpoint: the Trainer would take one more step before it checks max_steps
    schedule_done = 0 < cfg.train.max_steps <= done_at
    if schedule_done and (run_dir / RUN_INFO_NAME).exists():
        log.info("%s: already trained to step %d, train.max_steps=%d: nothing left to train", run_dir, done_at,
                 cfg.train.max_steps)
        return run_dir
    if schedule_done and cfg.train.deepspeed:  # DeepSpeed loads a checkpoint only inside training
        log.warning("%s: the schedule ended at %s but the run was not finished; under DeepSpeed finishing it "
                    "trains one step more", run_dir, checkpoint.name)
        schedule_done = False
    set_seed(cfg.train.seed)

    # -- data and model: chats and texts (text_recipe), or pictures with chats (trainer.multimodal)
    if cfg.vision.encoder:
        from myassistant.trainer.multimodal.recipe import multimodal_recipe

        recipe = multimodal_recipe(cfg)
    else:
        recipe = text_recipe(cfg)
    tokenizer, data, model = recipe.tokenizer, recipe.data, recipe.model
    if replacing and main:  # the new run's data and model have loaded: now the old run goes
        remove_run(run_dir)
    dataset = data.dataset

    # -- on a GPU, LoRA/QLoRA take the fast path: fused loss, varlen attention; train.fast_path=false = off
    use_fast, no_graphs = fast.enabled(cfg), "no fast path"
    if use_fast:
        model = fast.apply(model, cfg, compile=cfg.train.compile)
        no_graphs = graphs.unavailable(cfg)
        log.info("training step: %s", f"eager ({no_graphs})" if no_graphs
                 else "a CUDA graph per batch size, captured at its second micro-step")

    # -- derived numbers, logged before the first step (nanoGPT's "tokens per iteration")
    world = args.world_size
    seqs_per_step = cfg.train.per_device_train_batch_size * cfg.train.gradient_accumulation_steps * world
    trainable, total = count_parameters(model)
    steps_per_epoch = math.ceil(len(dataset) / seqs_per_step)
    log.info("config (the defaults but): %s | all of it: %s", " ".join(changed_settings(cfg)),
             run_dir / RUN_CONFIG_NAME)
    log.info("method %s | trainable params %s of %s (%.3f%%) | weights %s", cfg.quant.method, f"{trainable:,}",
             f"{total:,}", 100 * trainable / max(total, 1), next(model.parameters()).dtype)
    log.info("data %d records -> %d sequences, %s tokens | effective batch %d seqs (%d x %d accum x %d devices) "
             "| <= %s tokens/step | %d steps/epoch", data.records, len(dataset), f"{data.tokens:,}", seqs_per_step,
             cfg.train.per_device_train_batch_size, cfg.train.gradient_accumulation_steps, world,
             f"{seqs_per_step * cfg.data.max_length:,}", steps_per_epoch)

    # -- trainer
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        locks[:] = locks or [runlock.acquire(run_dir, ConfigError)]
        if checkpoint is not None:
            step = int(checkpoint.name.split("-")[-1])
            log.info("resuming from %s (step %d)", checkpoint, step)
            truncate_jsonl(run_dir / METRICS_NAME, step)
            truncate_jsonl(run_dir / EVAL_SAMPLES_NAME, step)
        save_config(cfg, run_dir / RUN_CONFIG_NAME)
        _compare_data(run_dir / DATA_SUMMARY_NAME, {"records": data.records, "rows": len(dataset),
                                                    "tokens": data.tokens}, checkpoint)
    cbs = [ScheduleOnResume(), MetricsFile(run_dir / METRICS_NAME)]
    if cfg.train.report_to == "tensorboard":
        from torch.utils.tensorboard import SummaryWriter

        cbs.append(TensorBoardCallback(SummaryWriter(log_dir=str(run_dir / "tensorboard"))))
    evals = EvalPrompts(tokenizer, cfg.data.eval_prompts, cfg.train.eval_steps, run_dir / EVAL_SAMPLES_NAME,
                        max_new_tokens=cfg.train.eval_max_new_tokens, chat=data.chat,
                        stop_ids=model_layer.stop_token_ids(tokenizer))
    ctrl_c = StopAtStepEnd()
    cbs += [ProgressBar(), evals, ctrl_c, *callbacks]
    pad_id = tokenizer.pad_token_id or 0
    collate = (functools.partial(fast.collate, pad_token_id=pad_id, static=not no_graphs) if use_fast
               else functools.partial(data_lib.collate, pad_token_id=pad_id))
    trainer = (bnb_step.UnsyncedTrainer if no_graphs else graphs.GraphedTrainer)(
        model=model, args=args, train_dataset=dataset, data_collator=recipe.wrap_collate(collate),
        processing_class=tokenizer, callbacks=cbs)
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    started = time.perf_counter()
    if schedule_done:  # stopped after its last checkpoint, before run.json: only what the end of training writes
        _finish_from(trainer, checkpoint, evals)
    else:
        try:
            trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        finally:
            ctrl_c.restore()
        if ctrl_c.asked:  # stopped early, with a checkpoint of its last step: for --resume, not a finished run
            raise KeyboardInterrupt

    # -- save: final weights + run.json, each renamed into place when complete
    _save_final(trainer, run_dir, recipe.save)
    if trainer.is_world_process_zero():
        _write_run_info(cfg, run_dir, trainer, trainable, total, time.perf_counter() - started, data.kind,
                        recipe.run_info)
        run_folder.write_readme(run_dir, cfg.model.base, cfg.quant.method, read_json(run_dir / RUN_INFO_NAME))
    log.info("run folder: %s", run_dir)
    return run_dir


# ----------------------------------------------------------------------------- save

def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve()) if path else path


def _finish_from(trainer: Trainer, checkpoint: Path, evals: EvalPrompts) -> None:
    """The trainer as training left it at ``checkpoint`` (weights and state, loaded as a resume loads them), with
    the eval prompts answered at its step when the end of training had not answered them yet."""
    log.info("%s ends the schedule (train.max_steps=%d): finishing the run without training", checkpoint,
             trainer.args.max_steps)
    trainer._load_from_checkpoint(str(checkpoint))  # the Trainer's own loader: full weights or the adapter
    trainer.state = TrainerState.load_from_json(str(checkpoint / TRAINER_STATE))
    trainer.state.is_world_process_zero = trainer.is_world_process_zero()  # the file holds the saving process's
    if not any(row.get("step") == trainer.state.global_step for row in read_jsonl(evals.path)):
        evals.answer(trainer.model, trainer.state)


def _save_final(trainer: Trainer, run_dir: Path, save: Callable | None = None) -> None:
    """Adapter (or full weights) and tokenizer into the run folder, written to a temp folder first.
    ``save(model, folder)`` replaces ``trainer.save_model`` (a recipe that keeps other files)."""
    tmp = run_dir / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if save is None:
        trainer.save_model(str(tmp))  # gathers ZeRO-3 shards; peft models save only the adapter
    elif trainer.is_world_process_zero():
        tmp.mkdir()
        save(trainer.model, tmp)
    if trainer.is_world_process_zero():
        (tmp / "training_args.bin").unlink(missing_ok=True)
        for f in tmp.iterdir():
            f.replace(run_dir / f.name)
        tmp.rmdir()


def _write_run_info(cfg: RunConfig, run_dir: Path, trainer: Trainer, trainable: int, total: int, seconds: float,
                    kind: str, extra: dict | None = None) -> None:
    """run.json: what the run did (base, method and data are in run_config.yaml, stored once); ``extra``: the
    recipe's keys (a multimodal run: vision_encoder, stage, adapter)."""
    rows = read_jsonl(run_dir / METRICS_NAME)
    # the last logged loss; a run shorter than logging_steps logged none, only the Trainer's mean train_loss
    losses = [row for row in rows if "loss" in row] or [{"loss": row["train_loss"]} for row in rows if "train_loss" in row]
    info = {
        "name": assistant_name(cfg.data.train_file),  # the identity data's name, else None
        "adapter": cfg.quant.method != "full",
        "layout": "llama",
        "kind": kind,  # pretrain | mixed | chat: which report fits the run
        "steps": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "final_loss": losses[-1]["loss"] if losses else None,
        "tokens_seen": trainer.state.num_input_tokens_seen,
        "trainable_params": trainable,
        "total_params": total,
        "train_seconds_last_session": round(seconds, 2),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **(extra or {}),
    }
    write_json(run_dir / RUN_INFO_NAME, info)
