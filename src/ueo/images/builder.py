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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm.auto import tqdm

from ..data import Member, opened, stream
from ..errors import Interrupted
from ..files import write_text
from .reading import UNREADABLE, PixelBudget, decode, describe, image_pixels, release_freed_memory
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


def decoded_chunks(todo: list, short_side: int, threads: int | None, should_stop: Callable[[], bool] | None):
    """The images of ``todo`` [(key, image)] decoded, IN_FLIGHT at a time, in order: lists of (key, image,
    (pixels, original size) or None, why it is unreadable or None, whether that is kept in the cache).
    Images that only a stream gives are read in one pass per container; the others at random, in parallel,
    within a pixel budget. Interrupted when ``should_stop`` says so."""
    budget = PixelBudget()
    streamed = {item: key for key, item in todo if isinstance(item, Member) and item.streamed}

    def payloads():
        yield from ((key, item, None) for key, item in todo if item not in streamed)
        for item, data, why in stream(list(streamed)):
            yield streamed[item], item, data if data is not None else OSError(why)

    def one(payload):
        key, item, data = payload
        if should_stop is not None and should_stop():
            return None
        try:
            if isinstance(data, OSError):
                raise data
            source = io.BytesIO(data) if data is not None else (opened(item) if isinstance(item, Member) else item)
            with budget(image_pixels(source)):
                return key, item, decode(source, short_side), None, True
        except UNREADABLE as error:
            # errors of the system (a permission, a missing file) may be gone the next time, and PIL's
            # decompression-bomb limit is a setting: neither is kept in the cache
            lasting = not isinstance(error, Image.DecompressionBombError) and not (
                isinstance(error, OSError) and error.errno is not None
            )
            return key, item, None, describe(error), lasting

    work = payloads()
    with ThreadPoolExecutor(max_workers=threads or min(32, os.cpu_count() or 4)) as pool:
        while batch := [p for _, p in zip(range(IN_FLIGHT), work)]:
            results = list(pool.map(one, batch))
            if any(r is None for r in results):
                raise Interrupted("stopped while decoding the images")
            yield results
            del results  # (before the next images are decoded: one chunk's pixels at a time)


@dataclass
class Shelf:
    """Where decoded images go: shards in ``folder`` (None: nowhere), written once ``shard_bytes`` of entries
    have come; what the cache cannot take is left to be read later (``later``: {key: place}); problems
    not kept in the cache in ``passing``."""

    cache: Any
    folder: Path | None
    collection: str
    shard_bytes: int
    records: list[tuple] = field(default_factory=list)
    size: int = 0
    passing: dict[bytes, str] = field(default_factory=dict)
    later: dict[bytes, tuple] = field(default_factory=dict)

    def add(self, key: bytes, item, stored, problem: str | None) -> None:
        """An image's entry (format, bytes, size, original size), or its lasting problem (stored None)."""
        if self.folder is None:  # no cache to write
            if stored is not None:
                self.leave(key, item, stored)
            else:
                self.passing[key] = problem or "unreadable"
            return
        self.records.append((key, stored, problem, item))
        self.size += len(stored[1]) if stored is not None else 0
        if self.size >= self.shard_bytes or len(self.records) >= SHARD_IMAGES:
            self.flush()

    def leave(self, key: bytes, item, stored) -> None:
        """An image decoded but not written: read from its source when needed, or (a stream's) spilled."""
        fmt, data, hw, original = stored
        if not (isinstance(item, Member) and item.streamed):
            self.later[key] = (SOURCE, tuple(original))
            return
        spill = self.cache.spill
        self.later[key] = (HELD, spill, spill.append(data), len(data), fmt, tuple(hw), tuple(original))
        if spill.memory is not None and not spill.said:
            spill.said = True
            self.cache.warn(
                "warning: no temporary file can be written for the streamed images the decode cache cannot take: "
                "they are held in memory as they are stored (give the cache room, or free the disk)."
            )

    def flush(self) -> None:
        """Write the pending entries as a shard when the cache has room, else leave them (and stop writing)."""
        records, self.records, self.size = self.records, [], 0
        if self.folder is not None:
            try:
                if self.cache.room(self.folder, sum(len(r[1][1]) for r in records if r[1] is not None)):
                    rows = [(key, stored, problem, what_of(item)) for key, stored, problem, item in records]
                    self.cache.pin(
                        write_shard(self.folder, rows, self.collection)
                    )  # (in use: never evicted for the next)
                    return
                self.folder = None
            except OSError as error:
                self.cache.refused(self.folder, error)
                self.folder = None
        for key, stored, problem, item in records:
            if stored is not None:
                self.leave(key, item, stored)
            else:
                self.passing[key] = problem


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
    a stream gives, (HELD, spill, offset, stored bytes, format, size, original size)). When a shard cannot be
    written (the disk is full or read-only, the bound is reached) the cache stops growing, with a warning."""
    limit = bound(cache.root, cache.max_size, warn=cache.warn)[0]
    shelf = Shelf(cache, folder, collection, min(SHARD_BYTES, limit // SHARDS_PER_BOUND))
    bar = tqdm(total=len(todo), desc="decode", unit="img", disable=None if progress else True, leave=False)
    started, fmt = time.monotonic(), None
    first = True
    for results in decoded_chunks(todo, short_side, threads, should_stop):
        if fmt is None and any(r[2] is not None for r in results):  # the entries' format, what the pass costs
            fmt = first_look(cache, results, len(todo), images, collection, folder, started)
        entries = [
            None if d is None else (*encode(d[0], d[1], fmt or "raw"), d[0].shape[1:], d[1])
            for _, _, d, _, _ in results
        ]
        if shelf.folder is not None and first:  # no room even for the first images: none for more
            room = sum(len(e[1]) for e in entries if e is not None)
            shelf.folder = shelf.folder if cache.room(shelf.folder, room) else None
        first = False
        for (key, item, _, problem, lasting), stored in zip(results, entries):
            bar.update()
            if problem is not None and not lasting:
                shelf.passing[key] = problem
            else:
                shelf.add(key, item, stored, problem)
        del results, entries  # (before the next images are decoded: one chunk's pixels at a time)
        release_freed_memory()
    if shelf.records:
        shelf.flush()
    bar.close()
    return shelf.passing, shelf.later
