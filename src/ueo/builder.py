"""Building the decode cache (``ueo.cache`` says where and how it is used): decode the images a collection
lacks, in parallel within a pixel budget, choose the entries' format for the collection, say what the first
pass will cost, and write shards; what the cache cannot take is left to be read from its source per batch.

The format of a collection's entries (``--cache-format auto``, the default) is chosen after its first 32
images are decoded: raw pixels while the whole collection's raw size (their mean times its image count)
fits in half the cache's bound, else JPEG (quality 95, 4:4:4). The choice is said in one line and kept in
``locks/../collections/COLLECTION.json`` for ``ueo cache info``. A first pass of at least
``LARGE_FIRST_PASS`` images also says what it will cost: images, expected size, the bound, the free disk
and its time at the rate measured on those first images.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from .errors import Interrupted
from .files import write_text
from .images import UNREADABLE, PixelBudget, decode, describe, image_pixels
from .shards import bound, encode, existing, what_of, write_shard

SHARD_BYTES = 128 << 20  # stored bytes per shard at most (a shard is built in memory before it is written)
SHARDS_PER_BOUND = 8  # and at most an eighth of the bound, so that a small bound still holds some
SHARD_IMAGES = 8192
IN_FLIGHT = 32  # images decoded at once (the first ones choose the format of a collection's entries)
COMFORTABLE = 0.5  # raw entries while the collection's raw size is at most this share of the bound
LARGE_FIRST_PASS = 10_000  # a first pass this long says what it will cost
SOURCE, HELD = "source", "held"  # places of images the cache did not take (see ``ueo.mapped``)


class Spill:
    """Entries of images that only a stream gives and that the cache could not take: appended to a temporary
    file (removed when the process ends), read back at their offsets; in memory when no file can be written."""

    def __init__(self):
        self.file, self.memory, self.said = None, None, False
        self.lock = threading.Lock()  # (read from the threads that decode a batch)

    def append(self, data: bytes) -> int:
        with self.lock:
            return self._append(data)

    def _append(self, data: bytes) -> int:
        if self.file is None and self.memory is None:
            try:
                self.file = tempfile.TemporaryFile(prefix="ueo-spill-")  # noqa: SIM115 (kept open: read later)
            except OSError:
                self.memory = bytearray()
        if self.file is not None:
            try:
                self.file.seek(0, io.SEEK_END)
                at = self.file.tell()
                self.file.write(data)
                return at
            except OSError:  # a full disk: what follows is held in memory
                self.memory = bytearray()
                self.file.truncate(at)
        at = len(self.memory) + (1 << 62)  # offsets past any file's
        self.memory += data
        return at

    def read(self, at: int, size: int) -> bytes:
        if at >= 1 << 62:
            return bytes(self.memory[at - (1 << 62) : at - (1 << 62) + size])
        with self.lock:
            self.file.seek(at)
            return self.file.read(size)


def chosen_format(cache, folder: Path | None, collection: str, images: int, raw_mean: float) -> str:
    """The entries' format for a collection of ``images`` images of ``raw_mean`` raw bytes on average:
    the cache's own unless ``auto``, else raw while the whole collection takes at most COMFORTABLE of the
    bound, else JPEG; kept for ``ueo cache info``."""
    if cache.format != "auto":
        return cache.format
    limit, _ = bound(cache.root, cache.max_size, warn=cache.warn)
    fmt = "raw" if raw_mean * images <= COMFORTABLE * limit else "jpeg"
    if folder is not None:
        record = {
            "images": images,
            "format": fmt,
            "raw_bytes": int(raw_mean * images),
            "bound": limit,
            "at": time.time(),
        }
        with contextlib.suppress(OSError):  # (what info shows; the run does not need it)
            write_text(folder / "collections" / f"{collection}.json", json.dumps(record))
    return fmt


def human(size: float) -> str:
    """A size in GB, or in MB under one GB."""
    return f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.0f} MB"


def cost_line(cache, todo: int, images: int, raw_mean: float, stored_mean: float, fmt: str, rate: float) -> str:
    """What a first pass stores and costs, in a line."""
    limit, _ = bound(cache.root, cache.max_size)
    free = shutil.disk_usage(existing(cache.root)).free
    kept = "raw pixels" if fmt == "raw" else "JPEG (quality 95)"
    if cache.format != "auto":
        why = f"--cache-format {cache.format}"
    elif fmt == "raw":
        why = f"they fit in half its bound of {human(limit)}"
    else:
        why = f"raw pixels would take {human(raw_mean * images)}, more than half its bound of {human(limit)}"
    line = f"decode cache: {images:,} images, kept as {kept} ({why}): ~{human(stored_mean * images)}; {human(free)} free on its disk"
    if todo >= LARGE_FIRST_PASS and rate > 0:
        line += f"; {todo:,} to decode at {rate:.0f} images/s (measured), about {todo / rate / 60:.0f} min"
    return line


def first_look(cache, results, todo: int, images: int, collection: str, folder, started: float) -> str:
    """The format of a collection's entries, from its first decoded images, said with what the pass costs."""
    decoded = [r[2] for r in results if r[2] is not None]
    raw_mean = sum(d[0].nbytes for d in decoded) / max(1, len(decoded))
    fmt = chosen_format(cache, folder, collection, images, raw_mean)
    sample = [len(encode(d[0], d[1], fmt)[1]) for d in decoded[:16]]
    stored_mean = sum(sample) / max(1, len(sample))
    rate = len(results) / max(time.monotonic() - started, 1e-6)
    if todo >= LARGE_FIRST_PASS or (fmt == "jpeg" and cache.format == "auto"):
        cache.say(cost_line(cache, todo, images, raw_mean, stored_mean, fmt, rate))
    return fmt


