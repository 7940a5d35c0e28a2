"""ueo: adapt CLIP to an unlabeled image collection with Universal Entropy Optimization (ICML 2024).

The public API is re-exported here. Names are imported when first used, so that ``import ueo`` (and
``ueo --help``) does not pay for PyTorch until something needs it.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import TYPE_CHECKING

from .version import __version__

# public name -> the module that defines it
_PUBLIC = {
    "read_images": "data.sources",
    "ImageFiles": "images.reading",
    "load_image": "images.reading",
    "DecodeCache": "images.cache",
    "ClipBundle": "model.clip",
    "load_clip": "model.clip",
    "Classifier": "classifier",
    "Prediction": "classifier",
    "load_adapted": "classifier",
    "FitConfig": "config",
    "FitResult": "config",
    "METHODS": "config",
    "RULES": "config",
    "VALIDATORS": "config",
    "Discovery": "discovery.find",
    "discover": "discovery.find",
    "UeoError": "errors",
    "DataError": "errors",
    "ConfigError": "errors",
    "IncompatibleError": "errors",
    "ModelUnavailableError": "errors",
    "WeightsUnavailableError": "errors",
    "DivergedError": "errors",
    "Interrupted": "errors",
    "TrainingInterrupted": "errors",
    "Outputs": "method.inference",
    "evaluate": "method.inference",
    "fit": "method.training",
    "save_checkpoint": "method.checkpoint",
    "load_checkpoint": "method.checkpoint",
    "compute_metrics": "method.metrics",
    "open_set_metrics": "method.metrics",
    "entropy": "method.objectives",
    "entropy_loss": "method.objectives",
    "infomax_loss": "method.objectives",
    "mcm_scores": "method.objectives",
    "ueo_loss": "method.objectives",
    "PromptLearner": "model.prompts",
    "AdaptedState": "model.state",
    "configure_tuning": "model.tuning",
    "tunable_parameters": "model.tuning",
    "ViewSpec": "views.spec",
}
__all__ = ["__version__", *_PUBLIC]


# Module paths from before the wings (ueo.cache, ueo.training, ...), kept for one release: each is the module
# at its new place (the same object), found by this finder when first imported.
_MOVED = {
    "imagelist": "data.imagelist",
    "sources": "data.sources",
    "members": "data.members",
    "tarshards": "data.tarshards",
    "hfdata": "data.hfdata",
    "labels": "data.labels",
    "pixels": "images.pixels",
    "cache": "images.cache",
    "builder": "images.builder",
    "shards": "images.shards",
    "mapped": "images.mapped",
    "upkeep": "images.upkeep",
    "fastpath": "views.fastpath",
    "resample": "views.resample",
    "feed": "views.feed",
    "clip": "model.clip",
    "prompts": "model.prompts",
    "tuning": "model.tuning",
    "state": "model.state",
    "thresholds": "model.thresholds",
    "objectives": "method.objectives",
    "metrics": "method.metrics",
    "distributed": "method.distributed",
    "inference": "method.inference",
    "checkpoint": "method.checkpoint",
    "training": "method.training",
    "loop": "method.loop",
    "selection": "method.selection",
    "validators": "method.validators",
    "naming": "discovery.naming",
    "vocabulary": "discovery.vocabulary",
    "record": "outputs.record",
    "report": "outputs.runfiles",
    "tables": "outputs.tables",
    "webreport": "outputs.webreport",
    "webtable": "outputs.webtable",
    "webselection": "outputs.webselection",
    "webdemo": "outputs.webdemo",
    "thumbs": "outputs.thumbs",
    "protocols": "experiments.protocols",
    "toyworld": "experiments.toyworld",
    "demo": "experiments.demo",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        prefix, _, old = fullname.partition(".")
        if prefix == __name__ and old in _MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return importlib.import_module(f"{__name__}.{_MOVED[spec.name.partition('.')[2]]}")

    def exec_module(self, module):
        pass


sys.meta_path.insert(0, _MovedModules())


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
    from .classifier import Classifier, Prediction, load_adapted
    from .config import METHODS, RULES, VALIDATORS, FitConfig, FitResult
    from .data import read_images
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
    from .images import DecodeCache, ImageFiles, load_image
    from .method import (
        Outputs,
        compute_metrics,
        entropy,
        entropy_loss,
        evaluate,
        fit,
        infomax_loss,
        load_checkpoint,
        mcm_scores,
        open_set_metrics,
        save_checkpoint,
        ueo_loss,
    )
    from .model import AdaptedState, ClipBundle, PromptLearner, configure_tuning, load_clip, tunable_parameters
    from .views import ViewSpec
