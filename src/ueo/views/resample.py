"""Resampling as PIL does it, on tensors, for boxes with fractional corners.

PIL (and so torchvision's transforms on PIL images, and open_clip's preprocessing) resizes each axis on
its own with a convolution: output pixel ``o`` of a box ``[start, end)`` resized to ``n`` pixels is centred
at ``c_o = start + (o + 0.5) * s`` with ``s = (end - start) / n``, and takes the input pixels ``j`` with
weights ``k((j + 0.5 - c_o) / f)``, normalised to sum to 1, where ``f = max(s, 1)`` widens the kernel
when shrinking (antialiasing) and ``k`` is the bicubic kernel (a = -0.5, support 2) or the triangle
(bilinear, support 1). For 8-bit images PIL rounds each pass's result to whole levels and clips it to
the pixel range; so does this module.

Written as a matrix per axis, a resize is ``rows @ image @ cols.T``: one small matrix product per image
on any device. The box may have fractional corners, which is what cutting the reference's crop (drawn on
the original image) out of a smaller decoded copy needs.
"""

from __future__ import annotations

import torch

KERNEL_SUPPORT = {"bicubic": 2.0, "bilinear": 1.0}


def kernel(name: str, x: torch.Tensor) -> torch.Tensor:
    """PIL's filter ``name`` at ``x`` (distance in input pixels, already divided by the widening)."""
    ax = x.abs()
    if name == "bilinear":
        return (1 - ax).clamp(min=0)
    a = -0.5  # PIL's bicubic
    near = ((a + 2) * ax - (a + 3)) * ax * ax + 1
    far = (((ax - 5) * ax + 8) * ax - 4) * a
    return torch.where(ax < 1, near, torch.where(ax < 2, far, torch.zeros_like(ax)))


def window(start: float, end: float, size: int, first: int, count: int, length: int, name: str) -> tuple[int, int]:
    """[lo, hi): the input pixels (of an axis of ``length``) that outputs ``first``..``first + count`` of the
    box ``[start, end)`` resized to ``size`` read."""
    scale = (end - start) / size
    support = KERNEL_SUPPORT[name] * max(scale, 1.0)
    low = start + (first + 0.5) * scale - support
    high = start + (first + count - 0.5) * scale + support
    return max(0, int(low + 0.5)), min(length, int(high + 0.5))


def matrix(
    start: float, end: float, size: int, first: int, count: int, lo: int, hi: int, name: str, device
) -> torch.Tensor:
    """[count, hi - lo] float32: outputs ``first``..``first + count`` of the box ``[start, end)`` resized to
    ``size``, as weights over the input pixels ``lo``..``hi`` (every pixel any of them reads)."""
    scale = (end - start) / size
    widen = max(scale, 1.0)
    centres = start + (torch.arange(first, first + count, device=device, dtype=torch.float64) + 0.5) * scale
    pixels = torch.arange(lo, hi, device=device, dtype=torch.float64) + 0.5
    weights = kernel(name, (pixels[None, :] - centres[:, None]) / widen)
    return (weights / weights.sum(dim=1, keepdim=True)).float()


def resize_box(
    image: torch.Tensor,
    box: tuple[float, float, float, float],
    size: tuple[int, int],
    name: str = "bicubic",
    rows: tuple[int, int] | None = None,
    cols: tuple[int, int] | None = None,
) -> torch.Tensor:
    """uint8 [3, h, w] -> float [3, r, c] in [0, 1]: the box ``(left, top, right, bottom)`` (input pixel
    coordinates, fractional allowed) resized to ``size`` = (height, width) as PIL resizes it, keeping only
    output rows ``rows`` = (first, count) and columns ``cols`` (default: all)."""
    left, top, right, bottom = box
    height, width = size
    r0, rn = rows if rows is not None else (0, height)
    c0, cn = cols if cols is not None else (0, width)
    _, h, w = image.shape
    x_lo, x_hi = window(left, right, width, c0, cn, w, name)
    y_lo, y_hi = window(top, bottom, height, r0, rn, h, name)
    along_x = matrix(left, right, width, c0, cn, x_lo, x_hi, name, image.device)
    along_y = matrix(top, bottom, height, r0, rn, y_lo, y_hi, name, image.device)
    region = image[:, y_lo:y_hi, x_lo:x_hi].float()
    # The horizontal pass first, its result rounded to whole levels and clipped to the pixel range, then the
    # vertical pass, rounded and clipped: as PIL does it for 8-bit images. (Pillow 13 sometimes runs the
    # vertical pass first; the order matters only where a pass overshoots the range.)
    across = (region @ along_x.T).round_().clamp_(0, 255)
    return (along_y @ across).round_().clamp_(0, 255).div_(255)
