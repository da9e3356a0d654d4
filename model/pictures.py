"""Opening a picture file the same way for training and serving."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

TOO_LARGE = "more pixels than Pillow opens (its guard against decompression bombs); downscale it"


def open_picture(path: str | Path, decode: bool = True) -> Image.Image | None:
    """The picture at `path` as RGB as a viewer shows it, or only its header read (`decode` False: None): turned
    as its EXIF orientation says (phone photos), transparent parts on white, 16-bit grayscale scaled to 8 bits.
    Pillow's decompression-bomb warning for pictures of ~89-179 megapixels, which open fine, is not printed; over
    its limit Image.DecompressionBombError is raised as before (callers say TOO_LARGE)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as image:
            if not decode:
                return None
            image.load()
            return as_rgb(ImageOps.exif_transpose(image))


def as_rgb(image: Image.Image) -> Image.Image:
    """RGB pixels of any mode. Pillow's own convert("RGB") drops an alpha channel (a dark logo on a transparent
    background came out all black) and clips 16-bit grayscale at 255 (a 16-bit PNG came out nearly all white)."""
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):  # 16-bit samples (PNG), read as integers
        image = Image.fromarray((np.asarray(image, dtype=np.float64) / 257).clip(0, 255).round().astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")
