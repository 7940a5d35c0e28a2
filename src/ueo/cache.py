"""The decode cache: every image decoded once per collection, kept on disk, memory-mapped when used.

Where: ``--cache-dir``, else $UEO_CACHE_DIR, else $XDG_CACHE_HOME/ueo (~/.cache/ueo). Inside,
``v3/short{S}/`` holds the images decoded for input side S/2 (the shorter side capped at S, as the fast
path needs), in shards: immutable files written atomically (a temporary name, then a rename), each a
header, the images of up to a few thousand files, and an index (for each image: its key, offset, stored
length, format, decoded height and width, the original image's height and width, CRC-32, or the reason it
could not be read) followed by what each entry was decoded from (for ``ueo cache prune``). Unreadable
files are remembered too, so a second run decodes nothing at all.

Formats (``--cache-format``): raw uint8 pixels, or JPEG at quality 95 without chroma subsampling (about a
tenth of the bytes; decoded again at each use). The default, ``auto``, stores an image that was shrunk to
the cap as JPEG and a smaller one raw.

An image's key is a hash of its identity (``data.identity``: a file's real path, size, modification and
change times, inode and device; for an image inside a shard or a dataset, the container's and its name),
not of its content: hashing would read every byte of every file at every start. A changed file is decoded
again under its new key.

A bound (``--cache-max-size``, $UEO_CACHE_MAX_SIZE; else the bound set at first use, the smaller of 20% of
the free disk and 50 GB, kept in ``settings.json``) caps the size of all shards. Before a new shard would
pass it, the least recently used shards are removed whole (a shard's modification time is its last use);
if it still would not fit, building stops with a warning and the rest is decoded in memory. Building also
stops when the disk's free space would fall under a floor ($UEO_CACHE_MIN_FREE, else the smaller of 5 GB
and 5% of the disk).

Locks. One process at a time builds in a folder (an exclusive ``flock`` on its ``.lock``; others wait and
then find the images built). A process that uses a shard holds a shared ``flock`` on it for as long as it
may read it. Removing a shard (eviction, ``ueo cache prune/clear``) takes an exclusive ``flock`` without
waiting, and skips the shard when that fails, so a shard in use is never removed; a reader that takes its
shared lock checks that the file it locked is still the one at its name (an eviction may have come first)
and decodes the images again when not. A damaged shard is removed whatever its locks (its readers keep
their pages), with a warning, and its images are decoded again. Nothing is written outside the folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
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

from .data import ImageList, identity
from .errors import ConfigError, TrainingInterrupted
from .images import UNREADABLE, PixelBudget, describe, image_pixels, load_image, shrink

VERSION = 3
MAGIC = b"UEOSHRD3"
HEADER = struct.Struct("<8sIQQI")  # magic, count, index offset, index length, index crc
INDEX = np.dtype(
    [
        ("key", "S20"),
        ("offset", "<u8"),
        ("nbytes", "<u8"),
        ("format", "<u1"),
        ("h", "<u4"),
        ("w", "<u4"),
        ("original_h", "<u4"),
        ("original_w", "<u4"),
        ("crc", "<u4"),
        ("problem", "<i4"),
    ]
)
RAW, JPEG = 0, 1
FORMATS = ("auto", "raw", "jpeg")
JPEG_QUALITY = 95
SHARD_BYTES = 512 << 20  # stored bytes per shard (a shard is built in memory before it is written)
SHARD_IMAGES = 8192
DEFAULT_MAX_SIZE = 50 * 10**9
DEFAULT_SHARE = 0.2  # of the free disk at first use
MIN_FREE, MIN_FREE_SHARE = 5 * 10**9, 0.05
UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9}
UNITS |= {"t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def default_cache_dir() -> Path:
    """$UEO_CACHE_DIR, else $XDG_CACHE_HOME/ueo, else ~/.cache/ueo."""
    if os.environ.get("UEO_CACHE_DIR"):
        return Path(os.environ["UEO_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ueo"


def parse_size(text, what: str = "--cache-max-size") -> int:
    """Bytes of a size such as 50GB, 500M, 2.5GiB or 1000000 (K, M, G, T: powers of 1000; KiB...: of 1024)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    if not match or match.group(2).lower() not in UNITS:
        raise ConfigError(f"{what} must be a size such as 50GB, 500MB or 2GiB, got {text!r}.")
    return int(float(match.group(1)) * UNITS[match.group(2).lower()])


