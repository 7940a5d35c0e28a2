"""What an image's pixels are, as RGB: one rule for image files and for PIL images given directly.

EXIF orientation applied; transparency composited over white; integers of more than 8 bits (I;16, I)
scaled to 8 bits by the data's own range: divided by 2**(b - 8), where b is the depth of the data: the
fewest bits that hold the image's largest value, rounded up to the depths sensors record (8, 10, 12, 14,
16; above 16 bits as they are). So 8-bit values stored in 16 or 32 bits stay as they are, 12-bit data in
16-bit files is divided by 16, and 16-bit data by 256 however dark the image (negative values clip to 0);
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
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(values / bit_scale(values), 0, 255).astype(np.uint8))
    elif image.mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64))
        if values.size and values.min() >= 0 and values.max() <= 1:
            values = values * 255
        image = Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8))
    return image.convert("RGB")


def bit_scale(values: np.ndarray) -> float:
    """2**(b - 8) for the depth b of integer ``values`` (see the module): what maps the data's own range to 8 bits."""
    bits = max(8, int(np.ceil(np.log2(max(float(values.max(initial=0)), 0.0) + 1))))
    if bits <= 16:
        bits += bits % 2  # 8, 10, 12, 14 or 16
    return float(2 ** (bits - 8))
