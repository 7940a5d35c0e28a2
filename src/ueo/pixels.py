"""What an image's pixels are, as RGB: one rule for image files and for PIL images given directly.

EXIF orientation applied; transparency composited over white; high bit depths scaled to 8 bits by their
own range: 16-bit integers (I;16) / 256, 32-bit integers (I) / 256 when they fit 16 bits else / 2**23,
floats (F) in [0, 1] x 255, other floats clipped to [0, 255]; palettes, CMYK, grey and the rest
converted by PIL.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

TRANSPARENT_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def as_rgb(image: Image.Image) -> Image.Image:
    """The RGB image ueo sees of ``image`` (see the module's docstring)."""
    image = ImageOps.exif_transpose(image)
    if image.mode in TRANSPARENT_MODES or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.split()[-1])
        return background
    if image.mode.startswith("I;16"):
        values = np.asarray(image, dtype=np.float64) / 256
        image = Image.fromarray(np.clip(values, 0, 255).astype(np.uint8))
    elif image.mode == "I":
        values = np.asarray(image, dtype=np.float64)
        scale = 256 if values.max(initial=0) <= 65535 else 2**23  # (PIL's "I" is signed 32-bit)
        image = Image.fromarray(np.clip(values / scale, 0, 255).astype(np.uint8))
    elif image.mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64))
        if values.size and values.min() >= 0 and values.max() <= 1:
            values = values * 255
        image = Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8))
    return image.convert("RGB")
