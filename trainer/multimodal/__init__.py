"""Multimodal (LLaVA) training: picture data, the two stages' models, merge and the picture report.

``data`` (LLaVA records, image checks, image-token expansion, pixel batches), ``model`` (what each stage
trains, what a run folder keeps), ``recipe`` (how ``trainer.train`` runs it), ``merge`` (run → standalone
Llava folder), ``report`` (held-out picture accuracy), ``shapes`` (the synthetic picture set of the proof).
"""
from .data import collate, describe_llava, has_images, load_llava_records, open_image, tokenize_llava
from .shapes import write_shapes_dataset

__all__ = ["collate", "describe_llava", "has_images", "load_llava_records", "open_image", "tokenize_llava",
           "write_shapes_dataset"]
