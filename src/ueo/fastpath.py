"""The fast path: decode every image once into a uint8 cache, make the views of whole batches on the device.

The reference decodes each JPEG with PIL and augments it in DataLoader workers at every step of every
epoch; on a GPU that, not the model, is the bottleneck. Here:

  * ``ImageCache`` holds each image decoded once (EXIF orientation, RGB), shrunk so that its longer side
    is at most ``max_side`` (default 2 x the model's input size; smaller images stay as they are), as
    uint8 pixels in one flat tensor: on the GPU when it fits, else in pinned host memory.
  * ``crop_boxes`` draws the RandomResizedCrop boxes + horizontal flips of a batch from the per-sample
    seeds of the plain path (``views.view_seed``), with torchvision's sampling rule.
  * ``augment`` cuts each box out of the cache, resizes it to the input size (bicubic, antialiased),
    flips and normalises, for a whole batch on the device, without a host synchronisation.
  * ``center_views`` is the eval view (resize the shorter side, center crop) made the same way.
  * ``CachedImages`` offers these as an image source with the same methods as ``views.LoadedImages``.

``CachedViews`` applies exactly the same per-sample operations through an ordinary Dataset, so that the
plain loop and the fast loop can be compared number for number (tests/test_fastpath.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .views import Batch, ViewSpec, chunks, empty_batch, view_seed

Box = tuple[int, int, int, int, bool]  # top, left, height, width, flip


@dataclass
class ImageCache:
    """Decoded uint8 RGB images, stored flat: image i is ``pixels[offsets[i]:offsets[i] + 3*h*w]`` as [3, h, w]."""

    pixels: torch.Tensor  # uint8 [total]
    offsets: list[int]
    sizes: list[tuple[int, int]]  # (h, w)
    labels: list[int]

    def __len__(self):
        return len(self.sizes)

    def image(self, i: int) -> torch.Tensor:
        h, w = self.sizes[i]
        return self.pixels[self.offsets[i] : self.offsets[i] + 3 * h * w].view(3, h, w)

    @property
    def nbytes(self) -> int:
        return self.pixels.numel()

    def to(self, device) -> ImageCache:
        return ImageCache(self.pixels.to(device, non_blocking=True), self.offsets, self.sizes, self.labels)


def cache_side(spec: ViewSpec) -> int:
    """The longest side an image keeps in the cache: twice the model's input size."""
    return 2 * spec.size


def _decode(image: Image.Image, max_side: int) -> np.ndarray:
    longer = max(image.size)
    if longer > max_side:
        scale = max_side / longer
        image = image.resize(
            (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.BICUBIC
        )
    return np.asarray(image.convert("RGB")).transpose(2, 0, 1)


def build_cache(
    dataset, max_side: int, device: torch.device | None = None, threads: int = 8, progress: bool = False
) -> ImageCache:
    """Decode every (PIL image, label) item of ``dataset`` once. ``device``: where the pixels live (CUDA when
    given and it fits, else pinned host memory on a CUDA machine, else plain host memory)."""
    from tqdm.auto import tqdm

    def load(i):
        image, label = dataset[i][0], dataset[i][1]
        if torch.is_tensor(image):
            raise TypeError("The fast path caches PIL images; this dataset yields tensors.")
        return _decode(image, max_side), -1 if label is None else int(label)

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        items = list(
            tqdm(
                pool.map(load, range(len(dataset))),
                total=len(dataset),
                desc="decode",
                unit="img",
                disable=not progress,
                leave=False,
            )
        )
    sizes = [(a.shape[1], a.shape[2]) for a, _ in items]
    lengths = [a.size for a, _ in items]
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64).tolist()
    flat = torch.from_numpy(np.concatenate([a.reshape(-1) for a, _ in items]))
    cache = ImageCache(flat, offsets, sizes, [label for _, label in items])
    if device is not None and torch.device(device).type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if cache.nbytes < 0.5 * free:
            return cache.to(device)
        cache.pixels = cache.pixels.pin_memory()
    return cache


def crop_box(generator: torch.Generator, height: int, width: int, spec: ViewSpec | None = None) -> Box:
    """(top, left, h, w, flip) of RandomResizedCrop + RandomHorizontalFlip, torchvision's sampling rule, with
    the crop scale, ratio and flip probability of ``spec`` (default: the reference's)."""
    scale, ratio, flip_p = (spec.crop_scale, spec.crop_ratio, spec.flip) if spec else ((0.5, 1.0), (3 / 4, 4 / 3), 0.5)
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator).item())
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,), generator=generator).item())
            left = int(torch.randint(0, width - w + 1, size=(1,), generator=generator).item())
            break
    else:  # fallback to a central crop, as torchvision does
        in_ratio = width / height
        if in_ratio < ratio[0]:
            w, h = width, int(round(width / ratio[0]))
        elif in_ratio > ratio[1]:
            h, w = height, int(round(height * ratio[1]))
        else:
            w, h = width, height
        top, left = (height - h) // 2, (width - w) // 2
    flip = bool(torch.rand(1, generator=generator).item() < flip_p)
    return top, left, h, w, flip


