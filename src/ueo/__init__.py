"""ueo: adapt CLIP to an unlabeled image collection with Universal Entropy Optimization (ICML 2024).

The public API is re-exported here. Names are imported when first used, so that ``import ueo`` (and
``ueo --help``) does not pay for PyTorch until something needs it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .version import __version__

# public name -> the module that defines it
_PUBLIC = {
    "read_images": "sources",
    "ImageFiles": "images",
    "load_image": "images",
    "DecodeCache": "cache",
    "ClipBundle": "clip",
    "load_clip": "clip",
    "Classifier": "classifier",
    "Prediction": "classifier",
    "load_adapted": "classifier",
    "FitConfig": "config",
    "FitResult": "config",
    "METHODS": "config",
    "RULES": "config",
    "VALIDATORS": "config",
    "Discovery": "discovery",
    "discover": "discovery",
    "UeoError": "errors",
    "DataError": "errors",
    "ConfigError": "errors",
    "IncompatibleError": "errors",
    "ModelUnavailableError": "errors",
    "WeightsUnavailableError": "errors",
    "DivergedError": "errors",
    "Interrupted": "errors",
    "TrainingInterrupted": "errors",
    "Outputs": "inference",
    "evaluate": "inference",
    "fit": "training",
    "save_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "compute_metrics": "metrics",
    "open_set_metrics": "metrics",
    "entropy": "objectives",
    "entropy_loss": "objectives",
    "infomax_loss": "objectives",
    "mcm_scores": "objectives",
    "ueo_loss": "objectives",
    "PromptLearner": "prompts",
    "AdaptedState": "state",
    "configure_tuning": "tuning",
    "tunable_parameters": "tuning",
    "ViewSpec": "views",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        try:  # a submodule: ueo.protocols, ueo.data, ...
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError:
            raise AttributeError(f"module 'ueo' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))


if TYPE_CHECKING:  # for type checkers and editors; at run time the names load on first use
    from .cache import DecodeCache
    from .checkpoint import load_checkpoint, save_checkpoint
    from .classifier import Classifier, Prediction, load_adapted
    from .clip import ClipBundle, load_clip
    from .config import METHODS, RULES, VALIDATORS, FitConfig, FitResult
    from .discovery import Discovery, discover
    from .errors import (
        ConfigError,
        DataError,
        DivergedError,
        IncompatibleError,
        Interrupted,
        ModelUnavailableError,
        TrainingInterrupted,
        UeoError,
        WeightsUnavailableError,
    )
    from .images import ImageFiles, load_image
    from .inference import Outputs, evaluate
    from .metrics import compute_metrics, open_set_metrics
    from .objectives import entropy, entropy_loss, infomax_loss, mcm_scores, ueo_loss
    from .prompts import PromptLearner
    from .sources import read_images
    from .state import AdaptedState
    from .training import fit
    from .tuning import configure_tuning, tunable_parameters
    from .views import ViewSpec
