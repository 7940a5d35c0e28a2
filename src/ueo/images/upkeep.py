"""Looking after the decode cache (``ueo cache``): what it holds, its bound, removing stale entries,
removing all.

Housekeeping touches only what ueo wrote: a folder tagged as ueo's cache (``files.CACHEDIR.TAG``, or a
cache of an earlier version, recognised by its shards), and in it only the files ueo names as it does
(shards, temporary files of builds, vocabulary features). A shard that a running process uses (it holds
the shard's shared lock) is never removed or rewritten here; a temporary file whose builder still runs (it
holds its collection's lock) is left.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..data import Member, state_of
from ..errors import ConfigError
from ..files import CACHE_TAG, is_cache, mark_cache
from .cache import file_key
from .shards import (
    MAGIC,
    TMP_NAME,
    VERSION,
    abandoned_tmps,
    bound,
    cache_folders,
    existing,
    read_shard,
    removable,
    shard_files,
    shards_in,
    try_lock,
    write_shard,
)

VOCABULARY = "vocabulary"  # the vocabulary's text features: files named by ``vocabulary.features_name``
VOCABULARY_FILE = re.compile(r"[0-9a-f]{24}\.safetensors")


def owned(root: Path) -> bool:
    """Whether ``root`` is ueo's cache: tagged as such, or (a cache of an earlier version, then tagged now)
    holding a shard that starts as ueo's shards do."""
    if is_cache(root):
        return True
    for path in shard_files(root):
        try:
            with open(path, "rb") as f:
                if f.read(len(MAGIC))[:6] == MAGIC[:6]:  # "UEOSHR": any version's shard
                    mark_cache(root)
                    return True
        except OSError:
            continue
    return False


def check_owned(root: Path) -> None:
    """Refuse to touch a folder that is not ueo's cache."""
    if root.exists() and not owned(root):
        raise ConfigError(
            f"{root} is not a ueo cache (it has no {CACHE_TAG} written by ueo and no shard of ueo's): nothing "
            "there is touched. Give the folder that --cache-dir or $UEO_CACHE_DIR names."
        )


def _vocabulary_files(root: Path) -> list[Path]:
    folder = root / VOCABULARY
    return sorted(p for p in folder.iterdir() if VOCABULARY_FILE.fullmatch(p.name)) if folder.is_dir() else []


