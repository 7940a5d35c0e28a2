"""The fast path: decode every image once, make the views of whole batches on the device.

The reference decodes each JPEG with PIL and augments it in DataLoader workers at every step of every
epoch; on a GPU that, not the model, is the bottleneck. Here:

  * ``DecodedImages`` holds each image decoded once (EXIF orientation, RGB) as uint8 pixels in one flat
    tensor, shrunk only when its shorter side is over twice the model's input size (then to exactly
    twice: ``decoded_short_side``), with the size of the original image beside it.
  * Each view is the plain path's (``views.ViewSpec.train_plan`` / ``eval_plan``: the same seeded draws,
    the same arithmetic on the original image's size), cut out of the decoded copy with PIL's resampling
    rule (``ueo.resample``) on a box mapped into the copy, for a whole batch on the device, without a
    host synchronisation. An image kept whole gives PIL's view to rounding; a shrunk one is resampled
    twice, which no crop notices: every crop the reference draws (at least half the area, aspect 3/4-4/3,
    so at least half of each side) is at least the input size in the copy, so it is only ever shrunk.
  * ``BatchViews`` offers these as an image source with the same methods as ``views.LoadedImages``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..images import CountsPixels, PixelBudget, as_rgb, decode_batch, release_freed_memory, shrink
from .resample import resize_box, window
from .spec import Batch, Plan, ViewSpec, checked_item, chunks, empty_batch, view_seed


@dataclass
class DecodedImages:
    """Decoded uint8 RGB images, stored flat: image i is ``pixels[offsets[i]:offsets[i] + 3*h*w]`` as [3, h, w];
    ``originals[i]``: the (h, w) of the image it was decoded from."""

    pixels: torch.Tensor  # uint8 [total]
    offsets: list[int]
    sizes: list[tuple[int, int]]  # (h, w)
    labels: list[int]
    originals: list[tuple[int, int]]

    def __len__(self):
        return len(self.sizes)

    def image(self, i: int) -> torch.Tensor:
        h, w = self.sizes[i]
        return self.pixels[self.offsets[i] : self.offsets[i] + 3 * h * w].view(3, h, w)

    @property
    def nbytes(self) -> int:
        return self.pixels.numel()

    @property
    def device(self) -> torch.device:
        return self.pixels.device

    @property
    def resident_bytes(self) -> int:
        """The decoded pixels held in memory: all of them (images given in memory, not files)."""
        return self.pixels.numel() if self.pixels.device.type == "cpu" else 0

    def to(self, device) -> DecodedImages:
        pixels = self.pixels.to(device, non_blocking=True)
        return DecodedImages(pixels, self.offsets, self.sizes, self.labels, self.originals)

    def encoded(self, i: int) -> None:
        """(No image here is stored as JPEG.)"""
        return None

    def prefetch(self, indices: Sequence[int]) -> dict[int, torch.Tensor]:
        """(Nothing to decode: every image is here.)"""
        return {}


def decoded_short_side(spec: ViewSpec) -> int:
    """The shorter side an image keeps at most when decoded: twice the model's input size."""
    return 2 * spec.size


def decode_all(dataset, short_side: int, threads: int = 8, progress: bool = False) -> DecodedImages:
    """Decode every (PIL image, label) item of ``dataset`` once, into host memory (for datasets that are
    not image files; files go through the persistent decode cache, ``ueo.cache``)."""

    budget = PixelBudget()
    count = dataset.pixel_count if isinstance(dataset, CountsPixels) else None  # files: within the pixel budget

    def load(i):
        with budget(count(i) if count is not None else 0):
            image, label = checked_item(dataset[i], i)
            if torch.is_tensor(image):
                raise ConfigError("The fast path decodes PIL images; this dataset yields tensors (use fast=False).")
            image = as_rgb(image)
            return shrink(image, short_side), (image.height, image.width), label

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        items = list(
            tqdm(
                pool.map(load, range(len(dataset))),
                total=len(dataset),
                desc="decode",
                unit="img",
                disable=None if progress else True,
                leave=False,
            )
        )
    sizes = [(a.shape[1], a.shape[2]) for a, _, _ in items]
    offsets = np.concatenate([[0], np.cumsum([a.size for a, _, _ in items])[:-1]]).astype(np.int64).tolist()
    flat = torch.from_numpy(np.concatenate([a.reshape(-1) for a, _, _ in items]))
    return DecodedImages(flat, offsets, sizes, [label for _, _, label in items], [size for _, size, _ in items])


Region = tuple[int, int, int, int, int]  # image index, top, left, height, width (in the decoded copy)