def file_key(item) -> bytes:
    """The cache key of an image: a hash of ``data.identity``. OSError when a file is missing."""
    return hashlib.sha1(identity(item)).hexdigest()[:20].encode()


def decode(source, short_side: int) -> tuple[np.ndarray, tuple[int, int]]:
    """(uint8 [3, h, w], the original (h, w)) of an image (a file, a member, or an open file of its bytes),
    its shorter side shrunk to ``short_side`` when it is longer."""
    image = load_image(source)
    return shrink(image, short_side), (image.height, image.width)


def encode(pixels: np.ndarray, original: tuple[int, int], fmt: str) -> tuple[int, bytes]:
    """(format, stored bytes) of decoded pixels: JPEG (``auto``: when the image was shrunk) or raw."""
    shrunk = (pixels.shape[1], pixels.shape[2]) != tuple(original)
    if fmt == "jpeg" or (fmt == "auto" and shrunk):
        buffer = io.BytesIO()
        Image.fromarray(pixels.transpose(1, 2, 0)).save(buffer, "JPEG", quality=JPEG_QUALITY, subsampling=0)
        return JPEG, buffer.getvalue()
    return RAW, pixels.tobytes()


def unpack(stored, fmt: int, h: int, w: int) -> torch.Tensor:
    """uint8 [3, h, w] of stored bytes (a view of raw pixels; a JPEG decoded by PIL)."""
    if fmt == JPEG:
        with Image.open(io.BytesIO(memoryview(stored))) as image:
            return torch.from_numpy(np.asarray(image.convert("RGB")).transpose(2, 0, 1).copy())
    return torch.from_numpy(np.asarray(stored)).view(3, h, w)


def what_of(item) -> dict:
    """What an entry was decoded from, as ``ueo cache prune`` needs it to see whether it changed."""
    if hasattr(item, "container"):
        return {"container": item.container, "name": item.name, "offset": item.offset, "column": item.column}
    return {"path": os.fsdecode(os.path.realpath(item))}


@dataclass
class Shard:
    path: Path
    index: np.ndarray  # INDEX records
    problems: list[str]
    items: list[dict]  # what_of() of each entry


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
    try:
        notes = json.loads(blob[count * INDEX.itemsize :].decode("utf-8"))
    except ValueError:
        raise ValueError("index notes") from None
    images = index[index["problem"] < 0]  # (entries of unreadable files hold no pixels)
    ends = images["offset"] + images["nbytes"]
    if len(index) != count or (len(images) and (images["offset"].min() < HEADER.size or ends.max() > index_at)):
        raise ValueError("index points outside the pixels")
    return Shard(path, index, notes["problems"], notes["items"])


def write_shard(folder: Path, records: list[tuple]) -> Path:
    """A new shard of (key, (format, stored bytes, decoded (h, w), original (h, w)) or None, problem or None,
    what_of), written under a temporary name, synced, then renamed: a shard that exists is complete."""
    index = np.zeros(len(records), dtype=INDEX)
    problems: list[str] = []
    offset = HEADER.size
    for i, (key, stored, problem, _) in enumerate(records):
        index[i]["key"] = key
        index[i]["problem"] = -1
        if stored is None:
            index[i]["problem"] = len(problems)
            problems.append(problem or "unreadable")
            continue
        fmt, data, (h, w), (oh, ow) = stored
        index[i]["offset"], index[i]["nbytes"], index[i]["format"] = offset, len(data), fmt
        index[i]["h"], index[i]["w"], index[i]["original_h"], index[i]["original_w"] = h, w, oh, ow
        index[i]["crc"] = zlib.crc32(data)
        offset += len(data)
    notes = {"problems": problems, "items": [r[3] for r in records]}
    blob = index.tobytes() + json.dumps(notes, ensure_ascii=True).encode("utf-8")
    tmp = folder / f".{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(HEADER.pack(MAGIC, len(records), offset, len(blob), zlib.crc32(blob)))
            for _, stored, _, _ in records:
                if stored is not None:
                    f.write(stored[1])
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        path = folder / f"{uuid.uuid4().hex}.shard"
        os.replace(tmp, path)
        return path
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def shard_files(root: Path) -> list[Path]:
    """Every shard under the cache's root, of every version and geometry."""
    return sorted(root.glob("v*/short*/*.shard")) if root.is_dir() else []


