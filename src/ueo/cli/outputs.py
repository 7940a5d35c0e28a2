"""Where a command writes: its output folder (taken and locked before any work, cleared of an earlier run's
outputs with --overwrite, never inside its inputs), and what the class list misses, written there."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from ..discovery import discover_outputs
from ..errors import ConfigError
from ..method import is_main
from ..outputs import write_discovery
from .messages import say, warn

LOCK_NAME = ".ueo.lock"

# Everything a run writes into its folder; --overwrite removes these first, so that no file of an earlier
# run is left beside the new run's.
RUN_OUTPUTS = (
    "adapted.safetensors",
    "checkpoint.safetensors",
    "config.yaml",
    "metrics.json",
    "history.csv",
    "predictions.csv",
    "skipped.csv",
    "roc.png",
    "scores.png",
    "confusion.png",
    "loss.png",
    "report.html",
    "thumbs",
    "absent.csv",
    "discovered.csv",
    "suggested_classes.txt",
)

_held_locks: list = []  # open lock files, held until the command ends (release_locks)

_created: list[Path] = []  # output folders this command created


def take_out(out, overwrite: bool, resumable: bool = False, resuming: bool = False) -> Path:
    """The output folder, taken for this command before any work: created, locked (a second ueo command
    into it is refused until this one ends), then checked: a folder that holds anything but the lock is
    refused unless ``overwrite`` (the earlier outputs are removed by :func:`clear_outputs` once every check
    has passed) or ``resuming``. A folder that this command created and leaves empty is removed when the
    command ends: a refused command leaves nothing behind."""
    if not out:
        raise ConfigError("--out is required: the folder for the results.")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder.")
    if not is_main():
        return out
    if not out.exists():
        out.mkdir(parents=True)
        _created.append(out)
    lock_folder(out)
    if not (resuming or overwrite) and any(p.name != LOCK_NAME for p in out.iterdir()):
        hint = f" (or --resume {out} to continue an interrupted run)" if resumable else ""
        raise ConfigError(f"--out {out} is not empty; pass --overwrite to replace its outputs{hint}.")
    return out


def lock_folder(out: Path) -> None:
    """Hold an exclusive lock on ``out`` until the command ends: a second run into the same folder is
    refused instead of mixing its files with ours. (A lock of the operating system: it goes with the
    process, also when the process is killed.)"""
    handle = open(out / LOCK_NAME, "a+")  # noqa: SIM115 (held open on purpose)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ConfigError(f"{out} is in use by another ueo run; wait for it to end, or choose another --out.") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    _held_locks.append(handle)


def release_locks() -> None:
    """Release this command's folders; remove those it created and left empty (but for the lock)."""
    while _held_locks:
        _held_locks.pop().close()  # closing the file releases its lock
    while _created:
        folder = _created.pop()
        with contextlib.suppress(OSError):
            if [p.name for p in folder.iterdir()] in ([], [LOCK_NAME]):
                (folder / LOCK_NAME).unlink(missing_ok=True)
                folder.rmdir()


def clear_outputs(out: Path, names: Sequence[str] = RUN_OUTPUTS) -> None:
    """Remove an earlier run's outputs (``names``: what the command writes there), nothing else."""
    if not is_main():
        return
    for name in names:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def check_not_inside(out: Path | None, inputs: dict) -> None:
    """Refuse an output folder inside an input folder: the run's own files would become images of the
    next run over that folder."""
    if not out:
        return
    out_real = os.path.realpath(out)
    for flag, value in inputs.items():
        if value and Path(value).is_dir():
            folder = os.path.realpath(value)
            if os.path.commonpath([folder, out_real]) == folder:
                raise ConfigError(
                    f"--out {out} is inside {flag} {value}: its outputs would be read as images by "
                    "the next run over that folder. Choose an --out outside it."
                )


def discover_into(
    out: Path, outputs, bundle, state, threshold: float, names, *, cache_dir, paths, seed, progress, should_stop=None
):
    """Find what the class list misses in scored ``outputs`` (with features), write absent.csv,
    discovered.csv and suggested_classes.txt into ``out`` (rank 0), say it in a line; returns its record."""
    found = discover_outputs(
        outputs,
        bundle,
        state,
        threshold,
        names=names,
        cache_dir=cache_dir,
        seed=seed,
        progress=progress,
        paths=paths,
        should_stop=should_stop,
        warn=warn,
    )
    write_discovery(out, found)
    say(f"{found.summary} See {out / 'suggested_classes.txt'}.")
    return found.record()
