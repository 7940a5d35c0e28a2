"""What a command reads, checked before any work: the device, the model, the class names and images (or a
benchmark protocol's split), the decode cache, the threshold flags; and the readable images, decoded once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..config import is_finite_number
from ..data import ImageList, class_names_of, parse_class_names, read_images
from ..discovery import vocabulary_names
from ..errors import ConfigError, DataError, WeightsUnavailableError
from ..experiments import protocols
from ..images import DecodeCache, ImageFiles
from ..model import load_clip, parse_threshold
from ..views import readable
from .messages import flag_errors, say, say_or_warn, warn


def load_inputs(config: dict):
    """(known class names, adaptation images, test images or None, validation images or None, run identity)."""
    if config["benchmark"]:
        for key in ("domain", "scenario", "root"):
            if not config[key]:
                raise ConfigError(f"--benchmark needs --{key}.")
        split = protocols.build_split(
            config["benchmark"],
            config["domain"],
            config["scenario"],
            config["root"],
            lists=config["lists"],
            warn=say_or_warn,
        )
        run = {"benchmark": split.benchmark, "domain": split.domain, "scenario": split.scenario}
        return split.known_classes, split.train, split.test, optional_images(config, "val", split.known_classes), run
    if not config["data"]:
        raise ConfigError("Give --data and --classes (or --benchmark, --domain, --scenario, --root).")
    if config["classes"]:
        with flag_errors("--classes"):
            names = parse_class_names(config["classes"])
    else:
        with flag_errors(f"--data {config['data']}"):
            carried = class_names_of(config["data"])  # classnames.txt, a dataset's ClassLabel
        if not carried:
            raise ConfigError(f"Give --classes: --data {config['data']} names no classes of its own.")
        names = carried
        say(
            f"class names: the {len(names)} that --data names ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})"
        )
    with flag_errors(f"--data {config['data']}"):
        train = read_images(config["data"], names, config["root"], warn=say_or_warn)
    require_known(train, len(names), "--data")
    run = {"benchmark": "-", "domain": Path(config["data"]).name, "scenario": "-"}
    return names, train, optional_images(config, "test", names), optional_images(config, "val", names), run


def optional_images(config: dict, key: str, names) -> ImageList | None:
    if not config.get(key):
        return None
    return labeled_images(config[key], names, config.get("test_root") or config.get("root"), f"--{key}")


def check_device(spec: str | None) -> str | None:
    """A device the machine has: cpu, cuda, cuda:N (None: cuda when available)."""
    if spec is None:
        return None

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


def discovery_names(spec):
    """The candidate names of --vocabulary, read and checked before any work (None: groups left unnamed)."""

    with flag_errors("--vocabulary"):
        return vocabulary_names(spec, warn=warn)


def readable_files(
    images: ImageList,
    strict: bool,
    *,
    cache: DecodeCache | None,
    short_side: int,
    should_stop: Callable[[], bool] | None = None,
    progress: bool = False,
) -> tuple[ImageFiles, list[dict]]:
    """``feed.readable`` for a command: unreadable images are left out with a warning (or stop the run at the
    first one, with --strict, saying how to go on)."""
    try:
        return readable(
            images,
            cache=cache,
            short_side=short_side,
            strict=strict,
            warn=warn,
            should_stop=should_stop,
            progress=progress,
        )
    except DataError as error:
        if strict:
            error.args = (f"{error} Remove it, or run without --strict to skip unreadable images.",)
        raise