def removable(path: Path) -> bool:
    """Remove a shard unless a process uses it (holds its shared lock); whether it was removed."""
    try:
        with open(path, "rb") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            path.unlink(missing_ok=True)
            return True
    except FileNotFoundError:
        return True


def disk_floor(folder: Path) -> int:
    """The free space building leaves on the disk: $UEO_CACHE_MIN_FREE, else min(5 GB, 5% of the disk)."""
    if os.environ.get("UEO_CACHE_MIN_FREE"):
        return parse_size(os.environ["UEO_CACHE_MIN_FREE"], "$UEO_CACHE_MIN_FREE")
    return int(min(MIN_FREE, MIN_FREE_SHARE * shutil.disk_usage(folder).total))


def bound(root: Path, max_size=None, remember: bool = True) -> tuple[int, str]:
    """(the cache's bound in bytes, where it comes from): ``max_size``, $UEO_CACHE_MAX_SIZE, or the bound
    set at first use (kept in ``settings.json``, unless not ``remember``: the smaller of 20% of the free
    disk then and 50 GB)."""
    if max_size is not None:
        return parse_size(max_size), "--cache-max-size"
    if os.environ.get("UEO_CACHE_MAX_SIZE"):
        return parse_size(os.environ["UEO_CACHE_MAX_SIZE"], "$UEO_CACHE_MAX_SIZE"), "$UEO_CACHE_MAX_SIZE"
    settings = root / "settings.json"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        kept = json.loads(settings.read_text())
        return int(kept["max_size"]), kept["why"]
    free = shutil.disk_usage(root if root.is_dir() else _existing(root)).free
    size = int(min(DEFAULT_MAX_SIZE, DEFAULT_SHARE * free))
    why = f"the default: the smaller of 50 GB and 20% of the {free / 1e9:.1f} GB free at first use"
    if not remember:
        return size, why.replace("at first use", "now")
    with contextlib.suppress(OSError):
        root.mkdir(parents=True, exist_ok=True)
        tmp = root / f".{uuid.uuid4().hex}.tmp"
        tmp.write_text(json.dumps({"max_size": size, "why": why}))
        os.replace(tmp, settings)
    return size, why


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


