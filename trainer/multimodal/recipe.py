"""The multimodal recipe for ``trainer.train``: LLaVA records → tokens with image tokens → the stage's Llava.

``trainer.train.train`` runs it when ``vision.encoder`` is set; the Trainer, checkpoints, resume, logs
and the run folder are the text path's. What differs is here: the data (``trainer.multimodal.data``),
the model (``trainer.multimodal.model``), the batches (pixel values added to the text collator's), and
what the run folder keeps (projector, adapter, processor; run.json says ``vision_encoder`` and ``stage``).
"""
from __future__ import annotations

import functools

from myassistant.model import image_token_count
from myassistant.trainer import data as data_lib
from myassistant.trainer.config import RunConfig
from myassistant.trainer.data.sources import TrainingData
from myassistant.trainer.multimodal import data as mm_data
from myassistant.trainer.multimodal.model import build_training_model, llava_of, save_run_weights
from myassistant.trainer.train import Recipe


def multimodal_recipe(cfg: RunConfig) -> Recipe:
    records = mm_data.load_llava_records(cfg.data.train_file, cfg.data.image_folder or None, fmt=cfg.data.format)
    model, processor = build_training_model(cfg)
    dataset = mm_data.tokenize_llava(records, processor.tokenizer, cfg.data.max_length,
                                     image_token_count(llava_of(model)))
    if cfg.data.pack:
        dataset = data_lib.pack(dataset, cfg.data.max_length)
    data = TrainingData(dataset, len(records), sum(map(len, dataset["input_ids"])), chat=True, kind="pictures")
    wrap = functools.partial(_with_pictures, image_processor=processor.image_processor)
    return Recipe(processor.tokenizer, data, model, wrap_collate=wrap,
                  save=functools.partial(_save, processor=processor),
                  run_info={"vision_encoder": cfg.vision.encoder, "stage": cfg.vision.stage,
                            "adapter": cfg.vision.stage == "finetune", "projector_from": cfg.vision.projector or None})


def _with_pictures(collate, *, image_processor):
    return functools.partial(mm_data.collate, text_collate=collate, image_processor=image_processor)


def _save(model, folder, *, processor) -> None:
    save_run_weights(model, processor, folder)
