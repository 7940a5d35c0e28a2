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

from .images import shrink
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


def build_cache(dataset, max_side: int, threads: int = 8, progress: bool = False) -> ImageCache:
    """Decode every (PIL image, label) item of ``dataset`` once, into host memory (for datasets that are
    not image files; files go through the persistent decode cache, ``ueo.cache``)."""
    from tqdm.auto import tqdm

    def load(i):
        image, label = dataset[i][0], dataset[i][1]
        if torch.is_tensor(image):
            raise TypeError("The fast path caches PIL images; this dataset yields tensors.")
        return shrink(image, max_side), -1 if label is None else int(label)

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
    offsets = np.concatenate([[0], np.cumsum([a.size for a, _ in items])[:-1]]).astype(np.int64).tolist()
    flat = torch.from_numpy(np.concatenate([a.reshape(-1) for a, _ in items]))
    return ImageCache(flat, offsets, sizes, [label for _, label in items])


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


Region = tuple[int, int, int, int, int]  # image index, top, left, height, width


def regions_of(pixels, indices: Sequence[int], boxes: Sequence[Box] | None = None) -> list[Region]:
    """The parts of images a batch needs: the crop boxes, or (boxes None) whole images."""
    if boxes is None:
        return [(int(i), 0, 0, *pixels.sizes[int(i)]) for i in indices]
    return [(int(i), top, left, h, w) for i, (top, left, h, w, _) in zip(indices, boxes)]


def fetch(pixels, regions: Sequence[Region], device) -> list[torch.Tensor]:
    """The uint8 regions [3, h, w] on ``device``, each copied on its own (pixels already there, or a CPU)."""
    return [
        pixels.image(i)[:, top : top + h, left : left + w].to(device, non_blocking=True)
        for i, top, left, h, w in regions
    ]


class Stager:
    """Host pixels to a CUDA device through pinned buffers: the regions of a batch are gathered into one
    buffer (in a background thread, a batch ahead) and sent with one copy, so that the device does not
    wait for the host. Two buffers take turns; a buffer is refilled only after its copy has finished."""

    def __init__(self, pixels, device, pin: bool = True):
        self.pixels, self.device, self.pin = pixels, torch.device(device), pin
        self.buffers: list[torch.Tensor | None] = [None, None]
        self.sent: list = [None, None]  # the event that marks each buffer's copy as done
        self.turn = 0

    def gather(self, regions: Sequence[Region]) -> tuple[int, list[tuple[int, int]]]:
        """Copy the regions into the next buffer; returns (which buffer, their shapes)."""
        turn, self.turn = self.turn, 1 - self.turn
        if self.sent[turn] is not None:
            self.sent[turn].synchronize()
        total = sum(3 * h * w for _, _, _, h, w in regions)
        if self.buffers[turn] is None or self.buffers[turn].numel() < total:
            self.buffers[turn] = torch.empty(max(total, 1), dtype=torch.uint8, pin_memory=self.pin)
        buffer, at = self.buffers[turn], 0
        for i, top, left, h, w in regions:
            buffer[at : at + 3 * h * w].view(3, h, w).copy_(self.pixels.image(i)[:, top : top + h, left : left + w])
            at += 3 * h * w
        return turn, [(h, w) for _, _, _, h, w in regions]

    def send(self, turn: int, shapes: list[tuple[int, int]]) -> list[torch.Tensor]:
        total = sum(3 * h * w for h, w in shapes)
        flat = self.buffers[turn][:total].to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            self.sent[turn] = torch.cuda.Event()
            self.sent[turn].record()
        parts, at = [], 0
        for h, w in shapes:
            parts.append(flat[at : at + 3 * h * w].view(3, h, w))
            at += 3 * h * w
        return parts


def train_views(crops: Sequence[torch.Tensor], flips: Sequence[bool], spec: ViewSpec) -> torch.Tensor:
    """Normalised float [B, 3, size, size] from uint8 crops: resized (bicubic, antialiased), flipped."""
    views = []
    for crop, flip in zip(crops, flips):
        view = _resize(crop, spec.size, spec.size)
        views.append(view.flip(-1) if flip else view)
    return _normalise(torch.stack(views), spec)