class DecodeCache:
    """The decode cache under ``root`` (see the module's docstring). ``format``: how new entries are
    stored (auto, raw, jpeg); ``max_size``: the bound (a size such as "50GB"; None: $UEO_CACHE_MAX_SIZE or
    the bound set at first use)."""

    def __init__(self, root=None, warn: Callable[[str], None] = print, *, format: str = "auto", max_size=None):
        if format not in FORMATS:
            raise ConfigError(f"--cache-format must be one of {', '.join(FORMATS)}, got {format!r}.")
        self.root, self.warn, self.format = Path(root) if root is not None else default_cache_dir(), warn, format
        self.max_size = None if max_size is None else parse_size(max_size)
        self.shards: dict[Path, Shard] = {}  # read in this process
        self.lookup: dict[bytes, tuple[Path, int]] = {}
        self.pins: dict[Path, object] = {}  # shard -> open file holding its shared lock

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
                if path.exists():
                    self.discard(path, str(error))
                continue
            self.shards[path] = shard
            for row, key in enumerate(shard.index["key"]):
                self.lookup[bytes(key)] = (path, row)

    def _forget(self, path: Path) -> None:
        shard = self.shards.pop(path, None)
        if shard is not None:
            for key in shard.index["key"]:
                if self.lookup.get(bytes(key), (None,))[0] == path:
                    del self.lookup[bytes(key)]
        handle = self.pins.pop(path, None)
        if handle is not None:
            handle.close()

    def discard(self, path: Path, why: str) -> None:
        """Remove a damaged shard (a reader that maps it keeps its pages); its images are decoded again."""
        self.warn(
            f"warning: the decode cache file {path} is damaged ({why}); it is removed and its images are decoded again."
        )
        path.unlink(missing_ok=True)
        self._forget(path)

    def pin(self, path: Path) -> bool:
        """Hold a shared lock on a shard while this process may read it, and mark its use (its modification
        time: the LRU order); False when the shard was removed before the lock was taken."""
        if path in self.pins:
            return True
        try:
            handle = open(path, "rb")  # noqa: SIM115 (held open: the lock lives as long as the file is open)
        except FileNotFoundError:
            self._forget(path)
            return False
        fcntl.flock(handle, fcntl.LOCK_SH)  # an evictor holds its exclusive lock only to unlink
        try:
            same = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            handle.close()
            self._forget(path)
            return False
        self.pins[path] = handle
        with contextlib.suppress(OSError):
            os.utime(path)
        return True

    def release(self) -> None:
        """Let the shards this process used be evicted again."""
        for handle in self.pins.values():
            handle.close()
        self.pins.clear()

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
        written (a read-only or full disk, the bound reached), the images it lacks are decoded in memory,
        with a warning. The shards used stay locked against eviction until ``release``."""
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

        def lacking(key):
            return key is not None and key not in self.lookup and key not in memory and key not in passing

        for _ in range(3):  # a shard evicted by another process between looking and locking: build again
            wanted = {self.lookup[k][0] for k in keys if k is not None and k in self.lookup}
            pinned = [self.pin(path) for path in sorted(wanted)]  # every one, not up to the first failure
            if not all(pinned):
                continue
            if not any(lacking(k) for k in keys):
                break
            with _locked(folder if writable else None, self.warn) as held:  # one builder at a time
                if held:
                    for stale in folder.glob(".*.tmp"):  # left by a builder that died (only lock holders write)
                        stale.unlink(missing_ok=True)
                if writable:
                    self._refresh(folder)
                todo = [i for i, k in enumerate(keys) if lacking(k)]
                items = [(keys[i], images.paths[i]) for i in todo]
                more_passing, more_memory = self._build(
                    folder if writable else None, items, short_side, threads, progress, should_stop
                )
                passing |= more_passing
                memory |= more_memory
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
            if key not in self.lookup or not self.pin(self.lookup[key][0]):
                problems[i] = "its decode cache entry was removed by another process while this one read it"
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

    def stopped(self, why: str) -> None:
        """Say, once, that the cache stops growing and why."""
        if not getattr(self, "_said_stopped", False):
            self._said_stopped = True
            self.warn(f"warning: the decode cache stopped growing: {why}; the rest is decoded in memory.")

    def room(self, folder: Path, size: int) -> bool:
        """Whether a new shard of ``size`` bytes may be written: under the bound (evicting the least recently
        used shards not in use), and above the disk's free-space floor. Says why not, once."""
        free, floor = shutil.disk_usage(folder).free, disk_floor(folder)
        if free - size < floor:
            self.stopped(
                f"the disk holding {self.root} has {free / 1e9:.2f} GB free, and a new shard of {size / 1e6:.0f} MB "
                f"would leave less than the floor of {floor / 1e9:.2f} GB ($UEO_CACHE_MIN_FREE)"
            )
            return False
        limit, why = bound(self.root, self.max_size)
        shards = [(p, p.stat()) for p in shard_files(self.root) if p.exists()]
        total = sum(st.st_size for _, st in shards)
        for path, st in sorted(shards, key=lambda s: s[1].st_mtime_ns):  # least recently used first
            if total + size <= limit:
                break
            if path not in self.pins and removable(path):
                self._forget(path)
                total -= st.st_size
        if total + size > limit:
            self.stopped(
                f"it holds {total / 1e9:.2f} GB of shards in use, and a new shard of {size / 1e6:.0f} MB would pass "
                f"its bound of {limit / 1e9:.2f} GB ({why}; raise it with --cache-max-size or $UEO_CACHE_MAX_SIZE)"
            )
            return False
        return True

    def _build(
        self,
        folder: Path | None,
        todo: list,
        short_side: int,
        threads: int | None,
        progress: bool,
        should_stop: Callable[[], bool] | None,
    ) -> tuple[dict[bytes, str], dict[bytes, tuple]]:
        """Decode ``todo`` [(key, image)] into new shards in ``folder`` (None: nowhere); returns (the problems
        not kept in the cache, the images decoded but not written: {key: (pixels, original size)}). Not kept:
        errors of the operating system (a permission, a missing file: they may be gone the next time) and
        images over PIL's decompression-bomb limit (a setting). When a shard cannot be written (the disk is
        full or read-only, the bound is reached) the cache stops growing, with a warning, and the rest is
        decoded in memory. Images that only a stream gives (``ueo.sources``) are read in one pass per
        container; the others at random, in parallel."""
        from tqdm.auto import tqdm

        from .sources import opened, stream

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
                source = (
                    io.BytesIO(data) if data is not None else (opened(item) if hasattr(item, "container") else item)
                )
                with budget(image_pixels(source)):
                    return key, item, decode(source, short_side), None, True
            except UNREADABLE as error:
                lasting = not isinstance(error, Image.DecompressionBombError) and not (
                    isinstance(error, OSError) and error.errno is not None
                )
                return key, item, None, describe(error), lasting

        records: list[tuple] = []
        size, passing, memory = 0, {}, {}

        def flush():
            nonlocal folder
            if folder is not None:
                try:
                    if self.room(folder, size):
                        write_shard(folder, records)
                        return
                    folder = None
                except OSError as error:
                    self.refused(folder, error)
                    folder = None
            for key, stored, problem, _ in records:
                if stored is not None:
                    fmt, data, (h, w), original = stored
                    memory[key] = (unpack(np.frombuffer(bytearray(data), np.uint8), fmt, h, w).numpy(), original)
                else:
                    passing[key] = problem

        bar = tqdm(total=len(todo), desc="decode", unit="img", disable=not progress, leave=False)
        work = payloads()
        with ThreadPoolExecutor(max_workers=threads or min(32, os.cpu_count() or 4)) as pool:
            while batch := [p for _, p in zip(range(256), work)]:  # in order, a bounded number in flight
                for key, item, decoded, problem, lasting in pool.map(one, batch):
                    if decoded is None and problem is None:
                        raise TrainingInterrupted("stopped while decoding the images")
                    bar.update()
                    if problem is not None and not lasting:
                        passing[key] = problem
                        continue
                    if folder is None:  # no cache to write: kept in memory as decoded
                        if decoded is not None:
                            memory[key] = decoded
                        else:
                            passing[key] = problem
                        continue
                    stored = None
                    if decoded is not None:
                        fmt, data = encode(decoded[0], decoded[1], self.format)
                        stored = (fmt, data, decoded[0].shape[1:], decoded[1])
                    records.append((key, stored, problem, what_of(item)))
                    size += len(stored[1]) if stored is not None else 0
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
    """Decoded images read from the cache's shards through memory maps: the stored bytes stay file-backed
    (the process's own memory holds a few numbers per image; a JPEG entry is decoded at each read). Each
    image's CRC is checked the first time this process reads it; a mismatch removes its shard (with a
    warning) and the image is decoded from its source. ``places``: for each image, (shard, row), or
    (pixels, original size) when it is held in memory (the cache could not be written)."""

    def __init__(self, cache: DecodeCache, places: list[tuple], paths: list, labels: list[int], short_side: int):
        self.cache, self.paths, self.labels, self.short_side = cache, list(paths), list(labels), short_side
        mapped = [place for place in places if isinstance(place[0], Path)]
        self.files = sorted({path for path, _ in mapped})
        number = {path: i for i, path in enumerate(self.files)}
        n = len(places)
        self.shard = np.full(n, -1, dtype=np.int32)
        self.offset, self.stored = np.zeros(n, dtype=np.uint64), np.zeros(n, dtype=np.uint64)
        self.format = np.zeros(n, dtype=np.uint8)
        self.crc = np.zeros(n, dtype=np.uint32)
        self.sizes, self.originals = [], []
        self.verified = np.zeros(n, dtype=bool)
        self.maps: dict[int, np.memmap] = {}
        self.decoded: dict[int, torch.Tensor] = {}  # images held in memory, or whose cached copy failed its check
        for i, place in enumerate(places):
            if isinstance(place[0], Path):
                path, row = place
                record = cache.shards[path].index[row]
                self.shard[i], self.offset[i], self.crc[i] = number[path], record["offset"], record["crc"]
                self.stored[i], self.format[i] = record["nbytes"], record["format"]
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
        """The bytes of the decoded pixels (what holding them all on a device takes)."""
        return int(sum(3 * h * w for h, w in self.sizes))

    def encoded(self, i: int) -> torch.Tensor | None:
        """The JPEG bytes of image i as a uint8 tensor (checked), or None when it is not stored as JPEG."""
        if i in self.decoded or self.format[i] != JPEG:
            return None
        view = self._view(i)
        return None if view is None else torch.from_numpy(np.asarray(view))

    def _view(self, i: int):
        """The stored bytes of image i in its memory map, checked the first time; None (and decoded from its
        source) when they fail their checksum."""
        shard = int(self.shard[i])
        if shard not in self.maps:
            self.maps[shard] = np.memmap(self.files[shard], dtype=np.uint8, mode="c")  # private: never written
        start = int(self.offset[i])
        view = self.maps[shard][start : start + int(self.stored[i])]
        if not self.verified[i]:
            if zlib.crc32(view) != int(self.crc[i]):
                self.cache.discard(self.files[shard], f"the pixels of {self.paths[i]} fail their checksum")
                self.decoded[i] = torch.from_numpy(decode(self.paths[i], self.short_side)[0])
                return None
            self.verified[i] = True
        return view

    def image(self, i: int) -> torch.Tensor:
        """uint8 [3, h, w]: a view of the memory map (raw; no copy), or the decoded JPEG."""
        if i in self.decoded:
            return self.decoded[i]
        view = self._view(i)
        if view is None:
            return self.decoded[i]
        h, w = self.sizes[i]
        return unpack(view, int(self.format[i]), h, w)


def decode_batch(pixels, indices, device) -> list[torch.Tensor]:
    """The images ``indices`` of ``pixels`` as uint8 [3, h, w] on ``device``: JPEG entries decoded together
    by torchvision (on a CUDA device: its batched GPU decoder, nvJPEG, whose pixels may differ from PIL's
    by a level), the others copied."""
    import warnings

    import torchvision

    encoded = [pixels.encoded(i) if hasattr(pixels, "encoded") else None for i in indices]
    jpegs = [i for i, e in zip(indices, encoded) if e is not None]
    decoded = {}
    if jpegs:
        datas = [e for e in encoded if e is not None]
        mode = torchvision.io.ImageReadMode.RGB
        with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders in favour of torchcodec
            warnings.simplefilter("ignore", DeprecationWarning)
            out = torchvision.io.decode_jpeg(datas, mode=mode, device=device)
        decoded = dict(zip(jpegs, out))
    return [decoded[i] if i in decoded else pixels.image(i).to(device) for i in indices]
