"""Opening a picture file the same way for training and serving."""
from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image

TOO_LARGE = "more pixels than Pillow opens (its guard against decompression bombs); downscale it"


def open_picture(path: str | Path, decode: bool = True) -> Image.Image | None:
    """The picture at `path` as RGB (grayscale, palette and RGBA converted), or only its header read (`decode`
    False: None). Pillow's decompression-bomb warning for pictures of ~89-179 megapixels, which open fine, is not
    printed; over its limit Image.DecompressionBombError is raised as before (callers say TOO_LARGE)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            if not decode:
                return None
            image.load()
            return image.convert("RGB")
