"""What the model's views are made from: the one step from images to an image source.

:func:`readable` is the visible step for image files: every image is checked once — decoded into the decode
cache (``cache``; the images it cannot take are read from their files per batch), or, without a cache,
opened and decoded once to see that it is readable — and what comes out is an ``ImageFiles`` that holds its
pixels, which :func:`image_source` then uses without decoding anything again. :func:`image_source` gives
the views of any dataset: the fast path (``fastpath.BatchViews``: views of whole batches made on the
device) or the plain one (``views.LoadedImages``: PIL transforms in DataLoader workers).
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from ..data import ImageList, Member, stderr
from ..errors import ConfigError, DataError
from ..images import DecodeCache, ImageFiles, check_images, file_pixels, sort_out
from .fastpath import BatchViews, decode_all, decoded_short_side
from .spec import LoadedImages, checked_item


def decode_cache_of(dataset, cache) -> DecodeCache | None:
    """The decode cache the images of ``dataset`` are read through: its own (``ImageFiles(images, cache)``),
    else ``cache``: True (or None) for the user's decode cache (the command line's: --cache-dir's default,
    bound and format), a ``DecodeCache``, a folder, or False for none (each image decoded from its file when
    a batch needs it). None for datasets that are not image files."""
    if not isinstance(dataset, ImageFiles):
        return None
    if dataset.cache is not None:
        return dataset.cache
    if cache is None or cache is True:
        return DecodeCache()
    if cache is False:
        return None
    if isinstance(cache, DecodeCache):
        return cache
    if isinstance(cache, (str, os.PathLike)):
        return DecodeCache(cache)
    raise ConfigError(f"cache must be True, False, a folder or a ueo.DecodeCache, got {cache!r:.60}.")


def readable(
    images: ImageList,
    *,
    cache: DecodeCache | None,
    short_side: int,
    strict: bool = False,
    warn: Callable[[str], None] = stderr,
    should_stop: Callable[[], bool] | None = None,
    progress: bool = False,
) -> tuple[ImageFiles, list[dict]]:
    """(the readable images, with their pixels; skipped.csv rows of the others). Unreadable images are left
    out with a warning each (``strict``: DataError at the first). Through ``cache``, the check is the
    decoding into it (once per image; none for images already there); without one, each image is decoded
    once to check it, and later decoded from its file when its batch comes. Images that only a stream gives
    (a pipe: command, a compressed shard) need the cache."""
    if cache is None:
        streamed = next((p for p in images.paths if isinstance(p, Member) and p.streamed), None)
        if streamed is not None:
            raise ConfigError(
                f"{streamed.container} is read as a stream (a pipe: command or a compressed shard): ueo reads it once "
                "into the decode cache and trains from there, so it needs the cache (drop --no-cache / cache=False "
                "and --fast off, or unpack the shards into plain .tar files)."
            )
        kept, skipped = check_images(images, strict=strict, warn=warn, should_stop=should_stop)
        return ImageFiles(kept, pixels=file_pixels(kept, short_side)), skipped
    pixels, problems = cache.ensure(images, short_side, should_stop=should_stop, progress=progress)
    kept, skipped = sort_out(images, problems, strict, warn)
    return ImageFiles(kept, cache, pixels=pixels), skipped


def image_source(
    bundle,
    dataset,
    *,
    fast: bool | None = None,
    cache=True,
    seed: int = 0,
    num_workers: int = 0,
    progress: bool = False,
):
    """Where the views of ``dataset`` come from: the fast path (decoded once, views made on the device) when
    ``fast`` (None: yes, for datasets of images; measured faster on CPUs too), else the plain path (PIL
    transforms in DataLoader workers). Image files (``ImageFiles``, or what ``ueo.read_images`` gives) use
    the pixels :func:`readable` gave them, else are read through the decode cache (:func:`decode_cache_of`),
    or decoded from their files a batch at a time with ``cache=False``: their pixels are never all held in
    memory. Other images are decoded into memory."""
    if isinstance(dataset, ImageList):
        dataset = ImageFiles(dataset)
    device = bundle.device
    use_fast = fast if fast is not None else True
    files = isinstance(dataset, ImageFiles)
    if not files or not use_fast:
        first, _ = checked_item(dataset[0], 0, bundle.image_size)
        if use_fast and torch.is_tensor(first):
            if fast:
                raise ConfigError("fast=True needs datasets of PIL images (the fast path decodes and augments them).")
            use_fast = False
    if not use_fast:
        return LoadedImages(dataset, bundle.views, seed=seed, num_workers=num_workers, pin_memory=device.type == "cuda")
    short_side = decoded_short_side(bundle.views)
    if not files:
        return BatchViews(decode_all(dataset, short_side, progress=progress), bundle.views, seed, device)
    if dataset.pixels is not None and dataset.pixels.short_side == short_side:
        return BatchViews(dataset.pixels, bundle.views, seed, device)
    chosen = decode_cache_of(dataset, cache)
    if chosen is None:
        return BatchViews(file_pixels(dataset.images, short_side), bundle.views, seed, device)
    pixels, problems = chosen.ensure(dataset.images, short_side, progress=progress)
    if problems:
        first = min(problems)
        raise DataError(
            f"{len(problems)} image(s) cannot be read, e.g. {dataset.images.paths[first]} "
            f"({problems[first]}); leave them out first (ueo.images.check_images)."
        )
    return BatchViews(pixels, bundle.views, seed, device)
