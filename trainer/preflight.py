"""What would stop a run before its first step, checked without loading a model: what ``assistant train --check``
reports. The paths it reads, its data read as training reads it (without a tokenizer), and what it needs of this
machine (QLoRA: a CUDA GPU and bitsandbytes); and ``describe_data``, what ``assistant data check`` reports.

Each check is the first one the loader that training calls makes (``model.read_config`` for a model folder,
``find_files`` for a data source, the LLaVA reader's for its file and every picture (opened in full, which
training does step by step), the stage-1 projector's;
the machine's are the ones training makes), so a problem reads here as training would say it, one line each,
all of them at once.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from myassistant.model import CheckpointError, check_vision_encoder, picture_tokens, read_config
from myassistant.trainer.config import ConfigError, RunConfig
from myassistant.trainer.data import describe, load_records
from myassistant.trainer.data.corpus import TextSpec, check_file, find_files
from myassistant.trainer.data.formats import DataError
from myassistant.trainer.data.sources import describe_text, resolve_sources, source_kind
from myassistant.trainer.resume import prepare_run_dir


def run_problems(cfg: RunConfig, resume: bool = False, overwrite: bool = False) -> list[str]:
    """One message per path of ``cfg`` that is not there (or is no model folder where one is needed), per data source
    that training could not read (``data_problems``), and per thing the run needs that this machine lacks; and the
    run folder as ``train`` would find it with these --resume / --overwrite (a run there, a folder of other files)."""
    checks: list[Callable[[], object]] = [
        lambda: read_config(cfg.model.base),
        lambda: prepare_run_dir(Path(cfg.train.output_dir).resolve(), cfg, resume, main=False, overwrite=overwrite)]
    if cfg.vision.encoder:
        from myassistant.trainer.multimodal.model import check_projector_source

        checks += [lambda: check_vision_encoder(cfg.vision.encoder), lambda: check_projector_source(cfg)]
    if cfg.quant.method == "qlora":
        from myassistant.trainer.lora import bnb_config

        checks.append(lambda: bnb_config(cfg.quant))
    problems = []
    for check in checks:
        try:
            check()
        except (CheckpointError, ConfigError, DataError) as err:
            problems.append(str(err))
    return problems + data_problems(cfg)


def data_problems(cfg: RunConfig, open_pictures: bool = True) -> list[str]:
    """What training would say of the run's data before its first step, read as training reads it but without a
    tokenizer: a LLaVA file's records and every picture (opened in full, which training does step by step; with
    ``open_pictures`` False their headers, as training's start reads them: a form's check of 665K pictures), each chat
    source's records, each raw-text file's kind and encoding."""
    try:
        if cfg.vision.encoder:
            from myassistant.trainer.multimodal.data import load_llava_records

            load_llava_records(cfg.data.train_file, cfg.data.image_folder or None, fmt=cfg.data.format,
                               decode=open_pictures)
            return []
        for src in resolve_sources(cfg.data):
            if src.kind == "text":
                for path in find_files(src.path):
                    check_file(path, src.spec)
            else:
                load_records(src.path, src.format, src.spec.encoding)
    except (ConfigError, DataError) as err:
        return [str(err)]
    return []


def describe_data(path: str, *, fmt: str = "auto", spec: TextSpec | None = None, tokenizer=None, max_length: int = 2048,
                  image_folder: str | None = None, vision_encoder: str | None = None) -> tuple[dict, list[dict] | None]:
    """``assistant data check`` (and the studio's Check): a file, folder or glob read the way training reads its
    kind, and its figures: a LLaVA file (records with pictures; each picture its ``vision_encoder``'s tokens), raw
    text (documents, tokens and the blocks training sees) or chat records. Returns the figures and the records
    (None for raw text, which is streamed)."""
    from myassistant.trainer.multimodal.data import describe_llava, has_images, load_llava_records

    spec = spec or TextSpec()
    if image_folder or vision_encoder or has_images(path, spec.encoding):  # a LLaVA file: records with pictures
        records = load_llava_records(path, image_folder, fmt=fmt, decode=True)
        tokens = picture_tokens(vision_encoder) if vision_encoder else None
        return describe_llava(records, tokenizer, max_length, tokens), records
    if source_kind(path, fmt, spec) == "text":
        return describe_text(path, spec, tokenizer, max_length), None
    records = load_records(path, fmt, spec.encoding)
    return describe(records, tokenizer, max_length), records