def build(
    cache,
    folder: Path | None,
    todo: list,
    short_side: int,
    *,
    collection: str,
    images: int,
    threads: int | None = None,
    progress: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[dict[bytes, str], dict[bytes, tuple]]:
    """Decode ``todo`` [(key, image)] of a collection of ``images`` images into new shards in ``folder``
    (None: nowhere); returns (the problems not kept in the cache, {key: place} of the images decoded but not
    written: (SOURCE, original size), to be decoded from their source when needed, or, for images that only
    a stream gives, (HELD, spill, offset, stored bytes, format, size, original size)). Not kept as problems:
    errors of the operating system (a permission, a missing file: they may be gone the next time) and images
    over PIL's decompression-bomb limit (a setting). When a shard cannot be written (the disk is full or
    read-only, the bound is reached) the cache stops growing, with a warning. Images that only a stream
    gives (``ueo.sources``) are read in one pass per container; the others at random, in parallel."""
    from tqdm.auto import tqdm

    from .sources import opened
    from .tarshards import stream

    budget = PixelBudget()

    def payloads():
        streamed = {item: key for key, item in todo if getattr(item, "streamed", False)}
        for key, item in todo:
            if item not in streamed:
                yield key, item, None
        for item, data, why in stream(list(streamed)):
            yield streamed[item], item, data if data is not None else OSError(why)

    def one(payload):
        key, item, data = payload
        if should_stop is not None and should_stop():
            return key, item, None, None, False
        try:
            if isinstance(data, OSError):
                raise data
            source = io.BytesIO(data) if data is not None else (opened(item) if hasattr(item, "container") else item)
            with budget(image_pixels(source)):
                return key, item, decode(source, short_side), None, True
        except UNREADABLE as error:
            lasting = not isinstance(error, Image.DecompressionBombError) and not (
                isinstance(error, OSError) and error.errno is not None
            )
            return key, item, None, describe(error), lasting

    records: list[tuple] = []
    size = 0
    passing: dict[bytes, str] = {}
    later: dict[bytes, tuple] = {}

    def leave(key, item, stored) -> None:
        """An image decoded but not written: from its source when needed, or spilled (a stream's)."""
        fmt, data, hw, original = stored
        if getattr(item, "streamed", False):
            spill = cache.spill
            later[key] = (HELD, spill, spill.append(data), len(data), fmt, tuple(hw), tuple(original))
            if spill.memory is not None and not spill.said:
                spill.said = True
                cache.warn(
                    "warning: no temporary file can be written for the streamed images the decode cache cannot take: "
                    "they are held in memory as they are stored (give the cache room, or free the disk)."
                )
        else:
            later[key] = (SOURCE, tuple(original))

    def flush():
        nonlocal folder
        if folder is not None:
            try:
                if cache.room(folder, size):
                    written = write_shard(
                        folder, [(k, st, pr, what_of(item)) for k, st, pr, item in records], collection
                    )
                    cache.pin(written)  # (its own shards are in use: never what makes room for the next)
                    return
                folder = None
            except OSError as error:
                cache.refused(folder, error)
                folder = None
        for key, stored, problem, item in records:
            if stored is not None:
                leave(key, item, stored)
            else:
                passing[key] = problem

    shard_bytes = min(SHARD_BYTES, bound(cache.root, cache.max_size, warn=cache.warn)[0] // SHARDS_PER_BOUND)
    bar = tqdm(total=len(todo), desc="decode", unit="img", disable=not progress, leave=False)
    work, started, fmt = payloads(), time.monotonic(), None
    with ThreadPoolExecutor(max_workers=threads or min(32, os.cpu_count() or 4)) as pool:
        while batch := [p for _, p in zip(range(IN_FLIGHT), work)]:  # in order, a bounded number in flight
            results = list(pool.map(one, batch))
            if any(decoded is None and problem is None for _, _, decoded, problem, _ in results):
                raise Interrupted("stopped while decoding the images")
            if fmt is None and any(r[2] is not None for r in results):  # the entries' format, what it costs
                fmt = first_look(cache, results, len(todo), images, collection, folder, started)
            entries = [
                None if d is None else (*encode(d[0], d[1], fmt or "raw"), d[0].shape[1:], d[1])
                for _, _, d, _, _ in results
            ]
            if folder is not None and not records and fmt is not None:  # no room even for these: none for more
                folder = folder if cache.room(folder, sum(len(e[1]) for e in entries if e is not None)) else None
            for (key, item, _, problem, lasting), stored in zip(results, entries):
                bar.update()
                if problem is not None and not lasting:
                    passing[key] = problem
                    continue
                if folder is None:  # no cache to write
                    if stored is not None:
                        leave(key, item, stored)
                    else:
                        passing[key] = problem
                    continue
                records.append((key, stored, problem, item))
                size += len(stored[1]) if stored is not None else 0
                if size >= shard_bytes or len(records) >= SHARD_IMAGES:
                    flush()
                    records, size = [], 0
            del results, entries  # (before the next images are decoded: one chunk's pixels at a time)
    if records:
        flush()
    bar.close()
    return passing, later
