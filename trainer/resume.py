"""The run folder before a training starts: a new run's folder checked empty, or ``--resume``'s checkpoint chosen.

A checkpoint-N folder is complete once the Trainer wrote its ``trainer_state.json`` (written last); a folder
without it is what a kill while saving leaves, removed before training. A resumed run keeps what its checkpoints'
weights are of (``RESUME_FIXED``: base, dtype, method, adapter shape).
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

from myassistant.trainer import runlock
from myassistant.trainer.callbacks import truncate_jsonl
from myassistant.trainer.config import ConfigError, RunConfig, load_config
from myassistant.trainer.run_folder import (DATA_SUMMARY_NAME, EVAL_SAMPLES_NAME, METRICS_NAME, RUN_CONFIG_NAME,
                                            RUN_INFO_NAME)

log = logging.getLogger(__name__)

LOG_NAMES = {RUN_CONFIG_NAME, METRICS_NAME, EVAL_SAMPLES_NAME, DATA_SUMMARY_NAME, "tensorboard", runlock.LOCK_NAME,
             "studio"}  # studio/: the log and job file of a training the studio started
# config keys a resumed run must keep: they decide what the checkpoints' weights are (every lora.* key too, but
# RESUME_FREE)
RESUME_FIXED = ("model.base", "model.dtype", "quant.method", "vision.encoder")
RESUME_FREE = ("lora.lora_dropout",)
TRAINER_STATE = "trainer_state.json"  # the Trainer writes it last into a checkpoint-N folder


def checkpoint_step(folder: Path) -> int:
    """N of a checkpoint-N folder."""
    return int(folder.name.split("-")[-1])


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """checkpoint-N folders the Trainer finished writing (TRAINER_STATE is written last), oldest first."""
    found = [p for p in run_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    return sorted((p for p in found if (p / TRAINER_STATE).exists()), key=checkpoint_step)


def _remove_partial_checkpoints(folders: list[Path]) -> None:
    for folder in folders:  # a kill while saving leaves a folder without trainer_state.json
        log.warning("removing incomplete checkpoint %s", folder)
        shutil.rmtree(folder)


def prepare_run_dir(run_dir: Path, cfg: RunConfig, resume: bool, main: bool = True) -> Path | None:
    """Check the run folder against --resume; return the checkpoint to resume from. ``main`` cleans up."""
    if not resume:
        names = {p.name for p in run_dir.iterdir()} if run_dir.is_dir() else set()
        if RUN_INFO_NAME in names or (names and complete_checkpoints(run_dir)):
            raise ConfigError(f"train.output_dir: {run_dir} already holds a run; add --resume to continue it "
                              "or choose another train.output_dir")
        partial = list(run_dir.glob("checkpoint-*")) if names else []
        if names - LOG_NAMES - {p.name for p in partial}:
            raise ConfigError(f"train.output_dir: {run_dir} is not empty and holds no run; choose another folder")
        if main:  # what is left is a start that died before its first complete checkpoint: begin again
            _remove_partial_checkpoints(partial)
            for name in (METRICS_NAME, EVAL_SAMPLES_NAME):
                truncate_jsonl(run_dir / name, 0)
        return None
    checkpoints = complete_checkpoints(run_dir) if run_dir.is_dir() else []
    if not checkpoints:
        raise ConfigError(f"--resume: no complete checkpoint-N folder in {run_dir}; start without --resume")
    last = checkpoints[-1]
    if main:
        _remove_partial_checkpoints([p for p in run_dir.glob("checkpoint-*") if p not in checkpoints])
    _check_resumed_config(run_dir / RUN_CONFIG_NAME, cfg)
    if 0 < cfg.train.max_steps < checkpoint_step(last):
        raise ConfigError(f"--resume: train.max_steps={cfg.train.max_steps} is below the step {last.name} reached; "
                          "give a higher train.max_steps")
    return last


def _check_resumed_config(saved: Path, cfg: RunConfig) -> None:
    """Refuse what the checkpoints cannot continue (RESUME_FIXED), warn of other changes to the run's config."""
    if not saved.exists():
        return
    before, now = load_config(saved).to_dict(), cfg.to_dict()
    # each changed key with the value the run was trained with
    changed = {f"{s}.{k}": before[s][k] for s in now for k in now[s] if before[s][k] != now[s][k]}
    # what the checkpoint's weights are of: another base or adapter shape cannot continue them (and the run
    # folder would then name a base its adapter was not trained on)
    fixed = [key for key in changed if key in RESUME_FIXED or key.startswith("lora.") and key not in RESUME_FREE]
    if fixed:
        raise ConfigError(f"--resume: {', '.join(fixed)} differ from {saved}, which the checkpoints were trained "
                          f"with ({', '.join(f'{k}={changed[k]!r}' for k in fixed)}); resume with those, or "
                          "start a new run in another train.output_dir")
    if changed:
        log.warning("resuming with a config that differs from %s in: %s", saved, ", ".join(changed))
