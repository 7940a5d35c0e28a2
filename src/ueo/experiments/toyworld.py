"""A small generated world of captioned images, for an offline demo where adaptation really matters.

24 classes = 12 shapes x 2 colours, class index = shape * 2 + colour, names like "red circle".
The first 8 shapes (16 classes) are the KNOWN list; the last 4 shapes are unknown classes chosen to be
unlike the known ones (no ring next to the circle). Images are 64 x 64 with a random position, size
(radius 11-26 px) and full rotation, in one of four styles (visual domains):

  clean     flat, desaturated background             (pretraining)
  sketch    outline only, on white paper              (pretraining)
  noisy     low-frequency texture or stripes + noise  (pretraining)
  painting  brush strokes, blur, hue shift, sepia     (held out: the adaptation target)

and four more held out, never seen in pretraining, for measuring choices across shifts (mild to severe):

  faded     clean, washed out: lower contrast and saturation, a little blur
  mosaic    noisy, then coarse pixel blocks (the outline lost to 8-px squares)
  night     clean, darkened, blue-tinted, strong sensor noise
  blurred   clean, under a strong blur (the corners and points of the shapes lost)

Every image is a pure function of (style, class, index, seed): the world is deterministic.
Protocols (mirroring the benchmarks' class shifts, docs/protocols.md, with K = 16 known classes):
  cda: 0-15   pda: 0-11   oda: 0-19   opda: 0-11 + 16-19   test: 0-23
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter

IMAGE_SIZE = 64
SHAPES = [
    "circle",
    "square",
    "triangle",
    "star",
    "heart",
    "cross",
    "moon",
    "arrow",
    "bar",
    "hourglass",
    "house",
    "bolt",
]
COLOURS = ["red", "blue"]
CLASS_NAMES = [f"{colour} {shape}" for shape in SHAPES for colour in COLOURS]
NUM_KNOWN = 16
STYLES = ["clean", "sketch", "noisy", "painting", "faded", "mosaic", "night", "blurred"]
PRETRAIN_STYLES = ["clean", "sketch", "noisy"]
TARGET_STYLE = "painting"
HELD_OUT_STYLES = ["painting", "faded", "mosaic", "night", "blurred"]  # never seen in pretraining
SCENARIOS: dict[str, list[int]] = {
    "cda": list(range(16)),
    "pda": list(range(12)),
    "oda": list(range(20)),
    "opda": list(range(12)) + list(range(16, 20)),
}
TEST_CLASSES = list(range(24))
# The toy vocabulary for naming groups of unknown images: the world's 24 names and distractors that it never
# draws, made of the words the toy CLIP learned (its 2 colours and 12 shapes): each word alone, a shape in
# both colours, and two shapes together. (A word it never saw is an untrained token embedding, which no real
# CLIP has: such names would test the toy's untrained corners, not the naming.)
VOCABULARY = (
    CLASS_NAMES
    + COLOURS
    + SHAPES
    + [f"red and blue {shape}" for shape in SHAPES]
    + [f"{a} and {b}" for i, a in enumerate(SHAPES) for b in SHAPES[i + 1 :]]
)
CAPTION_TEMPLATES = [
    "a photo of a {}.",
    "a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a small {}.",
    "a big {}.",
    "the {}.",
    "a drawing of a {}.",
]
STYLE_TEMPLATES = {
    "clean": "a clean render of a {}.",
    "sketch": "a sketch of a {}.",
    "noisy": "a noisy photo of a {}.",
    "painting": "a painting of a {}.",
}
BASE_STYLE = {"faded": "clean", "mosaic": "noisy", "night": "clean", "blurred": "clean"}  # drawn as, then altered


def _circle(n=36):
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    return np.stack([np.cos(t), np.sin(t)], 1)


def _star():
    t = np.linspace(0, 2 * math.pi, 10, endpoint=False) - math.pi / 2
    r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def _heart():
    t = np.linspace(0, 2 * math.pi, 40, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return np.stack([x, y + 2], 1) / 17


def _moon():
    a = math.radians(50)
    outer = [(math.cos(t), math.sin(t)) for t in np.linspace(a, 2 * math.pi - a, 24)]
    cx, r = 0.5, math.hypot(math.cos(a) - 0.5, math.sin(a))
    start, stop = math.atan2(-math.sin(a), math.cos(a) - cx) + 2 * math.pi, math.atan2(math.sin(a), math.cos(a) - cx)
    inner = [(cx + r * math.cos(u), r * math.sin(u)) for u in np.linspace(start, stop, 16)]
    return np.array(outer + inner)


_POLYGONS = {
    "circle": _circle(),
    "square": np.array([(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]),
    "triangle": np.array([(0, -1), (0.87, 0.5), (-0.87, 0.5)]),
    "star": _star(),
    "heart": _heart(),
    "cross": np.array(
        [
            (-0.3, -1),
            (0.3, -1),
            (0.3, -0.3),
            (1, -0.3),
            (1, 0.3),
            (0.3, 0.3),
            (0.3, 1),
            (-0.3, 1),
            (-0.3, 0.3),
            (-1, 0.3),
            (-1, -0.3),
            (-0.3, -0.3),
        ]
    ),
    "moon": _moon(),
    "arrow": np.array([(-1, -0.2), (0.2, -0.2), (0.2, -0.6), (1, 0), (0.2, 0.6), (0.2, 0.2), (-1, 0.2)]),
    "bar": np.array([(-1, -0.25), (1, -0.25), (1, 0.25), (-1, 0.25)]),
    "hourglass": np.array([(-0.7, -1), (0.7, -1), (0.1, 0), (0.7, 1), (-0.7, 1), (-0.1, 0)]),
    "house": np.array([(-0.7, 1), (-0.7, 0.05), (-0.95, 0.05), (0, -1), (0.95, 0.05), (0.7, 0.05), (0.7, 1)]),
    "bolt": np.array([(-0.15, -1), (0.55, -1), (0.1, -0.2), (0.6, -0.2), (-0.35, 1), (-0.05, 0.1), (-0.5, 0.1)]),
}


def _colour(rng, colour: str):
    jitter = rng.integers(-25, 26, size=3)
    base = np.array([215, 40, 35]) if colour == "red" else np.array([35, 65, 215])
    return tuple(int(v) for v in np.clip(base + jitter, 0, 255))


def _background(rng, style: str) -> Image.Image:
    s = IMAGE_SIZE
    if style == "clean":
        grey = rng.integers(120, 230)
        tint = rng.integers(-12, 13, size=3)
        return Image.new("RGB", (s, s), tuple(int(v) for v in np.clip(grey + tint, 0, 255)))
    if style == "sketch":
        return Image.new("RGB", (s, s), (250, 250, 246))
    if style == "noisy":
        if rng.random() < 0.5:
            small = rng.integers(60, 200, size=(rng.integers(3, 8), rng.integers(3, 8), 3)).astype(np.uint8)
            return Image.fromarray(small).resize((s, s), Image.Resampling.BICUBIC)
        period, angle = rng.uniform(5, 14), rng.uniform(0, math.pi)
        yy, xx = np.mgrid[0:s, 0:s]
        wave = np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period)
        c1, c2 = rng.integers(60, 200, size=(2, 3))
        mix = (wave[..., None] + 1) / 2
        return Image.fromarray((c1 * mix + c2 * (1 - mix)).astype(np.uint8))
    # painting: brush strokes on a canvas colour
    image = Image.new("RGB", (s, s), tuple(int(v) for v in rng.integers(150, 230, size=3)))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(6, 12)):
        x0, y0 = rng.integers(-10, s + 10, size=2)
        angle, length = rng.uniform(0, math.pi), rng.uniform(15, 50)
        x1, y1 = x0 + length * math.cos(angle), y0 + length * math.sin(angle)
        draw.line(
            [(int(x0), int(y0)), (int(x1), int(y1))],
            width=int(rng.integers(4, 10)),
            fill=tuple(int(v) for v in rng.integers(90, 220, size=3)),
        )
    return image


def _paint_filter(rng, image: Image.Image) -> Image.Image:
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(1.0, 2.5)))
    hsv = np.asarray(image.convert("HSV")).astype(np.int16)
    hsv[..., 0] = (hsv[..., 0] + int(255 * rng.uniform(0.03, 0.08))) % 256
    image = Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB")
    image = ImageEnhance.Color(image).enhance(rng.uniform(0.75, 1.0))
    sepia = Image.new("RGB", image.size, (112, 66, 20))
    image = Image.blend(image, sepia, rng.uniform(0.1, 0.25))
    pixels = np.asarray(image).astype(np.float32) + rng.normal(0, 8, size=(IMAGE_SIZE, IMAGE_SIZE, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def render(style: str, label: int, index: int, seed: int = 0) -> Image.Image:
    """The image number ``index`` of class ``label`` in ``style``: a deterministic 64x64 RGB PIL image."""
    if style not in STYLES:
        raise ValueError(f"Unknown style {style!r}; choose one of {STYLES}.")
    rng = np.random.default_rng([seed, STYLES.index(style), label, index])
    shape, colour = SHAPES[label // 2], COLOURS[label % 2]
    altered, style = style, BASE_STYLE.get(style, style)
    image = _background(rng, style)
    radius = rng.uniform(11, 26)
    cx, cy = rng.uniform(radius, IMAGE_SIZE - radius, size=2)
    theta = rng.uniform(0, 2 * math.pi)
    rotation = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    points = _POLYGONS[shape] @ rotation.T * radius + (cx, cy)
    xy = [tuple(p) for p in points.tolist()]
    draw = ImageDraw.Draw(image)
    fill = _colour(rng, colour)
    if style == "sketch":
        draw.polygon(xy, outline=fill, width=2)
    else:
        draw.polygon(xy, fill=fill)
    if style == "noisy":
        pixels = np.asarray(image).astype(np.float32) + rng.normal(0, 25, size=(IMAGE_SIZE, IMAGE_SIZE, 3))
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    elif style == "painting":
        image = _paint_filter(rng, image)
    return _alter(rng, altered, image) if altered in BASE_STYLE else image


def _alter(rng, style: str, image: Image.Image) -> Image.Image:
    """The held-out styles drawn from another one (``BASE_STYLE``), then changed."""
    if style == "faded":
        image = ImageEnhance.Contrast(image).enhance(rng.uniform(0.65, 0.8))
        image = ImageEnhance.Color(image).enhance(rng.uniform(0.75, 0.9))
        return image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.7)))
    if style == "mosaic":
        block = int(rng.integers(10, 14))
        small = image.resize((IMAGE_SIZE // block, IMAGE_SIZE // block), Image.Resampling.BOX)
        return small.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.NEAREST)
    if style == "night":
        pixels = np.asarray(image).astype(np.float32) * rng.uniform(0.6, 0.7) + np.array([0, 5, 25])
        pixels += rng.normal(0, 12, size=pixels.shape)
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(2.5, 3.5)))  # blurred


class ToyImages(torch.utils.data.Dataset):
    """``per_class`` images of each class in ``classes`` in one style; items are (PIL image, class index).

    ``offset`` shifts the image indices so that disjoint sets (adaptation vs test) can be drawn.
    Images are rendered once, on construction.
    """

    def __init__(self, style: str, classes: Sequence[int], per_class: int, seed: int = 0, offset: int = 0):
        self.samples = [(label, offset + i) for label in classes for i in range(per_class)]
        self.images = [render(style, label, index, seed) for label, index in self.samples]

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        return self.images[i], self.samples[i][0]


def caption(rng: np.random.Generator, style: str, label: int) -> str:
    """A random caption of class ``label`` in ``style`` (the style is named 30% of the time)."""
    template = STYLE_TEMPLATES[style] if rng.random() < 0.3 else CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))]
    return template.format(CLASS_NAMES[label])


def scenario(name: str, per_class: int = 64, test_per_class: int = 100, seed: int = 0, style: str = TARGET_STYLE):
    """(adaptation set, test set) of a protocol in a held-out style; labels >= 16 are unknown."""
    if name not in SCENARIOS:
        raise ValueError(f"Unknown scenario {name!r}; choose one of {list(SCENARIOS)}.")
    train = ToyImages(style, SCENARIOS[name], per_class, seed=seed)
    test = ToyImages(style, TEST_CLASSES, test_per_class, seed=seed, offset=100_000)
    return train, test
