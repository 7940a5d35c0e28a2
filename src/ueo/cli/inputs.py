"""What `ueo fit` reads: the class names and the adaptation, test and validation images (or a benchmark
protocol's split), with the run's identity."""

from __future__ import annotations

from pathlib import Path

from .. import protocols
from ..data import parse_class_names
from ..errors import ConfigError
from ..imagelist import ImageList
from ..sources import class_names_of, read_images
from .common import flag_errors, labeled_images, require_known, say, say_or_warn


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
