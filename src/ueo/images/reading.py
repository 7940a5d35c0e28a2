"""Reading images: RGB pixels out of image files, parallel decoding under a memory bound, the check pass
that finds unreadable files, and a Dataset of (PIL image, label) over an ``ImageList``."""

from __future__ import annotations

import collections
import contextlib
import ctypes
import io
import os
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image

from ..data import ImageList, opened, where
from ..errors import DataError, Interrupted
from .pixels import as_rgb

DECODE_BUDGET_PIXELS = 100_000_000  # pixels being decoded at once, over all threads (bounds the memory)
LIBC = ctypes.CDLL(None) if os.name == "posix" else None  # the C library already loaded (no search at import)


def release_freed_memory() -> None:
    """Give the heap's free pages back to the system (glibc's malloc_trim; elsewhere nothing). glibc raises
    its mmap threshold each time a large buffer is freed, after which decoded images of varying sizes come
    from the heap, and the pages they leave stay with the process. The batch readers call this once a batch
    (about a millisecond): at 3k photos it lowered the peak of `ueo fit` from 1.71 to 1.59 GB for 7% more
    time (benchmarks/RESULTS.md, "A million images")."""
    trim = getattr(LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)


class PixelBudget:
    """At most ``limit`` pixels being decoded at once, over all threads (an image larger than the whole
    budget decodes alone). Bounds the memory of parallel decoding whatever the image sizes."""

    def __init__(self, limit: int = DECODE_BUDGET_PIXELS):
        self.limit, self.used, self.peak = limit, 0, 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def __call__(self, pixels: int):
        """Hold ``pixels`` of the budget (at most all of it) for the block, waiting until they are free."""
        amount = min(max(pixels, 1), self.limit)
        with self._cond:
            self._cond.wait_for(lambda: self.used + amount <= self.limit)
            self.used += amount
            self.peak = max(self.peak, self.used)
        try:
            yield
        finally:
            with self._cond:
                self.used -= amount
                self._cond.notify_all()