def crop_boxes(
    cache: ImageCache, indices: Sequence[int], seed: int, epoch: int, spec: ViewSpec | None = None
) -> list[Box]:
    """The crop boxes of a batch, from the per-sample seeds (seed, epoch, index) of the plain path."""
    boxes = []
    for i in indices:
        generator = torch.Generator().manual_seed(view_seed(seed, epoch, int(i)))
        h, w = cache.sizes[int(i)]
        boxes.append(crop_box(generator, h, w, spec))
    return boxes


def _resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 [3, h, w] -> float [3, height, width] in [0, 1], bicubic with antialiasing, clamped like PIL."""
    resized = F.interpolate(
        image[None].float(), size=(height, width), mode="bicubic", antialias=True, align_corners=False
    )[0]
    return (resized / 255.0).clamp_(0, 1)


def _normalise(batch: torch.Tensor, spec: ViewSpec) -> torch.Tensor:
    mean = torch.as_tensor(spec.mean, dtype=batch.dtype, device=batch.device).view(1, 3, 1, 1)
    std = torch.as_tensor(spec.std, dtype=batch.dtype, device=batch.device).view(1, 3, 1, 1)
    return (batch - mean) / std


def augment(cache: ImageCache, indices: Sequence[int], boxes: Sequence[Box], spec: ViewSpec, device) -> torch.Tensor:
    """A normalised float batch [B, 3, size, size] of the given crop boxes, on ``device``."""
    views = []
    for i, (top, left, h, w, flip) in zip(indices, boxes):
        crop = cache.image(int(i))[:, top : top + h, left : left + w].to(device, non_blocking=True)
        view = _resize(crop, spec.size, spec.size)
        views.append(view.flip(-1) if flip else view)
    return _normalise(torch.stack(views), spec)


def center_views(cache: ImageCache, indices: Sequence[int], spec: ViewSpec, device) -> torch.Tensor:
    """Eval views made like the model's own preprocessing (bicubic, antialiased), normalised:
    "shortest": resize the shorter side to the input size, center crop; "squash": resize both sides;
    "longest": resize the longer side, pad the rest with ``fill_color`` (centred)."""
    size = spec.size
    views = []
    for i in indices:
        image = cache.image(int(i)).to(device, non_blocking=True)
        h, w = image.shape[1:]
        if spec.resize_mode == "squash":
            views.append(_resize(image, size, size))
            continue
        scale = size / (max(h, w) if spec.resize_mode == "longest" else min(h, w))
        if spec.resize_mode == "longest":
            nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
            canvas = torch.full((3, size, size), spec.fill_color / 255.0, device=image.device)
            top, left = (size - nh) // 2, (size - nw) // 2
            canvas[:, top : top + nh, left : left + nw] = _resize(image, nh, nw)
            views.append(canvas)
            continue
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        top, left = (nh - size) // 2, (nw - size) // 2
        views.append(_resize(image, nh, nw)[:, top : top + size, left : left + size])
    return _normalise(torch.stack(views), spec)


class CachedImages:
    """The fast image source: views made on ``device`` from a decoded cache, a batch at a time."""

    def __init__(self, cache: ImageCache, spec: ViewSpec, seed: int, device):
        self.cache, self.spec, self.seed, self.device = cache, spec, seed, torch.device(device)

    def __len__(self):
        return len(self.cache)

    def _labels(self, indices: Sequence[int]) -> torch.Tensor:
        return torch.tensor([self.cache.labels[i] for i in indices], dtype=torch.long)

    def train_batches(self, batches: Sequence[Sequence[int]], epoch: int) -> Iterator[Batch]:
        for indices in batches:
            if not indices:
                yield empty_batch()
                continue
            boxes = crop_boxes(self.cache, indices, self.seed, epoch, self.spec)
            yield (
                augment(self.cache, indices, boxes, self.spec, self.device),
                self._labels(indices),
                torch.tensor(indices),
            )

    def eval_batches(self, indices: Sequence[int], batch_size: int) -> Iterator[Batch]:
        for chunk in chunks(indices, batch_size):
            yield center_views(self.cache, chunk, self.spec, self.device), self._labels(chunk), torch.tensor(chunk)


class CachedViews(torch.utils.data.Dataset):
    """The fast path's views, one sample at a time, as a Dataset of normalised tensors: what the plain loop
    sees when it is given the same draws (for equivalence tests)."""

    def __init__(self, cache: ImageCache, spec: ViewSpec, seed: int, train: bool = True):
        self.cache, self.spec, self.seed, self.train = cache, spec, seed, train
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self):
        return len(self.cache)

    def __getitem__(self, i):
        if self.train:
            box = crop_boxes(self.cache, [i], self.seed, self.epoch, self.spec)
            view = augment(self.cache, [i], box, self.spec, "cpu")[0]
        else:
            view = center_views(self.cache, [i], self.spec, "cpu")[0]
        return view, self.cache.labels[i]