def _collections(folder: Path) -> dict[str, int]:
    """How many collections the first pass chose to keep in each format (``builder.chosen_format``)."""
    counts: dict[str, int] = {}
    for path in sorted((folder / "collections").glob("*.json")):
        try:
            fmt = str(json.loads(path.read_text(encoding="utf-8"))["format"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        counts[fmt] = counts.get(fmt, 0) + 1
    return counts


def _tmps(folder: Path) -> list[Path]:
    return [p for p in folder.glob(".*.tmp") if TMP_NAME.fullmatch(p.name)]


def info(root: Path, warn=None) -> dict:
    """What the cache under ``root`` holds: its size and bound, and per folder (version, geometry) the
    shards, images (readable, unreadable), bytes, formats, damaged shards and last use."""
    folders = []
    for folder in cache_folders(root):
        row: dict[str, Any] = {"folder": str(folder.relative_to(root)), "current": folder.parent.name == f"v{VERSION}"}
        row |= {"shards": 0, "images": 0, "unreadable": 0, "raw": 0, "jpeg": 0, "damaged": 0, "bytes": 0}
        row["last_use"] = 0.0
        for path in shards_in(folder):
            stat = path.stat()
            row["bytes"] += stat.st_size
            row["last_use"] = max(row["last_use"], stat.st_mtime)
            if not row["current"]:  # another layout: counted, not read
                row["shards"] += 1
                continue
            try:
                shard = read_shard(path)
            except (OSError, ValueError, KeyError):
                row["damaged"] += 1
                continue
            good = shard.index["problem"] < 0
            row["shards"] += 1
            row["images"] += int(good.sum())
            row["unreadable"] += int((~good).sum())
            row["jpeg"] += int((good & (shard.index["format"] == 1)).sum())
            row["raw"] += int((good & (shard.index["format"] == 0)).sum())
        row["temporary"] = len(_tmps(folder))
        row["collections"] = _collections(folder)
        folders.append(row)
    limit, why = bound(root, remember=False, warn=warn)
    total = sum(f.stat().st_size for f in shard_files(root))
    return {
        "root": str(root),
        "exists": root.is_dir(),
        "owned": root.is_dir() and owned(root),
        "bytes": total,
        "bound": limit,
        "bound_from": why,
        "free_disk": shutil.disk_usage(existing(root)).free,
        "vocabulary_bytes": sum(p.stat().st_size for p in _vocabulary_files(root)),
        "folders": folders,
    }


def render(report: dict) -> str:
    """``ueo cache info`` as text."""
    if not report["exists"]:
        return f"decode cache: {report['root']} (empty: nothing is kept there yet)"
    if not report["owned"]:
        return f"{report['root']} is not a ueo cache (no {CACHE_TAG} written by ueo, no shard of ueo's)."
    gb = 1e9
    lines = [
        f"decode cache: {report['root']}",
        f"size: {report['bytes'] / gb:.3f} GB of shards"
        + (
            f" (+ {report['vocabulary_bytes'] / gb:.3f} GB of vocabulary features)"
            if report["vocabulary_bytes"]
            else ""
        ),
        f"bound: {report['bound'] / gb:.3f} GB ({report['bound_from']}); free disk {report['free_disk'] / gb:.1f} GB",
        "(each run adds the shards it lacks; the least recently used are removed to stay under the bound)",
    ]
    if not report["folders"]:
        lines.append("no shards")
    for row in report["folders"]:
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(row["last_use"])) if row["last_use"] else "never"
        state = "" if row["current"] else " (an older version of the cache: `ueo cache prune` removes it)"
        lines.append(
            f"  {row['folder']}{state}: {row['shards']} shard(s), {row['images']} image(s) ({row['jpeg']} JPEG, "
            f"{row['raw']} raw), {row['unreadable']} unreadable, {row['bytes'] / gb:.3f} GB, last used {used}"
        )
        if row["collections"]:
            kinds = {"raw": "kept raw", "jpeg": "kept as JPEG"}
            lines.append(
                "    "
                + ", ".join(
                    f"{n} collection(s) {kinds.get(k, k)}" for k, n in sorted(row["collections"].items(), reverse=True)
                )
                + " (chosen at their first pass by what fits the bound)"
            )
        if row["damaged"] or row["temporary"]:
            lines.append(
                f"    {row['damaged']} damaged shard(s), {row['temporary']} temporary file(s) left by an "
                "interrupted build: `ueo cache prune` removes them"
            )
    return "\n".join(lines)


def _current_key(item: dict, states: dict[str, str]) -> bytes | None:
    """The key an entry's source has now; None when it is gone. ``states``: the containers' states looked
    at so far in this prune (a shard holds thousands of members of a few containers)."""
    try:
        if "path" in item:
            return file_key(Path(item["path"]))
        container = item["container"]
        if container not in states:
            states[container] = state_of(container)
        # a streamed member is known by its bytes: its entry stays good while its container is there (a pipe:
        # command cannot be looked at without running it)
        state = item.get("state") or states[container]
        return file_key(Member(container, item["name"], item["offset"], 0, state, item["column"]))
    except OSError:
        return None


def prune(root: Path) -> dict:
    """Remove what no run can use: damaged shards, temporary files of interrupted builds, older versions of
    the cache, and the entries of files that no longer exist or have changed (a shard with some is written
    again without them). Returns counts: removed shards, rewritten shards, entries removed, shards in use,
    temporary files of builds still running, bytes freed."""
    check_owned(root)
    done = {"removed": 0, "rewritten": 0, "entries": 0, "in_use": 0, "building": 0, "bytes": 0}
    for folder in cache_folders(root):
        abandoned = abandoned_tmps(folder)
        done["building"] += len(_tmps(folder)) - len(abandoned)
        for tmp in abandoned:
            done["bytes"] += tmp.stat().st_size
            tmp.unlink(missing_ok=True)
        old = folder.parent.name != f"v{VERSION}"
        for path in shards_in(folder):
            _prune_shard(path, old, done)
        if old:
            _remove_if_empty(folder)
    return done


def _remove_if_empty(folder: Path) -> None:
    """Remove a folder of an earlier version of the cache once nothing but ueo's locks is left in it."""
    locks = folder / "locks"
    mine = [folder / ".lock", *(sorted(locks.glob("*.lock")) if locks.is_dir() else [])]
    if set(folder.rglob("*")) - {*mine, locks}:
        return
    for path in mine:
        path.unlink(missing_ok=True)
    for empty in (locks, folder, folder.parent):
        if not empty.exists():
            continue
        try:
            empty.rmdir()
        except OSError:  # something else is there
            return


def _prune_shard(path: Path, old: bool, done: dict) -> None:
    size = path.stat().st_size
    try:
        shard = None if old else read_shard(path)
    except (OSError, ValueError, KeyError):
        shard = None
    if shard is not None:
        states: dict[str, str] = {}
        live = [i for i, item in enumerate(shard.items) if _current_key(item, states) == bytes(shard.index[i]["key"])]
        if len(live) == len(shard.index):
            return
    with open(path, "rb") as handle:
        if not try_lock(handle):
            done["in_use"] += 1
            return
        if shard is not None and live:
            pixels = np.memmap(path, dtype=np.uint8, mode="r")
            records = []
            for i in live:
                r = shard.index[i]
                stored = None
                if r["problem"] < 0:
                    data = bytes(pixels[int(r["offset"]) : int(r["offset"] + r["nbytes"])])
                    stored = (
                        int(r["format"]),
                        data,
                        (int(r["h"]), int(r["w"])),
                        (int(r["original_h"]), int(r["original_w"])),
                    )
                problem = None if r["problem"] < 0 else shard.problems[r["problem"]]
                records.append((bytes(r["key"]), stored, problem, shard.items[i]))
            del pixels
            write_shard(path.parent, records)
            done["rewritten"] += 1
            size -= sum(len(rec[1][1]) for rec in records if rec[1] is not None)
        else:
            done["removed"] += 1
        done["entries"] += (len(shard.index) - len(live)) if shard is not None else 0
        path.unlink(missing_ok=True)
        done["bytes"] += max(size, 0)


def clear(root: Path) -> dict:
    """Remove every shard that no process uses, the temporary files of builds that ended, and the
    vocabulary's text features; returns counts."""
    check_owned(root)
    done = {"removed": 0, "in_use": 0, "bytes": 0}
    for path in shard_files(root):
        size = path.stat().st_size
        if removable(path):
            done["removed"] += 1
            done["bytes"] += size
        else:
            done["in_use"] += 1
    for folder in cache_folders(root):
        for tmp in abandoned_tmps(folder):
            tmp.unlink(missing_ok=True)
    for path in _vocabulary_files(root):
        done["bytes"] += path.stat().st_size
        path.unlink(missing_ok=True)
    return done


def set_bound(root: Path, size) -> tuple[int, str]:
    """Keep ``size`` as the cache's bound (``ueo cache bound SIZE``); returns (bytes, where it comes from)."""
    from .shards import set_bound as keep

    check_owned(root)
    keep(root, size)
    return bound(root)