@contextlib.contextmanager
def opened_image(source):
    """PIL's image of ``source`` (a file, a ``ueo.members.Member`` or an open file of its bytes), without
    PIL's DecompressionBombWarning: ueo reads images up to PIL's own limit within its pixel budget, so the
    warning (printed for every image over 89 Mpx) would only be noise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(_opened(source)) as image:
            yield image


def image_pixels(path) -> int:
    """Width x height from the image's header (no decoding); 0 when the header cannot be read. ``path``: a
    file, an image inside a container (``ueo.members.Member``) or an open file of its bytes."""
    try:
        with opened_image(path) as image:
            return image.width * image.height
    except Exception:  # the decode that follows reports the problem
        return 0


def _opened(item):

    if isinstance(item, io.IOBase):  # bytes already read
        item.seek(0)
        return item
    return opened(item)


def load_image(path, max_side: int | None = None) -> Image.Image:
    """Open an image (a file, a ``ueo.members.Member`` or an open file of its bytes) as the RGB image ueo sees of it (``pixels.as_rgb``: EXIF orientation, alpha over
    white, high bit depths scaled to 8 bits).

    max_side: a JPEG is decoded at a reduced scale whose longer side stays >= max_side (libjpeg's DCT
    scaling: less memory and time for large photos). Other formats are decoded at full size.
    Raises OSError/ValueError for unreadable files and Image.DecompressionBombError for absurd sizes (more
    than twice PIL.Image.MAX_IMAGE_PIXELS: PIL's own limit; images under it decode within the pixel budget).
    """
    with opened_image(path) as image:
        if max_side is not None and image.format == "JPEG":
            w, h = image.size
            scale = max_side / max(w, h)
            if scale < 1:
                image.draft("RGB", (max(1, int(w * scale)), max(1, int(h * scale))))
        image.load()
        return as_rgb(image)


def decoded_size(original: tuple[int, int], short_side: int) -> tuple[int, int]:
    """The (h, w) an image of ``original`` (h, w) is kept at: its shorter side shrunk to ``short_side`` when
    it is longer, else as it is."""
    h, w = original
    if min(h, w) <= short_side:
        return h, w
    scale = short_side / min(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def shrink(image: Image.Image, short_side: int) -> np.ndarray:
    """uint8 [3, h, w] of an RGB image, shrunk (bicubic) to :func:`decoded_size`; smaller images are kept as
    they are."""
    h, w = decoded_size((image.height, image.width), short_side)
    if (h, w) != (image.height, image.width):
        image = image.resize((w, h), Image.Resampling.BICUBIC)
    return np.ascontiguousarray(np.asarray(image.convert("RGB")).transpose(2, 0, 1))


ROTATED = (5, 6, 7, 8)  # EXIF orientations that turn an image by 90 degrees


def original_size(source) -> tuple[int, int]:
    """The (h, w) of the image ueo sees of ``source`` (EXIF orientation applied), from its header alone: what
    decoding it gives, without decoding it. OSError/ValueError when the header cannot be read."""
    with opened_image(source) as image:
        w, h = image.size
        turned = image.getexif().get(0x0112) in ROTATED
    return (w, h) if turned else (h, w)


class Tally:
    """A count that threads add to, with the last amounts added (``recent``): a hook for tests and benchmarks
    (``ueo.images.DECODED``, ``ueo.inference.SCORED``)."""

    def __init__(self):
        self.count, self.recent, self._lock = 0, collections.deque(maxlen=64), threading.Lock()

    def add(self, n: int = 1) -> None:
        with self._lock:
            self.count += n
            self.recent.append(n)


DECODED = Tally()  # images decoded from their sources (the cache's first pass; files read per batch)


def decode(source, short_side: int) -> tuple[np.ndarray, tuple[int, int]]:
    """(uint8 [3, h, w], the original (h, w)) of an image (a file, a member, or an open file of its bytes),
    its shorter side shrunk to ``short_side`` when it is longer. Counted in ``DECODED``."""
    image = load_image(source)
    DECODED.add()
    return shrink(image, short_side), (image.height, image.width)


SKIPPED_COLUMNS = ["path", "shard", "key", "reason"]  # skipped.csv (shard, key: of an image inside a container)
UNREADABLE = (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning)


def describe(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else "unreadable"
    return f"{type(error).__name__}: {text}"


def check_images(
    images: ImageList,
    strict: bool = False,
    warn: Callable[[str], None] = print,
    threads: int = 8,
    budget: PixelBudget | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[ImageList, list[dict[str, str]]]:
    """Decode every image once; return (the readable ones, [{"path", "reason"}] of the skipped ones).

    strict: raise DataError at the first unreadable file instead of skipping it.
    budget: bounds the pixels decoded at once (default: DECODE_BUDGET_PIXELS).
    should_stop: polled between images; when it returns True the check stops (Interrupted).
    """
    budget = budget or PixelBudget()

    def problem(path):
        if should_stop is not None and should_stop():
            return None
        try:
            with budget(image_pixels(path)):
                load_image(path, max_side=1024)
            return None
        except UNREADABLE as error:
            return describe(error)

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        problems = list(pool.map(problem, images.paths))
    if should_stop is not None and should_stop():
        raise Interrupted("stopped while checking the images")
    return sort_out(images, {i: reason for i, reason in enumerate(problems) if reason is not None}, strict, warn)


def sort_out(
    images: ImageList, problems: dict[int, str], strict: bool = False, warn: Callable[[str], None] = print
) -> tuple[ImageList, list[dict[str, str]]]:
    """(the readable images, [{"path", "reason"}] of the others) from {position: why it is unreadable}, with
    a warning for each; strict: DataError at the first. DataError when no image is readable."""

    skipped = list(images.skipped)  # found while listing (a truncated shard), warned about then
    if strict and skipped:
        raise DataError(f"{skipped[0]['path']}: {skipped[0]['reason']}.")
    for i in sorted(problems):
        if strict:
            raise DataError(f"{images.paths[i]}: unreadable image ({problems[i]}).")
        warn(f"warning: skipping {images.paths[i]}: {problems[i]}")
        skipped.append({"path": str(images.paths[i]), **where(images.paths[i]), "reason": problems[i]})
    if len(problems) == len(images):
        raise DataError("No readable image: every file was skipped (see the warnings).")
    kept = images.subset([i for i in range(len(images)) if i not in problems])
    kept.skipped = []
    return kept, skipped


@runtime_checkable
class ImageDataset(Protocol):
    """A dataset of (image, label) items, as PyTorch's map-style datasets are: what the entry points take."""

    def __len__(self) -> int: ...

    def __getitem__(self, i: int): ...


@runtime_checkable
class CountsPixels(Protocol):
    """A dataset that says how many pixels decoding its item ``i`` takes (from a header: see PixelBudget)."""

    def pixel_count(self, i: int) -> int: ...


class ImageFiles(torch.utils.data.Dataset):
    """A Dataset of (PIL image, label) over an ImageList; images are read when asked for. ``cache``: a
    ``ueo.cache.DecodeCache`` that the fast path reads the decoded images from (None: the one the call that
    uses it chooses: by default the user's decode cache; with ``cache=False``, each image is decoded from its
    file when a batch needs it). ``pixels``: what ``ueo.feed.readable`` made of them (checked, decoded)."""

    def __init__(self, images: ImageList, cache=None, *, pixels=None):
        self.images, self.cache, self.pixels = images, cache, pixels  # pixels: from ueo.feed.readable

    @property
    def store(self):
        """(The decode cache's name before it was called ``cache``.)"""
        return self.cache

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return load_image(self.images.paths[i]), self.images.labels[i]

    def pixel_count(self, i: int) -> int:
        """The pixels of image i, from its header (what decoding it takes; see PixelBudget)."""
        return image_pixels(self.images.paths[i])


def listed(images) -> list:
    """The images of a call, as a list: one path or PIL image, or any sequence or iterable of them."""
    if images is None or hasattr(images, "__array__"):
        hint = " (PIL.Image.fromarray(array) makes an image of an HxWx3 uint8 array)" if images is not None else ""
        raise DataError(
            f"images are paths, PIL images or a tensor batch [B, 3, S, S]; got {type(images).__name__}{hint}."
        )
    if isinstance(images, (str, os.PathLike, Image.Image)):
        return [images]
    try:
        items = list(images)
    except TypeError:
        raise DataError(f"images are paths, PIL images or a tensor batch; got {type(images).__name__}.") from None
    for i, item in enumerate(items):
        if not isinstance(item, (str, os.PathLike, Image.Image)):
            raise DataError(f"image {i} is a {type(item).__name__}; give paths or PIL images (or one tensor batch).")
    return items


class GivenImages(torch.utils.data.Dataset):
    """(image, -1) items from PIL images or file paths (read with ueo's own loader)."""

    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        item = self.items[i]
        if not isinstance(item, (str, os.PathLike)):
            return item, -1
        try:
            return load_image(Path(item)), -1
        except UNREADABLE as error:
            raise DataError(f"{item}: unreadable image ({describe(error)}).") from None

    def pixel_count(self, i: int) -> int:
        """The pixels of item i to decode: a file's, from its header (see images.PixelBudget); 0 for an
        image already in memory."""
        item = self.items[i]
        return image_pixels(Path(item)) if isinstance(item, (str, os.PathLike)) else 0


def as_dataset(images) -> tuple:
    """(a dataset of (image, label), the images' paths or None) of what a user may pass as images: one path
    or PIL image, or a sequence or iterable of them (label -1); an ``ImageList`` (``ueo.read_images``), as
    ``ImageFiles``; or a dataset, as it is (with the paths of its files when it is ``ImageFiles``)."""
    if isinstance(images, ImageList):  # what ueo.read_images gives
        return ImageFiles(images), [str(p) for p in images.paths]
    if isinstance(images, ImageFiles):
        return images, [str(p) for p in images.images.paths]
    is_array = hasattr(images, "__array__")  # an array or a tensor is not a dataset of images (listed says why)
    if isinstance(images, ImageDataset) and not is_array and not isinstance(images, (list, tuple, str)):
        return images, None
    items = listed(images)
    paths = [str(i) for i in items] if all(isinstance(i, (str, os.PathLike)) for i in items) else None
    return GivenImages(items), paths