def eval_views(images: Sequence[torch.Tensor], spec: ViewSpec) -> torch.Tensor:
    """Eval views made like the model's own preprocessing (bicubic, antialiased), normalised:
    "shortest": resize the shorter side to the input size, center crop; "squash": resize both sides;
    "longest": resize the longer side, pad the rest with ``fill_color`` (centred)."""
    size = spec.size
    views = []
    for image in images:
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


def augment(pixels, indices: Sequence[int], boxes: Sequence[Box], spec: ViewSpec, device) -> torch.Tensor:
    """A normalised float batch [B, 3, size, size] of the given crop boxes, on ``device``."""
    return train_views(fetch(pixels, regions_of(pixels, indices, boxes), device), [b[4] for b in boxes], spec)


def center_views(pixels, indices: Sequence[int], spec: ViewSpec, device) -> torch.Tensor:
    """Eval views of whole images (see :func:`eval_views`), on ``device``."""
    return eval_views(fetch(pixels, regions_of(pixels, indices), device), spec)


def place(pixels, device):
    """Where the pixels live while they are used: on a CUDA device when they take under half its free
    memory (copied there a shard-sized chunk at a time), else where they are (host memory, or the decode
    cache's memory maps, read through a Stager)."""
    device = torch.device(device)
    if device.type != "cuda":
        return pixels
    free, _ = torch.cuda.mem_get_info(device)
    if pixels.nbytes >= 0.5 * free:
        return pixels
    if isinstance(pixels, ImageCache):
        return pixels.to(device)
    flat = torch.empty(pixels.nbytes, dtype=torch.uint8, device=device)
    offsets, at = [], 0
    stager = Stager(pixels, device)
    for start in range(0, len(pixels), 256):
        regions = regions_of(pixels, range(start, min(start + 256, len(pixels))))
        for part in stager.send(*stager.gather(regions)):
            flat[at : at + part.numel()].copy_(part.reshape(-1), non_blocking=True)
            offsets.append(at)
            at += part.numel()
    return ImageCache(flat, offsets, list(pixels.sizes), list(pixels.labels))


class CachedImages:
    """The fast image source: views made on ``device`` from decoded pixels, a batch at a time. Host pixels
    on a CUDA device go through a Stager, a batch ahead."""

    def __init__(self, pixels, spec: ViewSpec, seed: int, device):
        self.device = torch.device(device)
        self.pixels, self.spec, self.seed = place(pixels, self.device), spec, seed
        on_host = self.pixels.image(0).device.type == "cpu" if len(self.pixels) else True
        self.stager = Stager(self.pixels, self.device) if self.device.type == "cuda" and on_host else None

    def __len__(self):
        return len(self.pixels)

    def _labels(self, indices: Sequence[int]) -> torch.Tensor:
        return torch.tensor([self.pixels.labels[i] for i in indices], dtype=torch.long)

    def _fetched(self, plans):
        """(plan, uint8 regions on the device) for each plan (indices, regions, extra): directly, or through
        the Stager with the next plan's regions gathered in the background."""
        if self.stager is None:
            for plan in plans:
                yield plan, fetch(self.pixels, plan[1], self.device)
            return
        with ThreadPoolExecutor(max_workers=1) as pool:
            plans = iter(plans)
            current = next(plans, None)
            ahead = pool.submit(self.stager.gather, current[1]) if current is not None else None
            while current is not None:
                gathered = ahead.result()
                following = next(plans, None)
                ahead = pool.submit(self.stager.gather, following[1]) if following is not None else None
                yield current, self.stager.send(*gathered)
                current = following

    def train_batches(self, batches: Sequence[Sequence[int]], epoch: int) -> Iterator[Batch]:
        def plans():
            for indices in batches:
                boxes = crop_boxes(self.pixels, indices, self.seed, epoch, self.spec) if indices else []
                yield indices, regions_of(self.pixels, indices, boxes), [b[4] for b in boxes]

        for (indices, _, flips), crops in self._fetched(plans()):
            if not indices:
                yield empty_batch()
                continue
            yield train_views(crops, flips, self.spec), self._labels(indices), torch.tensor(indices)

    def eval_batches(self, indices: Sequence[int], batch_size: int) -> Iterator[Batch]:
        plans = ((chunk, regions_of(self.pixels, chunk), None) for chunk in chunks(indices, batch_size))
        for (chunk, _, _), images in self._fetched(plans):
            yield eval_views(images, self.spec), self._labels(chunk), torch.tensor(chunk)


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
