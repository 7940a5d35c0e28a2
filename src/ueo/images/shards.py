"""The decode cache's files (``ueo.cache`` says how they are used): a shard is a header, the stored entries
(raw uint8 pixels, or JPEG), and an index with what each entry was decoded from; written atomically,
checked when read. Also the cache's bound and free-space floor, and removing a shard no process uses."""

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..data import Member
from ..errors import ConfigError
from ..files import mark_cache, write_text

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
DEFAULT_MAX_SIZE = 50 * 10**9
DEFAULT_SHARE = 0.2  # of the free disk at first use
MIN_FREE, MIN_FREE_SHARE = 5 * 10**9, 0.05
UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9}
UNITS |= {"t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text, what: str = "--cache-max-size") -> int:
    """Bytes of a size such as 50GB, 500M, 2.5GiB or 1000000 (K, M, G, T: powers of 1000; KiB...: of 1024)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    if not match or match.group(2).lower() not in UNITS:
        raise ConfigError(f"{what} must be a size such as 50GB, 500MB or 2GiB, got {text!r}.")
    return int(float(match.group(1)) * UNITS[match.group(2).lower()])


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
    if isinstance(item, Member):
        what = {"container": item.container, "name": item.name, "offset": item.offset, "column": item.column}
        if item.state.startswith("sha1:"):  # a streamed member: known by its bytes (see ueo.members)
            what["state"] = item.state
        return what
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


def write_shard(folder: Path, records: list[tuple], collection: str = "") -> Path:
    """A new shard of (key, (format, stored bytes, decoded (h, w), original (h, w)) or None, problem or None,
    what_of), written under a temporary name (``.COLLECTION.RANDOM.tmp``: the builder's lock says whether it
    is still being written), synced, then renamed: a shard that exists is complete."""
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
    tmp = folder / f".{collection or 'any'}.{uuid.uuid4().hex}.tmp"
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


# What ueo writes in a cache, and nothing else, is what ueo reads, evicts and removes there: folders
# vN/shortS, shards named by 32 hex digits, temporary files .COLLECTION.RANDOM.tmp.
FOLDER_NAMES = (re.compile(r"v\d+"), re.compile(r"short\d+"))
SHARD_NAME = re.compile(r"[0-9a-f]{32}\.shard")
TMP_NAME = re.compile(r"\.(?:([0-9a-f]{16}|any)\.)?[0-9a-f]{32}\.tmp")


def cache_folders(root: Path) -> list[Path]:
    """The folders of the cache (vN/shortS, every version and geometry)."""
    if not root.is_dir():
        return []
    found = []
    for version in sorted(root.iterdir()):
        if version.is_dir() and FOLDER_NAMES[0].fullmatch(version.name):
            found += [g for g in sorted(version.iterdir()) if g.is_dir() and FOLDER_NAMES[1].fullmatch(g.name)]
    return found


def shards_in(folder: Path) -> list[Path]:
    """The shards of one cache folder (files named as ueo names them; anything else there is not ours)."""
    return sorted(p for p in folder.glob("*.shard") if SHARD_NAME.fullmatch(p.name))


def shard_files(root: Path) -> list[Path]:
    """Every shard under the cache's root, of every version and geometry."""
    return [path for folder in cache_folders(root) for path in shards_in(folder)]


def abandoned_tmps(folder: Path) -> list[Path]:
    """The temporary files in a cache folder that no builder is writing any more (their collection's lock
    is free: the builder ended, or died)."""
    found = []
    for tmp in sorted(folder.glob(".*.tmp")):
        match = TMP_NAME.fullmatch(tmp.name)
        if match is None:
            continue
        lock = lock_file(folder, match.group(1))
        try:
            lock.parent.mkdir(exist_ok=True)
            with open(lock, "a") as handle:
                if try_lock(handle):
                    found.append(tmp)
                    fcntl.flock(handle, fcntl.LOCK_UN)
        except OSError:
            continue
    return found


def removable(path: Path) -> bool:
    """Remove a shard unless a process uses it (holds its shared lock); whether it was removed."""
    try:
        with open(path, "rb") as handle:
            if not try_lock(handle):
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


SETTINGS = "settings.json"  # in the cache's root: {"max_size": bytes, "why": where the bound comes from}
MIN_BOUND = 10**6  # a bound under 1 MB holds no shard: a hand edit, not a setting


def bound(
    root: Path, max_size=None, remember: bool = True, warn: Callable[[str], None] | None = None
) -> tuple[int, str]:
    """(the cache's bound in bytes, where it comes from): ``max_size``, $UEO_CACHE_MAX_SIZE, or the bound
    kept in ``settings.json`` (set by ``ueo cache bound SIZE``, else at first use: the smaller of 20% of the
    free disk then and 50 GB; written unless not ``remember``). A settings.json that does not hold a bound
    of at least 1 MB is not used: ``warn`` says so, and the default takes its place."""
    if max_size is not None:
        return parse_size(max_size), "--cache-max-size"
    if os.environ.get("UEO_CACHE_MAX_SIZE"):
        return parse_size(os.environ["UEO_CACHE_MAX_SIZE"], "$UEO_CACHE_MAX_SIZE"), "$UEO_CACHE_MAX_SIZE"
    settings = root / SETTINGS
    kept = None
    with contextlib.suppress(OSError, ValueError):
        kept = json.loads(settings.read_text(encoding="utf-8"))
    if kept is not None:
        size = kept.get("max_size") if isinstance(kept, dict) else None
        if isinstance(size, int) and not isinstance(size, bool) and size >= MIN_BOUND:
            return size, str(kept.get("why") or f"set in {settings}")
        if warn is not None:
            warn(
                f"warning: {settings} does not hold a bound of at least 1 MB (it holds {kept!r:.80}); the default "
                "is used instead. Set one with `ueo cache bound SIZE`."
            )
    free = shutil.disk_usage(existing(root)).free
    size = int(min(DEFAULT_MAX_SIZE, DEFAULT_SHARE * free))
    why = f"the default: the smaller of 50 GB and 20% of the {free / 1e9:.1f} GB free at first use"
    if not remember:
        return size, why.replace("at first use", "now")
    with contextlib.suppress(OSError):  # (a cache that cannot be written keeps no setting)
        mark_cache(root)
        write_text(settings, json.dumps({"max_size": size, "why": why}))
    return size, why


def set_bound(root: Path, size) -> int:
    """Keep ``size`` (bytes, or a text such as 20GB) as the cache's bound in its settings.json; returns it."""
    value = parse_size(size, "the bound")
    if value < MIN_BOUND:
        raise ConfigError(f"the bound must be at least 1 MB, got {size!r}.")
    mark_cache(root)
    write_text(
        root / SETTINGS,
        json.dumps({"max_size": value, "why": f"set with `ueo cache bound` on {time.strftime('%Y-%m-%d')}"}),
    )
    return value


def existing(path: Path) -> Path:
    """``path``, or the nearest folder above it that exists (where its disk's free space can be asked)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


LOCK_WAIT = 120.0  # seconds to wait for another process that builds the same collection


def collection_of(keys) -> str:
    """The name of a collection (16 hex digits): a hash of its images' keys, whatever their order."""
    digest = hashlib.sha1()
    for key in sorted(k for k in keys if k is not None):
        digest.update(key)
    return digest.hexdigest()[:16]


def lock_file(folder: Path, collection: str | None) -> Path:
    """The lock a builder of ``collection`` holds in ``folder`` (None, "any": an earlier version's one lock)."""
    return folder / ".lock" if collection in (None, "any") else folder / "locks" / f"{collection}.lock"


@contextlib.contextmanager
def locked(folder: Path | None, collection: str, warn: Callable[[str], None] = print):
    """An exclusive lock on building ``collection`` into a cache folder (released when the block ends, or when
    the process dies); yields whether it is held. Processes that build other collections do not wait; one
    that holds it for more than LOCK_WAIT seconds (suspended, hung) is not waited for longer: this process
    then decodes on its own, with a warning."""
    if folder is None:
        yield False
        return
    path = lock_file(folder, collection)
    path.parent.mkdir(exist_ok=True)
    with open(path, "a") as handle:
        held = try_lock(handle)
        if not held:
            warn(f"waiting for another ueo process that is decoding these images into the cache {folder} ...")
            deadline = time.monotonic() + LOCK_WAIT
            while not held and time.monotonic() < deadline:
                time.sleep(0.2)
                held = try_lock(handle)
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


def try_lock(handle) -> bool:
    """Take the exclusive lock of an open file if no process holds a lock on it; whether it was taken."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
