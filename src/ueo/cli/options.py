"""The options of `ueo fit` and `ueo bench`: their flags, their defaults (from FitConfig and the choice
lists, never typed twice) and how they resolve: defaults < ``--config FILE.yaml`` < flags."""

from __future__ import annotations

import argparse
import contextlib
import os
from typing import Any

from ..config import (
    METHODS,
    RULE_ALIASES,
    RULES,
    SELECT_CHOICES,
    SETTING_ALIASES,
    TUNE_CHOICES,
    VALIDATORS,
    WEIGHT_MODES,
    FitConfig,
)
from ..errors import ConfigError
from ..experiments import BENCHMARKS, SCENARIOS

SCENARIO_CHOICES = SCENARIOS
BENCHMARK_CHOICES = tuple(BENCHMARKS)
FAST_CHOICES = {"auto": None, "on": True, "off": False}
VOCABULARY_HELP = (
    "candidate names for the groups of unknown images: a file (one name a line), "
    "'default' (the ImageNet-21k names timm ships) or 'none' (groups left unnamed)"
)
NO_DISCOVER_HELP = "do not look for absent listed classes and groups of unknown images (absent.csv, discovered.csv)"

# FitConfig fields that the command line sets (the others keep their defaults).
ENGINE_KEYS = (
    "method",
    "tune",
    "rule",
    "epochs",
    "batch_size",
    "lr_prompt",
    "lr_norm",
    "trade",
    "weight_refresh",
    "seed",
    "eval_every",
    "eval_batch_size",
    "num_workers",
    "select",
    "select_lrs",
    "select_snapshots",
    "validator",
    "upl_per_class",
    "upl_prompts",
    # a method's recipe (config.METHOD_RECIPES): set in a --config file, with no flags of their own
    "optimizer",
    "momentum",
    "nesterov",
    "weight_decay",
    "schedule",
    "warmup_epochs",
    "warmup_lr",
)

# Options of the command line only (what data, which model, where outputs go), with their defaults.
RUN_DEFAULTS: dict[str, Any] = {
    "model": "ViT-B-16",
    "pretrained": "openai",
    "device": None,
    "data": None,
    "root": None,
    "test": None,
    "test_root": None,
    "val": None,
    "classes": None,
    "benchmark": None,
    "domain": None,
    "scenario": None,
    "lists": None,
    "threshold": "auto",
    "tpr": None,
    "out": None,
    "discover": True,
    "vocabulary": "default",
    "cache_dir": None,
    "cache_format": "auto",
    "cache_max_size": None,
    "no_cache": False,
}
_ENGINE_DEFAULTS = FitConfig()
DEFAULTS: dict[str, Any] = {
    **RUN_DEFAULTS,
    **{k: getattr(_ENGINE_DEFAULTS, k) for k in ENGINE_KEYS},
    "select_snapshots": list(_ENGINE_DEFAULTS.select_snapshots),  # (a run's config.yaml keeps lists)
    "fast": "auto",
}
SHOWN_DEFAULTS = {
    "device": "cuda when available, else cpu",
    "root": "the list file's folder",
    "test_root": "--root",
    "select_lrs": "the given learning rates ÷10, ×1 and ×10",
    "select_snapshots": ",".join(f"{f:g}" for f in _ENGINE_DEFAULTS.select_snapshots),
}
SELECT_HELP = (
    "auto: choose the learning rate and epoch without labels, among one training trajectory per --select-lrs "
    "value, snapshots at --select-snapshots and zero-shot, by --validator on the adaptation set. Costs one "
    "training run per learning rate (3 by default) plus one scoring pass of the adaptation set per snapshot"
)

