"""The decode cache: every image decoded once per collection, kept on disk, memory-mapped when used.

Where: ``--cache-dir``, else $UEO_CACHE_DIR, else $XDG_CACHE_HOME/ueo (~/.cache/ueo). Inside,
``v2/short{S}/`` holds the images decoded for input side S/2 (the shorter side capped at S, as the fast
path needs), in shards: immutable files written atomically (a temporary name, then a rename), each a
header, the uint8 pixels of up to a few thousand images, and an index (for each image: its key, offset,
decoded height and width, the original image's height and width, CRC-32, or the reason it could not
be read). Unreadable files are remembered too, so a
second run decodes nothing at all.

An image's key is a hash of its real path, size and modification time (not of its content: hashing
would read every byte of every file at every start, as slow as decoding for large collections; a file
that is edited or replaced gets a new modification time, like make and rsync assume). A changed file is
decoded again under its new key.

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
import uuid
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .data import ImageList
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
    """The cache key of an image file: its real path, size and modification time. OSError when missing."""
    stat = os.stat(path)
    name = os.fsencode(os.path.realpath(path))
    return hashlib.sha1(name + f"\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:20].encode()


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
        """Every image decoded in the cache (decoding only those that are not): (the pixels, memory-mapped,
        of the readable ones, {position in ``images``: why it is unreadable})."""
        folder = self.folder(short_side)
        folder.mkdir(parents=True, exist_ok=True)
        keys: list[bytes | None] = []
        problems: dict[int, str] = {}
        for i, path in enumerate(images.paths):
            try:
                keys.append(file_key(path))
            except OSError as error:
                keys.append(None)
                problems[i] = describe(error)
        self._refresh(folder)
        passing: dict[bytes, str] = {}  # problems not kept in the cache (they depend on a setting)
        if any(k is not None and k not in self.lookup for k in keys):
            with _locked(folder):  # one builder at a time; the others find its shards afterwards
                for stale in folder.glob(".*.tmp"):  # left by a builder that died (only lock holders write)
                    stale.unlink(missing_ok=True)
                self._refresh(folder)
                todo = [i for i, k in enumerate(keys) if k is not None and k not in self.lookup]
                passing = self._build(
                    folder, [(keys[i], images.paths[i]) for i in todo], short_side, threads, progress, should_stop
                )
                self._refresh(folder)
        kept = []
        for i, key in enumerate(keys):
            if key is None:
                continue
            if key in passing:
                problems[i] = passing[key]
                continue
            path, row = self.lookup[key]
            record = self.shards[path].index[row]
            if record["problem"] >= 0:
                problems[i] = self.shards[path].problems[record["problem"]]
            else:
                kept.append(i)
        return MappedPixels(
            self,
            [self.lookup[keys[i]] for i in kept],
            [images.paths[i] for i in kept],
            [images.labels[i] for i in kept],
            short_side,
        ), problems

    def _build(
        self,
        folder: Path,
        todo: list,
        short_side: int,
        threads: int | None,
        progress: bool,
        should_stop: Callable[[], bool] | None,
    ) -> dict[bytes, str]:
        """Decode ``todo`` [(key, path)] into new shards; returns the problems not kept in the cache (images
        over PIL's decompression-bomb limit: the limit is a setting, the file may be fine under another)."""
        from tqdm.auto import tqdm

        budget = PixelBudget()

        def one(item):
            key, path = item
            if should_stop is not None and should_stop():
                return key, None, None
            try:
                with budget(image_pixels(path)):
                    return key, decode(path, short_side), None
            except UNREADABLE as error:
                kept = not isinstance(error, (Image.DecompressionBombError, Image.DecompressionBombWarning))
                return key, None, describe(error) if kept else "\0" + describe(error)

        records, size, passing = [], 0, {}
        bar = tqdm(total=len(todo), desc="decode", unit="img", disable=not progress, leave=False)
        with ThreadPoolExecutor(max_workers=threads or min(32, os.cpu_count() or 4)) as pool:
            for start in range(0, len(todo), 256):  # in order, a bounded number in flight
                for key, decoded, problem in pool.map(one, todo[start : start + 256]):
                    if decoded is None and problem is None:
                        raise TrainingInterrupted("stopped while decoding the images")
                    if problem is not None and problem.startswith("\0"):
                        passing[key] = problem[1:]
                        continue
                    records.append((key, decoded, problem))
                    size += decoded[0].nbytes if decoded is not None else 0
                    bar.update()
                    if size >= SHARD_BYTES or len(records) >= SHARD_IMAGES:
                        write_shard(folder, records)
                        records, size = [], 0
        if records:
            write_shard(folder, records)
        bar.close()
        return passing


@contextlib.contextmanager
def _locked(folder: Path):
    """An exclusive lock on a cache folder (released when the block ends, or when the process dies)."""
    with open(folder / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class MappedPixels:
    """Decoded images read from the cache's shards through memory maps: the pixels stay file-backed (the
    process's own memory holds a few numbers per image). Each image's CRC is checked the first time this
    process reads it; a mismatch removes its shard (with a warning) and the image is decoded from its file."""

    def __init__(
        self, cache: DecodeCache, places: list[tuple[Path, int]], paths: list, labels: list[int], short_side: int
    ):
        self.cache, self.paths, self.labels, self.short_side = cache, list(paths), list(labels), short_side
        self.files = sorted({path for path, _ in places})
        number = {path: i for i, path in enumerate(self.files)}
        rows = [cache.shards[path].index[row] for path, row in places]
        self.shard = np.array([number[path] for path, _ in places], dtype=np.int32)
        self.offset = np.array([r["offset"] for r in rows], dtype=np.uint64)
        self.crc = np.array([r["crc"] for r in rows], dtype=np.uint32)
        self.sizes = [(int(r["h"]), int(r["w"])) for r in rows]
        self.originals = [(int(r["original_h"]), int(r["original_w"])) for r in rows]
        self.verified = np.zeros(len(rows), dtype=bool)
        self.maps: dict[int, np.memmap] = {}
        self.decoded: dict[int, torch.Tensor] = {}  # images whose cached copy failed its check

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
