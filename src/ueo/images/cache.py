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

Locks. One process at a time builds a collection (an exclusive ``flock`` on ``locks/COLLECTION.lock`` in
the folder, COLLECTION a hash of its images' keys; others wait and then find the images built, while
processes that build other collections go on). A process that uses a shard holds a shared ``flock`` on it for as long as it
may read it. Removing a shard (eviction, ``ueo cache prune/clear``) takes an exclusive ``flock`` without
waiting, and skips the shard when that fails, so a shard in use is never removed; a reader that takes its
shared lock checks that the file it locked is still the one at its name (an eviction may have come first)
and decodes the images again when not. A damaged shard is removed whatever its locks (its readers keep
their pages), with a warning, and its images are decoded again. Nothing is written outside the folder,
which is tagged as ueo's (CACHEDIR.TAG); in it ueo reads and removes only the files it names as it does
(``shards.SHARD_NAME``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from ..data import ImageList, identity
from ..errors import ConfigError
from ..files import default_cache_dir, mark_cache
from .builder import Spill, build
from .mapped import Pixels
from .reading import describe
from .shards import (
    FORMATS,
    VERSION,
    Shard,
    abandoned_tmps,
    bound,
    collection_of,
    disk_floor,
    locked,
    parse_size,
    read_shard,
    removable,
    shard_files,
    shards_in,
)


def file_key(item) -> bytes:
    """The cache key of an image: a hash of ``data.identity``. OSError when a file is missing."""
    return hashlib.sha1(identity(item)).hexdigest()[:20].encode()


class DecodeCache:
    """The decode cache under ``root`` (see the module's docstring). ``format``: how new entries are
    stored (auto, raw, jpeg); ``max_size``: the bound (a size such as "50GB"; None: $UEO_CACHE_MAX_SIZE or
    the bound set at first use)."""

    def __init__(
        self,
        root=None,
        warn: Callable[[str], None] = print,
        *,
        format: str = "auto",
        max_size=None,
        say: Callable[[str], None] = print,
    ):
        if format not in FORMATS:
            raise ConfigError(f"--cache-format must be one of {', '.join(FORMATS)}, got {format!r}.")
        self.root, self.warn, self.say, self.format = (
            Path(root) if root is not None else default_cache_dir(),
            warn,
            say,
            format,
        )
        self.spill = Spill()  # entries of streamed images the cache could not take
        # where the images this process decoded but the cache could not take are read from (the check pass
        # and the run that follows it decode them once)
        self.later: dict[bytes, tuple] = {}
        self.max_size = None if max_size is None else parse_size(max_size)
        self.shards: dict[Path, Shard] = {}  # read in this process
        self.lookup: dict[bytes, tuple[Path, int]] = {}
        self.pins: dict[Path, BinaryIO] = {}  # shard -> open file holding its shared lock

    def folder(self, short_side: int) -> Path:
        return self.root / f"v{VERSION}" / f"short{short_side}"

    def _refresh(self, folder: Path) -> None:
        """Read the shards that appeared since the last look; remove damaged ones (with a warning)."""
        for path in shards_in(folder):
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
    ) -> tuple[Pixels, dict[int, str]]:
        """Every image decoded in the cache (decoding only those that are not): (the pixels of the readable
        ones, {position in ``images``: why it is unreadable}). When the cache cannot take an image (a
        read-only or full disk, the bound reached), it is read from its source when a batch needs it, with a
        warning: the process holds none of the collection's pixels. The shards used stay locked against
        eviction until ``release``."""
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
            mark_cache(self.root)
            folder.mkdir(parents=True, exist_ok=True)
            self._refresh(folder)
            writable = True
        except OSError as error:
            self.refused(folder, error)
            writable = False
        collection = collection_of(keys)
        passing: dict[bytes, str] = {}  # problems not kept in the cache (they may not last)
        later = self.later  # decoded, but not in the cache (it could not take them): their places

        def lacking(key):
            return key is not None and key not in self.lookup and key not in later and key not in passing

        for _ in range(3):  # a shard evicted by another process between looking and locking: build again
            wanted = {self.lookup[k][0] for k in keys if k is not None and k in self.lookup}
            pinned = [self.pin(path) for path in sorted(wanted)]  # every one, not up to the first failure
            if not all(pinned):
                continue
            if not any(lacking(k) for k in keys):
                break
            # one builder at a time for a collection (others build theirs meanwhile)
            with locked(folder if writable else None, collection, self.warn) as held:
                if held:
                    for stale in abandoned_tmps(folder):  # left by builders that died
                        stale.unlink(missing_ok=True)
                if writable:
                    self._refresh(folder)
                todo = [(keys[i], images.paths[i]) for i, k in enumerate(keys) if lacking(k)]
                more_passing, more_later = build(
                    self,
                    folder if writable else None,
                    todo,
                    short_side,
                    collection=collection,
                    images=len(keys),
                    threads=threads,
                    progress=progress,
                    should_stop=should_stop,
                )
                passing |= more_passing
                later |= more_later
                if writable:
                    self._refresh(folder)
        kept, places = [], []
        for i, key in enumerate(keys):
            if key is None:
                continue
            if key in passing:
                problems[i] = passing[key]
                continue
            if key in later:
                kept.append(i)
                places.append(later[key])
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
        return Pixels(
            self, places, [images.paths[i] for i in kept], [images.labels[i] for i in kept], short_side
        ), problems

    def refused(self, where: Path, error: OSError) -> None:
        """Say, once, that the cache cannot be written and that images are read from their sources instead."""
        if not getattr(self, "_said_refused", False):
            self._said_refused = True
            self.warn(
                f"warning: the decode cache cannot be written at {where} ({error.strerror or error}); the images "
                "it lacks are read from their files whenever a batch needs them, which is slower (choose another "
                "place with --cache-dir or $UEO_CACHE_DIR, or --no-cache to keep nothing)."
            )

    def stopped(self, why: str) -> None:
        """Say, once, that the cache stops growing and why."""
        if not getattr(self, "_said_stopped", False):
            self._said_stopped = True
            self.warn(
                f"warning: the decode cache stopped growing: {why}; the rest is read from its files whenever a batch "
                "needs it, which is slower."
            )

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
        limit, why = bound(self.root, self.max_size, warn=self.warn)
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
