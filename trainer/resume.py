"""The run folder before a training starts: a new run's folder checked empty, or ``--resume``'s checkpoint chosen.

A checkpoint-N folder is complete once the Trainer wrote its ``trainer_state.json`` (written last); a folder
without it is what a kill while saving leaves, removed before training. A resumed run keeps what its checkpoints'
weights are of (``RESUME_FIXED``: base, dtype, method, adapter shape).
"""
from __future__ import annotations

import json
import logging
import shutil
import zipfile
from pathlib import Path

from safetensors import SafetensorError, safe_open

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


def unreadable_file(checkpoint: Path) -> str | None:
    """What makes a checkpoint unusable, naming its first file that cannot be read back (a disk that filled up, a
    copy cut short); None when each reads: safetensors' header, torch.save's zip directory (both at the ends a cut
    loses), JSON. Reads no tensor."""
    try:  # another process of the run may have removed it just now
        files = sorted(p for p in checkpoint.iterdir() if p.is_file())
    except OSError as err:
        return f"{checkpoint} cannot be read ({err.strerror})"
    for path in files:
        try:
            if path.suffix == ".safetensors":
                with safe_open(str(path), framework="pt"):
                    pass
            elif path.suffix in (".pt", ".pth", ".bin"):
                zipfile.ZipFile(path).close()
            elif path.suffix == ".json":
                json.loads(path.read_text(encoding="utf-8"))
        except (SafetensorError, zipfile.BadZipFile, ValueError, OSError) as err:
            why = str(err).splitlines()[0] if str(err) else type(err).__name__
            return f"{path} cannot be read ({why})"
    return None


def _readable_checkpoint(checkpoints: list[Path], main: bool) -> Path:
    """The newest of ``checkpoints`` whose files read; newer damaged ones are named and (``main``) removed."""
    damaged: list[tuple[Path, str]] = []
    for folder in reversed(checkpoints):
        problem = unreadable_file(folder)
        if problem is None:
            for bad, why in damaged:
                log.warning("%s is damaged: %s; resuming from %s%s", bad.name, why, folder.name,
                            f", removing {bad.name}" if main else "")
                if main:
                    shutil.rmtree(bad)
            return folder
        damaged.append((folder, problem))
    raise ConfigError(f"--resume: {damaged[0][1]}, and no earlier checkpoint in {damaged[0][0].parent} is whole to "
                      "resume from; remove its checkpoint-N folders and train without --resume, or train into another "
                      "train.output_dir")


def remove_run(run_dir: Path) -> None:
    """Everything in ``run_dir`` but the lock this training holds: its weights, checkpoints, logs, config."""
    log.warning("--overwrite: removing the run in %s", run_dir)
    for path in run_dir.iterdir():
        if path.name != runlock.LOCK_NAME:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def _remove_partial_checkpoints(folders: list[Path]) -> None:
    for folder in folders:  # a kill while saving leaves a folder without trainer_state.json
        log.warning("removing incomplete checkpoint %s", folder)
        shutil.rmtree(folder)


def holds_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a finished run or one with a complete checkpoint."""
    return run_dir.is_dir() and ((run_dir / RUN_INFO_NAME).exists() or bool(complete_checkpoints(run_dir)))


def prepare_run_dir(run_dir: Path, cfg: RunConfig, resume: bool, main: bool = True,
                    overwrite: bool = False) -> Path | None:
    """Check the run folder against --resume; return the checkpoint to resume from. ``main`` cleans up;
    ``overwrite`` (--overwrite) lets a run the folder holds be trained again from the start: it is left as it is here,
    for ``train`` to ``remove_run`` once the new run's data and model have loaded (a typo must not cost the old run)."""
    if not resume:
        if holds_run(run_dir):
            if not overwrite:
                raise ConfigError(f"train.output_dir: {run_dir} already holds a run; add --resume to continue it, "
                                  "--overwrite to train it again from the start, or choose another train.output_dir")
            return None
        names = {p.name for p in run_dir.iterdir()} if run_dir.is_dir() else set()
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
    if (run_dir / RUN_INFO_NAME).exists() and 0 < cfg.train.max_steps <= checkpoint_step(last):
        return last  # a finished run: nothing is loaded from it
    return _readable_checkpoint(checkpoints, main)


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
        raise ConfigError(f"--resume: the checkpoints were trained with {', '.join(f'{k}={changed[k]!r}' for k in fixed)} "
                          f"({saved}), and this run changes {'it' if len(fixed) == 1 else 'them'}; resume with "
                          f"{'that' if len(fixed) == 1 else 'those'}, or start a new run in another train.output_dir")
    if changed:
        log.warning("resuming with a config that differs from %s in: %s", saved, ", ".join(changed))