# (flag, key, help, argparse keywords)
FIT_OPTIONS: tuple[tuple[str, str, str, dict[str, Any]], ...] = (
    ("--model", "model", "open_clip model name, 'hf-hub:org/repo' or 'local-dir:/path'", {}),
    ("--pretrained", "pretrained", "weights tag or checkpoint file; 'none' for random weights (seeded by --seed)", {}),
    ("--device", "device", "cpu, cuda, cuda:1, ...", {}),
    ("--data", "data", "unlabeled images: a folder (recursive) or a list file", {}),
    ("--root", "root", "folder that list-file paths are relative to", {}),
    ("--test", "test", "labeled test images: a folder with class sub-folders, or a list file", {}),
    ("--test-root", "test_root", "folder that --test list paths are relative to", {}),
    ("--val", "val", "labeled validation images, for --tpr", {}),
    ("--classes", "classes", "class names: a file (one a line) or a,b,c", {}),
    ("--benchmark", "benchmark", "a benchmark instead of --data/--classes", {"choices": BENCHMARK_CHOICES}),
    ("--domain", "domain", "benchmark domain", {}),
    ("--scenario", "scenario", "class-shift scenario", {"choices": SCENARIO_CHOICES}),
    ("--lists", "lists", "folder with the benchmark's official list files", {}),
    (
        "--method",
        "method",
        "objective: ueo, its variants (infomax, entropy, oracle), zeroshot, or a baseline with its published recipe "
        "for the settings not given (upl, pouf, tent, tpt; docs/method.md)",
        {"choices": METHODS},
    ),
    ("--tune", "tune", "what learns", {"choices": TUNE_CHOICES}),
    (
        "--rule",
        "rule",
        "which norm affines learn: bn-ln ('bn'/'ln' in the name; also accepted as 'official') or all-norms",
        {"choices": (*RULES, *RULE_ALIASES)},
    ),
    ("--epochs", "epochs", "adaptation epochs", {"type": int}),
    ("--batch-size", "batch_size", "images per step", {"type": int}),
    ("--lr-prompt", "lr_prompt", "learning rate of the prompt context", {"type": float}),
    ("--lr-norm", "lr_norm", "learning rate of the norm affines", {"type": float}),
    ("--trade", "trade", "weight of the marginal-entropy term", {"type": float}),
    (
        "--weight-refresh",
        "weight_refresh",
        "when UEO's confidence weights are computed: fixed (zero-shot, once) or epoch (recomputed); also --weights",
        {"choices": WEIGHT_MODES},
    ),
    ("--seed", "seed", "random seed", {"type": int}),
    ("--eval-every", "eval_every", "evaluate every N epochs (0: zero-shot and last only)", {"type": int}),
    ("--eval-batch-size", "eval_batch_size", "images per evaluation batch", {"type": int}),
    ("--num-workers", "num_workers", "DataLoader worker processes", {"type": int}),
    (
        "--fast",
        "fast",
        "decode the images once and make the views on the device (auto: on, for image files)",
        {"choices": tuple(FAST_CHOICES)},
    ),
    ("--threshold", "threshold", "unknown threshold: auto (Otsu on the adaptation set's scores) or a number", {}),
    ("--tpr", "tpr", "choose the threshold that accepts this fraction of the known --val images", {"type": float}),
    ("--out", "out", "output folder", {}),
    ("--vocabulary", "vocabulary", VOCABULARY_HELP, {}),
    ("--select", "select", SELECT_HELP, {"choices": SELECT_CHOICES}),
    (
        "--select-lrs",
        "select_lrs",
        "with --select auto: the learning rates tried, for both groups, e.g. 1e-4,1e-3,1e-2",
        {},
    ),
    (
        "--select-snapshots",
        "select_snapshots",
        "with --select auto: the fractions of the epochs where candidates are taken",
        {},
    ),
    ("--upl-per-class", "upl_per_class", "UPL: pseudo-labelled images per class", {"type": int}),
    (
        "--upl-prompts",
        "upl_prompts",
        "UPL: contexts learned from seeds --seed, --seed+1, ... and ensembled; each costs a training run (paper: 16)",
        {"type": int},
    ),
    (
        "--validator",
        "validator",
        "the label-free validator that chooses, and that checks every run against zero-shot (docs/method.md)",
        {"choices": VALIDATORS},
    ),
)


