"""Where a run's options come from, in order: the defaults, the method's recipe, a ``--config FILE.yaml``
(each value of the type its option takes), the flags given on the command line."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import yaml

from ..config import METHOD_RECIPES, SETTING_ALIASES, FitConfig
from ..errors import ConfigError
from .options import DEFAULTS, ENGINE_KEYS

INT_KEYS = tuple(f.name for f in dataclasses.fields(FitConfig) if f.type == "int" and f.name in ENGINE_KEYS)
FLOAT_KEYS = (*(f.name for f in dataclasses.fields(FitConfig) if f.type == "float" and f.name in ENGINE_KEYS), "tpr")
REQUIRED_TEXTS = (
    *("model", "method", "tune", "rule", "weight_refresh", "cache_format", "select", "validator"),
    *("optimizer", "schedule"),
)


class UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML would keep the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the option {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_config_file(path) -> dict[str, Any]:
    """The options of a YAML file, with their types checked (see :func:`typed`)."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
        loaded = yaml.load(text, Loader=UniqueKeyLoader) or {}
    except yaml.YAMLError as error:
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        mark = getattr(error, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ConfigError(f"--config {path}: not valid YAML: {problem}{where}.") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"--config {path}: {error}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"--config {path}: expected a mapping of option: value.")

    def name(key) -> str:
        key = str(key).replace("-", "_")
        return SETTING_ALIASES.get(key, key)

    unknown = [k for k in loaded if name(k) not in DEFAULTS]
    if unknown:
        raise ConfigError(f"--config {path}: unknown option(s) {unknown}.")
    return {name(k): typed(name(k), v, f"--config {path}") for k, v in loaded.items()}


def typed(key: str, value: Any, where: str) -> Any:
    """A configuration value of the type its option takes. YAML reads 1e-2 as a text: numbers written
    that way are read as the numbers they are."""

    def wrong(kind):
        return ConfigError(f"{where}: {key} must be {kind}, got {value!r}.")

    if key in INT_KEYS:
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong("a whole number")
        return value
    if key in FLOAT_KEYS:
        if value is None and key == "tpr":
            return None
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise wrong("a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong("a number")
        return float(value)
    if key == "classes":
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return value
        if not isinstance(value, str):
            raise wrong("a file, a,b,c or a list of names")
        return value
    if key in ("discover", "no_cache", "nesterov"):
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if key == "cache_format" and value not in ("auto", "raw", "jpeg"):
        raise wrong("auto, raw or jpeg")
    if key == "cache_max_size":
        if value is None or (isinstance(value, (int, str)) and not isinstance(value, bool)):
            return value
        raise wrong("a size such as 50GB")
    if key in ("select_lrs", "select_snapshots"):  # a,b,c or a list of numbers (checked by FitConfig)
        if (value is None and key == "select_lrs") or isinstance(value, (str, list)):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return [value]
        raise wrong("numbers: a,b,c or a list")
    if key in ("threshold", "fast"):
        if isinstance(value, (bool, int, float, str)):
            return value
        raise wrong("a text or a number")
    if (value is None and key in REQUIRED_TEXTS) or (value is not None and not isinstance(value, str)):
        raise wrong("a text")
    return value


def resolve_config(args: argparse.Namespace, config_file=None, method: str | None = None) -> dict[str, Any]:
    """Defaults < the method's recipe < YAML config (``config_file``, else --config) < flags given on the
    command line (``method``: this one, whatever they say; `ueo bench` runs several)."""
    config = dict(DEFAULTS)
    config_file = config_file or getattr(args, "config", None)
    given = read_config_file(config_file) if config_file else {}
    given.update(given_options(args))
    if method is not None:
        given["method"] = method
    config.update(METHOD_RECIPES.get(given.get("method", config["method"]), {}))  # where the user is silent
    config.update(given)
    if isinstance(config.get("pretrained"), str) and config["pretrained"].lower() == "none":
        config["pretrained"] = None
    return config


def given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The fit options given as flags on the command line."""
    return {k: v for k, v in vars(args).items() if k in DEFAULTS and v is not None}
