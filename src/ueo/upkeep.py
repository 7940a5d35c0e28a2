"""Looking after the decode cache (``ueo cache``): what it holds, removing stale entries, removing all.

A shard that a running process uses (it holds the shard's shared lock) is never removed or rewritten
here; a folder that a process is building into (its ``.lock`` is held) is left alone by ``prune``.
"""

from __future__ import annotations

import contextlib
import fcntl
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from .cache import file_key
from .members import Member, state_of
from .shards import VERSION, bound, existing, read_shard, removable, shard_files, try_lock, write_shard


def _folders(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("v*/short*") if p.is_dir()) if root.is_dir() else []


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def info(root: Path) -> dict:
    """What the cache under ``root`` holds: its size and bound, and per folder (version, geometry) the
    shards, images (readable, unreadable), bytes, formats, damaged shards and last use."""
    folders = []
    for folder in _folders(root):
        row: dict[str, Any] = {"folder": str(folder.relative_to(root)), "current": folder.parent.name == f"v{VERSION}"}
        row |= {"shards": 0, "images": 0, "unreadable": 0, "raw": 0, "jpeg": 0, "damaged": 0, "bytes": 0}
        row["last_use"] = 0.0
        for path in sorted(folder.glob("*.shard")):
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
        row["temporary"] = len(list(folder.glob(".*.tmp")))
        folders.append(row)
    limit, why = bound(root, remember=False)
    total = sum(f.stat().st_size for f in shard_files(root))
    return {
        "root": str(root),
        "exists": root.is_dir(),
        "bytes": total,
        "bound": limit,
        "bound_from": why,
        "free_disk": shutil.disk_usage(existing(root)).free,
        "vocabulary_bytes": _size(root / "vocabulary"),
        "folders": folders,
    }


def render(report: dict) -> str:
    """``ueo cache info`` as text."""
    if not report["exists"]:
        return f"decode cache: {report['root']} (empty: nothing is kept there yet)"
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
        return file_key(Member(container, item["name"], item["offset"], 0, states[container], item["column"]))
    except OSError:
        return None


@contextlib.contextmanager
def _unless_building(folder: Path):
    """Yields whether no process is building into ``folder`` (then holds its lock for the block)."""
    with open(folder / ".lock", "a") as handle:
        if not try_lock(handle):
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prune(root: Path) -> dict:
    """Remove what no run can use: damaged shards, temporary files of interrupted builds, older versions of
    the cache, and the entries of files that no longer exist or have changed (a shard with some is written
    again without them). Returns counts: removed shards, rewritten shards, entries removed, in use, bytes."""
    done = {"removed": 0, "rewritten": 0, "entries": 0, "in_use": 0, "busy_folders": 0, "bytes": 0}
    for folder in _folders(root):
        with _unless_building(folder) as free:
            if not free:
                done["busy_folders"] += 1
                continue
            for tmp in folder.glob(".*.tmp"):
                done["bytes"] += tmp.stat().st_size
                tmp.unlink(missing_ok=True)
            for path in sorted(folder.glob("*.shard")):
                _prune_shard(path, folder.parent.name != f"v{VERSION}", done)
    for older in root.glob("v*"):
        if older.is_dir() and older.name != f"v{VERSION}" and not list(older.rglob("*.shard")):
            shutil.rmtree(older, ignore_errors=True)
    return done


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
    """Remove every shard that no process uses, and the vocabulary features; returns counts."""
    done = {"removed": 0, "in_use": 0, "bytes": 0}
    for path in shard_files(root):
        size = path.stat().st_size
        if removable(path):
            done["removed"] += 1
            done["bytes"] += size
        else:
            done["in_use"] += 1
    for folder in _folders(root):
        with _unless_building(folder) as free:
            if free:
                for tmp in folder.glob(".*.tmp"):
                    tmp.unlink(missing_ok=True)
    if (root / "vocabulary").is_dir():
        done["bytes"] += _size(root / "vocabulary")
        shutil.rmtree(root / "vocabulary", ignore_errors=True)
    return done
