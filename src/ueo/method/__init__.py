"""The method: objectives, the training loop, label-free selection, scoring, metrics, checkpoints.

Rooms: checkpoint, distributed, inference, loop, metrics, objectives, selection, training, validators. This face names what the other wings use; each name loads when first used."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_WHERE = {  # name -> the room that defines it
    **dict.fromkeys(["check_resumable", "load_checkpoint", "save_checkpoint"], "checkpoint"),
    **dict.fromkeys(["init_from_environment", "is_main"], "distributed"),
    **dict.fromkeys(["Outputs", "autocast", "evaluate", "outputs_of"], "inference"),
    **dict.fromkeys(["auroc", "compute_metrics", "cumulative_counts", "known_mask", "open_set_metrics"], "metrics"),
    **dict.fromkeys(["entropy", "entropy_loss", "infomax_loss", "mcm_scores", "ueo_loss"], "objectives"),
    **dict.fromkeys(["fit", "run_identity"], "training"),
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from .checkpoint import check_resumable, load_checkpoint, save_checkpoint
    from .distributed import init_from_environment, is_main
    from .inference import Outputs, autocast, evaluate, outputs_of
    from .metrics import auroc, compute_metrics, cumulative_counts, known_mask, open_set_metrics
    from .objectives import entropy, entropy_loss, infomax_loss, mcm_scores, ueo_loss
    from .training import fit, run_identity
