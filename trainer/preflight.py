"""What would stop a run before its first step, checked without loading a model: what ``assistant train --check``
reports. The paths it reads, and what it needs of this machine (QLoRA: a CUDA GPU and bitsandbytes).

Each check is the first one the loader that training calls makes (``model.read_config`` for a model folder,
``find_files`` for a data source, the LLaVA reader's for its file and every picture (opened in full, which
training does step by step), the stage-1 projector's;
the machine's are the ones training makes), so a problem reads here as training would say it, one line each,
all of them at once.
"""
from __future__ import annotations

from typing import Callable

from myassistant.model import CheckpointError, check_vision_encoder, read_config
from myassistant.trainer.config import ConfigError, RunConfig
from myassistant.trainer.data.corpus import find_files
from myassistant.trainer.data.formats import DataError


def run_problems(cfg: RunConfig) -> list[str]:
    """One message per path of ``cfg`` that is not there (or is no model folder where one is needed), and per thing
    the run needs that this machine lacks."""
    checks: list[Callable[[], object]] = [lambda: read_config(cfg.model.base)]
    if cfg.vision.encoder:
        from myassistant.trainer.multimodal.data import load_llava_records
        from myassistant.trainer.multimodal.model import check_projector_source

        # every record read and every picture opened in full: a truncated file training would decode hours in
        checks += [lambda: check_vision_encoder(cfg.vision.encoder), lambda: check_projector_source(cfg),
                   lambda: load_llava_records(cfg.data.train_file, cfg.data.image_folder or None, decode=True)]
    else:
        paths = [s.path for s in cfg.data.sources] or [cfg.data.train_file]
        checks += [lambda path=path: find_files(path) for path in paths]
    if cfg.quant.method == "qlora":
        from myassistant.trainer.lora import bnb_config

        checks.append(lambda: bnb_config(cfg.quant))
    problems = []
    for check in checks:
        try:
            check()
        except (CheckpointError, ConfigError, DataError) as err:
            problems.append(str(err))
    return problems