def add_fit_options(parser: argparse.ArgumentParser) -> None:
    """The options shared by `ueo fit` and `ueo bench`. Their argparse default is None, so that a flag
    given on the command line can be told from a default (which a --config file may override)."""
    for flag, key, help_text, extra in FIT_OPTIONS:
        shown = SHOWN_DEFAULTS.get(key, DEFAULTS[key])
        earlier = [f"--{old.replace('_', '-')}" for old, new in SETTING_ALIASES.items() if new == key]
        parser.add_argument(flag, *earlier, dest=key, default=None, help=f"{help_text} (default: {shown})", **extra)
    parser.add_argument(
        "--no-discover", dest="discover", action="store_const", const=False, default=None, help=NO_DISCOVER_HELP
    )
    parser.add_argument("--config", default=None, help="YAML file with any of these options; flags override it")
    parser.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --out folder")
    parser.add_argument(
        "--strict", action="store_true", help="stop at the first unreadable image instead of skipping it"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars; logs only")
    parser.add_argument(
        "--no-report", action="store_true", help="write no report.html (and skip the zero-shot pass it compares with)"
    )
    add_cache_options(parser, config=True)


def add_cache_options(parser: argparse.ArgumentParser, config: bool = False) -> None:
    """The decode cache's flags. ``config``: for fit and bench, whose flags have no argparse default (a
    --config file may set them; the resolved configuration records them)."""

    def default(value):
        return None if config else value

    parser.add_argument(
        "--cache-dir",
        default=None,
        help="where decoded images are kept between runs (default: $UEO_CACHE_DIR, else ~/.cache/ueo)",
    )
    parser.add_argument(
        "--no-cache",
        action="store_const",
        const=True,
        default=default(False),
        help="decode the images in memory, keep nothing on disk",
    )
    parser.add_argument(
        "--cache-format",
        choices=("auto", "raw", "jpeg"),
        default=default("auto"),
        help="how new cache entries are stored: raw pixels, or JPEG at quality 95 (about a tenth of the disk); "
        "auto: JPEG for images shrunk to the cap, raw for smaller ones (default: auto)",
    )
    parser.add_argument(
        "--cache-max-size",
        default=None,
        metavar="SIZE",
        help="bound of the decode cache, e.g. 50GB (default: $UEO_CACHE_MAX_SIZE, else the smaller of 50 GB and "
        "20%% of the free disk at first use); least recently used shards are removed to stay under it",
    )


# the settings' types, from FitConfig itself (with --tpr, a flag of the commands, not of the engine)
PATH_KEYS = ("data", "root", "test", "test_root", "val", "lists", "out", "cache_dir")
# What a resumed run may change: how it runs, not what it computes.
RESUME_OVERRIDES = ("device", "num_workers", "eval_batch_size", "cache_dir", "cache_max_size")


def absolute(spec: str) -> str:
    """A path made absolute (a run's config names its inputs wherever it is resumed from); of shards joined
    by '::', each one; a pipe: command as it is."""
    return "::".join(part if part.startswith("pipe:") else os.path.abspath(part) for part in str(spec).split("::"))


def absolute_paths(config: dict[str, Any]) -> dict[str, Any]:
    """The configuration with every file and folder as an absolute path, so that the run's config.yaml
    means the same from any working directory."""
    config = dict(config)
    for key in PATH_KEYS:
        if config.get(key):
            config[key] = absolute(config[key])
    for key in ("classes", "pretrained", "vocabulary"):  # a file, or a list / a tag / a word
        if isinstance(config.get(key), str) and os.path.isfile(config[key]):
            config[key] = os.path.abspath(config[key])
    return config


def fit_config(config: dict[str, Any], progress: bool) -> FitConfig:
    """The library's FitConfig of a resolved command-line configuration (validated)."""
    choice = {True: "on", False: "off"}.get(config["fast"], str(config["fast"]).lower())  # YAML: on/off are booleans
    if choice not in FAST_CHOICES:
        raise ConfigError(f"--fast must be auto, on or off, got {config['fast']!r}.")
    with flag_names(ENGINE_KEYS):
        return FitConfig(**{k: config[k] for k in ENGINE_KEYS}, fast=FAST_CHOICES[choice], progress=progress).validate()


@contextlib.contextmanager
def flag_names(keys):
    """The library names a setting ("batch_size must be ..."); on the command line, say its flag.
    ``keys``: setting names (flag --setting-name), or {setting: flag}."""
    flags = keys if isinstance(keys, dict) else {k: f"--{k.replace('_', '-')}" for k in keys}
    try:
        yield
    except ConfigError as error:
        message = str(error)
        key = next((k for k in flags if message.startswith(f"{k} ")), None)
        if key:
            error.args = (f"{flags[key]}{message[len(key) :]}",)
        raise