@dataclass(frozen=True)
class Cut:
    """A plan mapped into the decoded copy: the region to fetch, the plan's box relative to it, the output
    rows and columns of the resized box that the view shows, and where they go in the view."""

    region: Region
    box: tuple[float, float, float, float]
    size: tuple[int, int]
    rows: tuple[int, int]  # first, count
    cols: tuple[int, int]
    at: tuple[int, int]  # (y, x) in the view
    flip: bool


def cut(index: int, plan: Plan, decoded: tuple[int, int], original: tuple[int, int], spec: ViewSpec) -> Cut:
    """The region of image ``index`` (decoded at ``decoded``, originally ``original``, as (h, w)) that the
    view ``plan`` reads, and how the view is made from it."""
    (h, w), (oh, ow), size = decoded, original, spec.size
    sy, sx = h / oh, w / ow
    left, top, right, bottom = plan.box
    left, top, right, bottom = left * sx, top * sy, right * sx, bottom * sy
    (nh, nw), (oy, ox) = plan.size, plan.offset
    r0, c0 = max(0, -oy), max(0, -ox)  # the rows and columns of the resized box inside the view
    rows, cols = (r0, min(nh, size - oy) - r0), (c0, min(nw, size - ox) - c0)
    y_lo, y_hi = window(top, bottom, nh, *rows, h, spec.interpolation)
    x_lo, x_hi = window(left, right, nw, *cols, w, spec.interpolation)
    box = (left - x_lo, top - y_lo, right - x_lo, bottom - y_lo)
    region = (index, y_lo, x_lo, y_hi - y_lo, x_hi - x_lo)
    return Cut(region, box, plan.size, rows, cols, (oy + r0, ox + c0), plan.flip)


def render(crop: torch.Tensor, c: Cut, spec: ViewSpec) -> torch.Tensor:
    """float [3, S, S] in [0, 1]: the view of ``c`` from its fetched region ``crop`` (uint8 [3, h, w])."""
    part = resize_box(crop, c.box, c.size, spec.interpolation, rows=c.rows, cols=c.cols)
    size = spec.size
    if part.shape[1:] != (size, size):  # padding around the resized image ("longest")
        canvas = torch.full((3, size, size), spec.fill_color / 255.0, device=part.device)
        (y, x), (_, h, w) = c.at, part.shape
        canvas[:, y : y + h, x : x + w] = part
        part = canvas
    return part.flip(-1) if c.flip else part


def normalise_(batch: torch.Tensor, spec: ViewSpec) -> torch.Tensor:
    """``batch`` normalised in place ((x - mean) / std, per channel), returned."""
    mean = torch.as_tensor(spec.mean, dtype=batch.dtype, device=batch.device).view(1, 3, 1, 1)
    std = torch.as_tensor(spec.std, dtype=batch.dtype, device=batch.device).view(1, 3, 1, 1)
    return batch.sub_(mean).div_(std)


def make_views(crops: Sequence[torch.Tensor], cuts: Sequence[Cut], spec: ViewSpec) -> torch.Tensor:
    """A normalised float batch [B, 3, S, S] from the fetched regions of ``cuts``, each view rendered into
    the batch and the batch normalised in place: one batch of float pixels alive at a time, not the three
    (stacked, centred, scaled) that building it by value held at its peak."""
    device = crops[0].device if crops else None
    batch = torch.empty((len(cuts), 3, spec.size, spec.size), device=device)
    for k, (crop, c) in enumerate(zip(crops, cuts)):
        batch[k] = render(crop, c, spec)
    return normalise_(batch, spec)


def train_cuts(pixels, indices: Sequence[int], seed: int, epoch: int, spec: ViewSpec) -> list[Cut]:
    """The train views of a batch, drawn from the per-sample seeds (seed, epoch, index) of the plain path."""
    cuts = []
    for i in map(int, indices):
        generator = torch.Generator().manual_seed(view_seed(seed, epoch, i))
        plan = spec.train_plan(generator, *pixels.originals[i])
        cuts.append(cut(i, plan, pixels.sizes[i], pixels.originals[i], spec))
    return cuts


def eval_cuts(pixels, indices: Sequence[int], spec: ViewSpec) -> list[Cut]:
    """The eval views of ``indices``."""
    return [
        cut(i, spec.eval_plan(*pixels.originals[i]), pixels.sizes[i], pixels.originals[i], spec)
        for i in map(int, indices)
    ]


def whole(pixels, indices: Sequence[int]) -> list[Region]:
    """The regions that are whole images."""
    return [(int(i), 0, 0, *pixels.sizes[int(i)]) for i in indices]


