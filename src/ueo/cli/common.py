"""Pieces that several commands share: messages, output folders, devices, labeled inputs, thresholds,
predictions."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .. import thresholds
from ..config import is_finite_number
from ..distributed import is_main
from ..errors import ConfigError, DataError, UeoError, WeightsUnavailableError
from ..imagelist import ImageList
from ..images import check_images, sort_out
from ..metrics import known_mask
from ..sources import read_images
from ..thresholds import Threshold, parse_threshold

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


def say(message: str) -> None:
    """A message for the user (rank 0 only), on stdout."""
    if is_main():
        print(message, flush=True)


def warn(message: str) -> None:
    """A warning (rank 0 only), on stderr."""
    if is_main():
        print(message, file=sys.stderr, flush=True)


def say_or_warn(message: str) -> None:
    (warn if message.startswith("warning") else say)(message)


@contextlib.contextmanager
def flag_errors(flag: str):
    """Name the command-line flag in the message of a ueo error raised inside."""
    try:
        yield
    except UeoError as error:
        error.args = (f"{flag}: {error}",)
        raise


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


def check_device(spec: str | None) -> str | None:
    """A device the machine has: cpu, cuda, cuda:N (None: cuda when available)."""
    if spec is None:
        return None
    import torch

    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError):
        raise ConfigError(f"--device {spec!r} is not a device; use cpu, cuda or cuda:N.") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {spec}: no CUDA device is available on this machine; use --device cpu.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s).")
    elif device.type != "cpu":
        raise ConfigError(f"--device {spec!r}: ueo runs on cpu or cuda.")
    return spec


def load_bundle(model: str, pretrained: str | None, device: str | None, seed: int = 0):
    from ..clip import load_clip

    try:
        return load_clip(model, pretrained=pretrained, device=check_device(device), seed=seed)
    except WeightsUnavailableError as error:
        advice = getattr(error, "cli_advice", None)  # the same advice, with flags instead of Python
        if advice:
            error.args = (advice,)
        raise


def require_known(images: ImageList, num_known: int, what: str) -> None:
    """Labeled images must include at least one image of a known class."""
    if images.labeled and not any(0 <= label < num_known for label in images.labels):
        raise DataError(
            f"{what}: no image of any known class (labels 0..{num_known - 1}); "
            "check the class names against the folder names or list labels."
        )


def labeled_images(spec, names: Sequence[str], root, flag: str) -> ImageList:
    """Images that must carry labels, at least one of them of a known class."""
    with flag_errors(f"{flag} {spec}"):
        images = read_images(spec, names, root, warn=say_or_warn)
    if not images.labeled:
        raise DataError(f"{flag} {spec}: no labels found (use class sub-folders or a list file with labels).")
    require_known(images, len(names), flag)
    return images


def drop_unreadable(
    images: ImageList,
    strict: bool,
    should_stop: Callable[[], bool] | None = None,
    store=None,
    short_side: int = 0,
    progress: bool = False,
):
    """(readable images, skipped rows): unreadable images are dropped with a warning (or stop the run at the
    first one, with --strict). With a decode cache, this check is the decoding into the cache (one decode
    per image, and none for images already there)."""
    try:
        if store is None:
            streamed = next((p for p in images.paths if getattr(p, "streamed", False)), None)
            if streamed is not None:
                raise ConfigError(
                    f"{streamed.container} is read as a stream (a pipe: command or a compressed shard): ueo reads "
                    "it once into the decode cache and trains from there, so it needs the cache (drop --no-cache "
                    "and --fast off, or unpack the shards into plain .tar files)."
                )
            return check_images(images, strict=strict, warn=warn, should_stop=should_stop)
        _, problems = store.ensure(images, short_side, should_stop=should_stop, progress=progress)
        return sort_out(images, problems, strict, warn)
    except DataError as error:
        if strict:
            error.args = (f"{error} Remove it, or run without --strict to skip unreadable images.",)
        raise


def cache_root(value: str | None) -> Path | None:
    """--cache-dir: a folder (refused when empty: '' would mean the current folder to one command and the
    default to another); None: $UEO_CACHE_DIR, else ~/.cache/ueo."""
    if value is not None and not str(value).strip():
        raise ConfigError("--cache-dir is empty: give a folder, or leave it out for $UEO_CACHE_DIR, else ~/.cache/ueo.")
    return Path(value) if value is not None else None


def decode_cache(settings, fast=None):
    """The decode cache a command uses (``settings``: its arguments, or fit's resolved configuration):
    --cache-dir, else $UEO_CACHE_DIR or the user cache folder; none with --no-cache or --fast off."""
    get = settings.get if isinstance(settings, dict) else lambda key, default=None: getattr(settings, key, default)
    root = cache_root(get("cache_dir"))
    if get("no_cache", False) or fast is False:
        return None
    from ..cache import DecodeCache

    with flag_errors("--cache-max-size"):
        return DecodeCache(
            root, warn=warn, say=say, format=get("cache_format") or "auto", max_size=get("cache_max_size")
        )


def threshold_spec(spec, tpr) -> None:
    """Check --threshold and --tpr before any compute."""
    with flag_errors("--threshold"):
        parse_threshold(spec)
    if tpr is not None and (not is_finite_number(tpr) or not 0 < tpr <= 1):
        raise ConfigError(f"--tpr must be a fraction in (0, 1], got {tpr!r}.")


def choose_threshold(
    spec,
    *,
    num_known: int,
    scores=None,
    source: str = "",
    fitted: dict | None = None,
    tpr: float | None = None,
    val_outputs=None,
) -> dict:
    """The command's flags (--threshold, --tpr with --val) put to ``thresholds.choose_threshold``; returns the
    record metrics.json keeps."""
    known_scores = None
    if tpr is not None:
        known = known_mask(val_outputs.labels.numpy(), num_known)
        known_scores, source = val_outputs.scores.numpy()[known], f"the {int(known.sum())} known --val images"
    with flag_errors("--tpr" if tpr is not None else "--threshold"):
        chosen = thresholds.choose_threshold(
            spec,
            scores=scores,
            source=source,
            num_known=num_known,
            fitted=Threshold.from_record(fitted),
            tpr=tpr,
            known_scores=known_scores,
            warn=warn,
        )
    return chosen.record()


def describe_threshold(chosen: dict) -> str:
    rule = {"otsu": "Otsu's rule on", "given": "given with", "tpr": "the threshold that"}.get(
        chosen["rule"], chosen["rule"]
    )
    return f"threshold {chosen['threshold']:.4f}: {rule} {chosen['source']}"


def say_done(metrics: dict, out: Path) -> None:
    """The end of fit and eval: the metrics, the threshold and where the outputs are."""
    say(summary_line(metrics))
    say(f"{describe_threshold(metrics['threshold'])}\noutputs in {out}")


def summary_line(metrics: dict) -> str:
    zs, ad = metrics.get("zeroshot"), metrics.get("adapted")
    if not ad or all(ad.get(k) is None for k in ("pacc", "auroc")):
        return "no metrics: they need labeled test images (--test with class sub-folders or a labeled list file)"

    def pct(row, key):
        return "-" if not row or row.get(key) is None else f"{100 * row[key]:.1f}"

    lines = [f"zero-shot  PACC {pct(zs, 'pacc')}  AUROC {pct(zs, 'auroc')}  HM {pct(zs, 'hm')}"] if zs else []
    lines.append(f"adapted    PACC {pct(ad, 'pacc')}  AUROC {pct(ad, 'auroc')}  HM {pct(ad, 'hm')}")
    if ad.get("auroc") is None:
        lines.append("(AUROC and HM need unknown-class images among the test images)")
    return "\n".join(lines)


def discovery_names(spec):
    """The candidate names of --vocabulary, read and checked before any work (None: groups left unnamed)."""
    from ..discovery import vocabulary_names

    with flag_errors("--vocabulary"):
        return vocabulary_names(spec, warn=warn)


def discover_into(
    out: Path, outputs, bundle, state, threshold: float, names, *, cache_dir, paths, seed, progress, should_stop=None
):
    """Find what the class list misses in scored ``outputs`` (with features), write absent.csv,
    discovered.csv and suggested_classes.txt into ``out`` (rank 0), say it in a line; returns its record."""
    from ..discovery import discover_outputs
    from ..report import write_discovery

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
