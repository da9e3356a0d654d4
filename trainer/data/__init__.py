"""Training data: files in any supported format → records → token ids and labels, packed and collated."""
from .dataset import (IGNORE_INDEX, collate, count_duplicates, describe, load_records, pack, render_conversation,
                      tokenize_records)
from .formats import FORMATS, DataError, read_records

__all__ = ["DataError", "FORMATS", "IGNORE_INDEX", "collate", "count_duplicates", "describe", "load_records", "pack",
           "read_records", "render_conversation", "tokenize_records"]