def cut_out(pixels, regions: Sequence[Region]) -> list[torch.Tensor]:
    """The uint8 regions [3, h, w] where the pixels are, the images that need decoding decoded together
    (``pixels.prefetch``: on a pool of threads)."""
    decoded = pixels.prefetch([i for i, *_ in regions])
    return [
        (decoded[i] if i in decoded else pixels.image(i))[:, top : top + h, left : left + w]
        for i, top, left, h, w in regions
    ]


def fetch(pixels, regions: Sequence[Region], device) -> list[torch.Tensor]:
    """The uint8 regions [3, h, w] on ``device``, each copied on its own (pixels already there, or a CPU)."""
    return [crop.to(device, non_blocking=True) for crop in cut_out(pixels, regions)]


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
        for crop in cut_out(self.pixels, regions):
            h, w = crop.shape[1:]
            buffer[at : at + 3 * h * w].view(3, h, w).copy_(crop)
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


def put_on_device(pixels, device):
    """Where the pixels live while they are used: on a CUDA device when they take under half its free
    memory (copied there 256 images at a time; JPEG entries of the decode cache decoded there, in batches,
    by torchvision's GPU decoder; images read from their files decoded on the CPU's threads), else where they
    are (host memory, or the decode cache, read through a Stager a batch ahead)."""
    device = torch.device(device)
    if device.type != "cuda":
        return pixels
    free, _ = torch.cuda.mem_get_info(device)
    if pixels.nbytes >= 0.5 * free:
        return pixels
    if isinstance(pixels, DecodedImages):
        return pixels.to(device)

    flat = torch.empty(pixels.nbytes, dtype=torch.uint8, device=device)
    offsets, at = [], 0
    for start in range(0, len(pixels), 256):
        for part in decode_batch(pixels, range(start, min(start + 256, len(pixels))), device):
            flat[at : at + part.numel()].copy_(part.reshape(-1), non_blocking=True)
            offsets.append(at)
            at += part.numel()
    return DecodedImages(flat, offsets, list(pixels.sizes), list(pixels.labels), list(pixels.originals))


class BatchViews:
    """The fast image source: views made on ``device`` from decoded pixels, a batch at a time. Host pixels
    on a CUDA device go through a Stager, a batch ahead."""

    def __init__(self, pixels, spec: ViewSpec, seed: int, device):
        self.device = torch.device(device)
        self.pixels, self.spec, self.seed = put_on_device(pixels, self.device), spec, seed
        on_host = self.pixels.device.type == "cpu"
        self.stager = Stager(self.pixels, self.device) if self.device.type == "cuda" and on_host else None

    def __len__(self):
        return len(self.pixels)

    def _labels(self, indices: Sequence[int]) -> torch.Tensor:
        return torch.tensor([self.pixels.labels[i] for i in indices], dtype=torch.long)

    def _fetched(self, plans):
        """(plan, uint8 regions on the device) for each plan (indices, regions, extra), the next plan's
        regions made ready in the background while the current one is used: the images that need decoding
        decoded (on the pixels' pool of threads), and for host pixels on a CUDA device gathered into a pinned
        buffer (the Stager)."""
        if self.stager is None:

            def prepare(plan):
                return cut_out(self.pixels, plan[1])

            def deliver(ready):
                return [crop.to(self.device, non_blocking=True) for crop in ready]

        else:
            prepare, deliver = (lambda plan: self.stager.gather(plan[1])), (lambda ready: self.stager.send(*ready))
        with ThreadPoolExecutor(max_workers=1) as pool:
            plans = iter(plans)
            current = next(plans, None)
            ahead = pool.submit(prepare, current) if current is not None else None
            while current is not None:
                ready = ahead.result()
                release_freed_memory()  # the pages of the batch before, given back (images.release_freed_memory)
                following = next(plans, None)
                ahead = pool.submit(prepare, following) if following is not None else None
                yield current, deliver(ready)
                current = following

    def train_batches(self, batches: Sequence[Sequence[int]], epoch: int) -> Iterator[Batch]:
        def plans():
            for indices in batches:
                cuts = train_cuts(self.pixels, indices, self.seed, epoch, self.spec)
                yield indices, [c.region for c in cuts], cuts

        for (indices, _, cuts), crops in self._fetched(plans()):
            if not indices:
                yield empty_batch()
                continue
            yield make_views(crops, cuts, self.spec), self._labels(indices), torch.tensor(indices)

    def eval_batches(self, indices: Sequence[int], batch_size: int) -> Iterator[Batch]:
        def plans():
            for chunk in chunks(indices, batch_size):
                cuts = eval_cuts(self.pixels, chunk, self.spec)
                yield chunk, [c.region for c in cuts], cuts

        for (chunk, _, cuts), crops in self._fetched(plans()):
            yield make_views(crops, cuts, self.spec), self._labels(chunk), torch.tensor(chunk)
