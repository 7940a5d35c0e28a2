"""The decode cache: every image decoded once per collection, kept on disk, memory-mapped when used.

Where: ``--cache-dir``, else $UEO_CACHE_DIR, else $XDG_CACHE_HOME/ueo (~/.cache/ueo). Inside,
``v2/short{S}/`` holds the images decoded for input side S/2 (the shorter side capped at S, as the fast
path needs), in shards: immutable files written atomically (a temporary name, then a rename), each a
header, the uint8 pixels of up to a few thousand images, and an index (for each image: its key, offset,
decoded height and width, the original image's height and width, CRC-32, or the reason it could not
be read). Unreadable files are remembered too, so a
second run decodes nothing at all.

An image's key is a hash of its real path, size, modification and change times, inode and device (not of
its content: hashing would read every byte of every file at every start, as slow as decoding for large
collections). The change time is set by the kernel at every write, also when an archive is extracted over
a file with its old modification time or a file is repainted and its modification time reset. A changed
file is decoded again under its new key.

Safe to share: one process at a time builds (an exclusive lock on the folder; others wait and then find
the images built); readers need no lock (shards never change once named). A shard that is truncated or
whose header, index or pixels fail their checks is removed with a warning, and its images are decoded
again (in the run that finds it, from their files). Nothing is written outside the folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import struct
import time
import uuid
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .data import ImageList, file_state
from .errors import TrainingInterrupted
from .images import UNREADABLE, PixelBudget, describe, image_pixels, load_image, shrink

VERSION = 2
MAGIC = b"UEOSHRD1"
HEADER = struct.Struct("<8sIQQI")  # magic, count, index offset, index length, index crc
INDEX = np.dtype(
    [
        ("key", "S20"),
        ("offset", "<u8"),
        ("h", "<u4"),
        ("w", "<u4"),
        ("original_h", "<u4"),
        ("original_w", "<u4"),
        ("crc", "<u4"),
        ("problem", "<i4"),
    ]
)
SHARD_BYTES = 512 << 20  # pixels per shard (a shard is built in memory before it is written)
SHARD_IMAGES = 8192


def default_cache_dir() -> Path:
    """$UEO_CACHE_DIR, else $XDG_CACHE_HOME/ueo, else ~/.cache/ueo."""
    if os.environ.get("UEO_CACHE_DIR"):
        return Path(os.environ["UEO_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ueo"


def file_key(path) -> bytes:
    """The cache key of an image file: its real path and ``data.file_state`` (size, modification and change
    times, inode, device). OSError when missing."""
    name = os.fsencode(os.path.realpath(path))
    return hashlib.sha1(name + f"\0{file_state(os.stat(path))}".encode()).hexdigest()[:20].encode()


def decode(path: Path, short_side: int) -> tuple[np.ndarray, tuple[int, int]]:
    """(uint8 [3, h, w], the original (h, w)) of an image file (ueo's loader), its shorter side shrunk to
    ``short_side`` when it is longer."""
    image = load_image(path)
    return shrink(image, short_side), (image.height, image.width)


@dataclass
class Shard:
    path: Path
    index: np.ndarray  # INDEX records
    problems: list[str]


def read_shard(path: Path) -> Shard:
    """A shard's index, after checking its structure; ValueError when the file is damaged."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(HEADER.size)
        if len(head) < HEADER.size:
            raise ValueError("truncated header")
        magic, count, index_at, index_length, index_crc = HEADER.unpack(head)
        if magic != MAGIC or index_at + index_length != size or index_at < HEADER.size:
            raise ValueError("bad header or truncated file")
        f.seek(index_at)
        blob = f.read(index_length)
    if zlib.crc32(blob) != index_crc:
        raise ValueError("index checksum")
    index = np.frombuffer(blob[: count * INDEX.itemsize], dtype=INDEX)
    problems = blob[count * INDEX.itemsize :].decode("utf-8").split("\n") if len(blob) > count * INDEX.itemsize else []
    images = index[index["problem"] < 0]  # (entries of unreadable files hold no pixels)
    ends = images["offset"] + 3 * images["h"].astype(np.uint64) * images["w"]
    if len(index) != count or (len(images) and (images["offset"].min() < HEADER.size or ends.max() > index_at)):
        raise ValueError("index points outside the pixels")
    return Shard(path, index, problems)


def write_shard(folder: Path, records: list[tuple[bytes, tuple | None, str | None]]) -> Path:
    """A new shard of (key, (pixels, original size) or None, problem or None), written under a temporary
    name, synced, then renamed: a shard that exists is complete."""
    index = np.zeros(len(records), dtype=INDEX)
    problems: list[str] = []
    offset = HEADER.size
    for i, (key, decoded, problem) in enumerate(records):
        index[i]["key"] = key
        index[i]["problem"] = -1
        if decoded is None:
            index[i]["problem"] = len(problems)
            problems.append(problem or "unreadable")
            continue
        pixels, (index[i]["original_h"], index[i]["original_w"]) = decoded
        index[i]["offset"], index[i]["h"], index[i]["w"] = offset, pixels.shape[1], pixels.shape[2]
        index[i]["crc"] = zlib.crc32(pixels)
        offset += pixels.nbytes
    blob = index.tobytes() + "\n".join(p.replace("\n", " ") for p in problems).encode("utf-8")
    tmp = folder / f".{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(HEADER.pack(MAGIC, len(records), offset, len(blob), zlib.crc32(blob)))
            for _, decoded, _ in records:
                if decoded is not None:
                    f.write(decoded[0].tobytes())
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        path = folder / f"{uuid.uuid4().hex}.shard"
        os.replace(tmp, path)
        return path
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class DecodeCache:
    """The decode cache under ``root`` (see the module's docstring)."""

    def __init__(self, root=None, warn: Callable[[str], None] = print):
        self.root, self.warn = Path(root) if root is not None else default_cache_dir(), warn
        self.shards: dict[Path, Shard] = {}  # read in this process
        self.lookup: dict[bytes, tuple[Path, int]] = {}

    def folder(self, short_side: int) -> Path:
        return self.root / f"v{VERSION}" / f"short{short_side}"

    def _refresh(self, folder: Path) -> None:
        """Read the shards that appeared since the last look; remove damaged ones (with a warning)."""
        for path in sorted(folder.glob("*.shard")):
            if path in self.shards:
                continue
            try:
                shard = read_shard(path)
            except (OSError, ValueError) as error:
                self.discard(path, str(error))
                continue
            self.shards[path] = shard
            for row, key in enumerate(shard.index["key"]):
                self.lookup[bytes(key)] = (path, row)

    def discard(self, path: Path, why: str) -> None:
        """Remove a damaged shard (a reader that maps it keeps its pages); its images are decoded again."""
        self.warn(
            f"warning: the decode cache file {path} is damaged ({why}); it is removed and its images are decoded again."
        )
        path.unlink(missing_ok=True)
        shard = self.shards.pop(path, None)
        if shard is not None:
            for key in shard.index["key"]:
                if self.lookup.get(bytes(key), (None,))[0] == path:
                    del self.lookup[bytes(key)]

    def ensure(
        self,
        images: ImageList,
        short_side: int,
        threads: int | None = None,
        progress: bool = False,
        should_stop: Callable[[], bool] | None = None,
    ) -> tuple[MappedPixels, dict[int, str]]:
        """Every image decoded in the cache (decoding only those that are not): (the pixels of the readable
        ones, memory-mapped, {position in ``images``: why it is unreadable}). When the cache cannot be
        written (a read-only or full disk), the images it lacks are decoded in memory, with a warning."""
        folder = self.folder(short_side)
        keys: list[bytes | None] = []
        problems: dict[int, str] = {}
        for i, path in enumerate(images.paths):
            try:
                keys.append(file_key(path))
            except OSError as error:
                keys.append(None)
                problems[i] = describe(error)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self._refresh(folder)
            writable = True
        except OSError as error:
            self.refused(folder, error)
            writable = False
        passing: dict[bytes, str] = {}  # problems not kept in the cache (they may not last)
        memory: dict[bytes, tuple] = {}  # decoded, but not in the cache (it could not be written)
        if any(k is not None and k not in self.lookup for k in keys):
            with _locked(folder if writable else None, self.warn) as held:  # one builder at a time
                if held:
                    for stale in folder.glob(".*.tmp"):  # left by a builder that died (only lock holders write)
                        stale.unlink(missing_ok=True)
                if writable:
                    self._refresh(folder)
                todo = [i for i, k in enumerate(keys) if k is not None and k not in self.lookup]
                items = [(keys[i], images.paths[i]) for i in todo]
                passing, memory = self._build(
                    folder if writable else None, items, short_side, threads, progress, should_stop
                )
                if writable:
                    self._refresh(folder)
        kept, places = [], []
        for i, key in enumerate(keys):
            if key is None:
                continue
            if key in passing:
                problems[i] = passing[key]
                continue
            if key in memory:
                kept.append(i)
                places.append(memory[key])
                continue
            path, row = self.lookup[key]
            record = self.shards[path].index[row]
            if record["problem"] >= 0:
                problems[i] = self.shards[path].problems[record["problem"]]
            else:
                kept.append(i)
                places.append((path, row))
        return MappedPixels(
            self, places, [images.paths[i] for i in kept], [images.labels[i] for i in kept], short_side
        ), problems

    def refused(self, where: Path, error: OSError) -> None:
        """Say, once, that the cache cannot be written and that decoding goes on in memory."""
        if not getattr(self, "_said_refused", False):
            self._said_refused = True
            self.warn(
                f"warning: the decode cache cannot be written at {where} ({error.strerror or error}); the images "
                "it lacks are decoded in memory instead (choose another place with --cache-dir or $UEO_CACHE_DIR, "
                "or --no-cache to keep nothing)."
            )

    def _build(
        self,
        folder: Path | None,
        todo: list,
        short_side: int,
        threads: int | None,
        progress: bool,
        should_stop: Callable[[], bool] | None,
    ) -> tuple[dict[bytes, str], dict[bytes, tuple]]:
        """Decode ``todo`` [(key, path)] into new shards in ``folder`` (None: nowhere); returns (the problems not
        kept in the cache, the images decoded but not written: {key: (pixels, original size)}). Not kept:
        errors of the operating system (a permission, a missing file: they may be gone the next time) and
        images over PIL's decompression-bomb limit (a setting). When a shard cannot be written (the disk is
        full or read-only) the cache stops growing, with a warning, and the rest is decoded in memory."""
        from tqdm.auto import tqdm

        budget = PixelBudget()

        def one(item):
            key, path = item
            if should_stop is not None and should_stop():
                return key, None, None, False
            try:
                with budget(image_pixels(path)):
                    return key, decode(path, short_side), None, True
            except UNREADABLE as error:
                lasting = not isinstance(error, Image.DecompressionBombError) and not (
                    isinstance(error, OSError) and error.errno is not None
                )
                return key, None, describe(error), lasting

        records, size, passing, memory = [], 0, {}, {}

        def flush():
            nonlocal folder
            if folder is not None:
                try:
                    write_shard(folder, records)
                    return
                except OSError as error:
                    self.refused(folder, error)
                    folder = None
            for key, decoded, problem in records:
                if decoded is not None:
                    memory[key] = decoded
                else:
                    passing[key] = problem

        bar = tqdm(total=len(todo), desc="decode", unit="img", disable=not progress, leave=False)
        with ThreadPoolExecutor(max_workers=threads or min(32, os.cpu_count() or 4)) as pool:
            for start in range(0, len(todo), 256):  # in order, a bounded number in flight
                for key, decoded, problem, lasting in pool.map(one, todo[start : start + 256]):
                    if decoded is None and problem is None:
                        raise TrainingInterrupted("stopped while decoding the images")
                    bar.update()
                    if problem is not None and not lasting:
                        passing[key] = problem
                        continue
                    records.append((key, decoded, problem))
                    size += decoded[0].nbytes if decoded is not None else 0
                    if size >= SHARD_BYTES or len(records) >= SHARD_IMAGES:
                        flush()
                        records, size = [], 0
        if records:
            flush()
        bar.close()
        return passing, memory


LOCK_WAIT = 120.0  # seconds to wait for another process that builds the same cache folder


@contextlib.contextmanager
def _locked(folder: Path | None, warn: Callable[[str], None] = print):
    """An exclusive lock on a cache folder while building (released when the block ends, or when the process
    dies); yields whether it is held. A builder that holds it for more than LOCK_WAIT seconds (suspended,
    hung) is not waited for longer: this process then decodes on its own, with a warning."""
    if folder is None:
        yield False
        return
    with open(folder / ".lock", "a") as handle:
        held = _try_lock(handle)
        if not held:
            warn(f"waiting for another ueo process that is decoding images into the cache {folder} ...")
            deadline = time.monotonic() + LOCK_WAIT
            while not held and time.monotonic() < deadline:
                time.sleep(0.2)
                held = _try_lock(handle)
            if not held:
                warn(
                    f"warning: the other process still holds the decode cache {folder} after {LOCK_WAIT:.0f} s "
                    "(suspended or hung?); decoding here without waiting (some images may be decoded twice)."
                )
        try:
            yield held
        finally:
            if held:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _try_lock(handle) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


class MappedPixels:
    """Decoded images read from the cache's shards through memory maps: the pixels stay file-backed (the
    process's own memory holds a few numbers per image). Each image's CRC is checked the first time this
    process reads it; a mismatch removes its shard (with a warning) and the image is decoded from its file.
    ``places``: for each image, (shard, row), or (pixels, original size) when it is held in memory (the
    cache could not be written)."""

    def __init__(self, cache: DecodeCache, places: list[tuple], paths: list, labels: list[int], short_side: int):
        self.cache, self.paths, self.labels, self.short_side = cache, list(paths), list(labels), short_side
        mapped = [place for place in places if isinstance(place[0], Path)]
        self.files = sorted({path for path, _ in mapped})
        number = {path: i for i, path in enumerate(self.files)}
        self.shard = np.full(len(places), -1, dtype=np.int32)
        self.offset = np.zeros(len(places), dtype=np.uint64)
        self.crc = np.zeros(len(places), dtype=np.uint32)
        self.sizes, self.originals = [], []
        self.verified = np.zeros(len(places), dtype=bool)
        self.maps: dict[int, np.memmap] = {}
        self.decoded: dict[int, torch.Tensor] = {}  # images held in memory, or whose cached copy failed its check
        for i, place in enumerate(places):
            if isinstance(place[0], Path):
                path, row = place
                record = cache.shards[path].index[row]
                self.shard[i], self.offset[i], self.crc[i] = number[path], record["offset"], record["crc"]
                self.sizes.append((int(record["h"]), int(record["w"])))
                self.originals.append((int(record["original_h"]), int(record["original_w"])))
            else:
                pixels, original = place
                self.decoded[i] = torch.from_numpy(pixels)
                self.sizes.append((pixels.shape[1], pixels.shape[2]))
                self.originals.append(tuple(original))

    def __len__(self):
        return len(self.sizes)

    @property
    def nbytes(self) -> int:
        return int(sum(3 * h * w for h, w in self.sizes))

    def image(self, i: int) -> torch.Tensor:
        """uint8 [3, h, w], a view of the memory map (no copy)."""
        if i in self.decoded:
            return self.decoded[i]
        shard = int(self.shard[i])
        if shard not in self.maps:
            self.maps[shard] = np.memmap(self.files[shard], dtype=np.uint8, mode="c")  # private: never written
        h, w = self.sizes[i]
        start = int(self.offset[i])
        view = self.maps[shard][start : start + 3 * h * w]
        if not self.verified[i]:
            if zlib.crc32(view) != int(self.crc[i]):
                self.cache.discard(self.files[shard], f"the pixels of {self.paths[i]} fail their checksum")
                self.decoded[i] = torch.from_numpy(decode(Path(self.paths[i]), self.short_side)[0])
                return self.decoded[i]
            self.verified[i] = True
        return torch.from_numpy(view.reshape(3, h, w))
