"""The method: objectives, the training loop, label-free selection, scoring, metrics, checkpoints.

Rooms: checkpoint, distributed, inference, loop, metrics, objectives, selection, training, validators. This face names what the other wings use; each name loads when first used."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..faces import loader

_WHERE = {  # name -> the room that defines it
    **dict.fromkeys(["check_resumable", "load_checkpoint", "save_checkpoint"], "checkpoint"),
    **dict.fromkeys(["init_from_environment", "is_main"], "distributed"),
    **dict.fromkeys(["Outputs", "autocast", "evaluate", "outputs_of"], "inference"),
    **dict.fromkeys(["auroc", "compute_metrics", "cumulative_counts", "known_mask", "open_set_metrics"], "metrics"),
    **dict.fromkeys(["entropy", "entropy_loss", "infomax_loss", "mcm_scores", "ueo_loss"], "objectives"),
    **dict.fromkeys(["fit", "run_identity"], "training"),
}
__all__ = sorted(_WHERE)

__getattr__ = loader(__name__, _WHERE)


if TYPE_CHECKING:
    from .checkpoint import check_resumable, load_checkpoint, save_checkpoint
    from .distributed import init_from_environment, is_main
    from .inference import Outputs, autocast, evaluate, outputs_of
    from .metrics import auroc, compute_metrics, cumulative_counts, known_mask, open_set_metrics
    from .objectives import entropy, entropy_loss, infomax_loss, mcm_scores, ueo_loss
    from .training import fit, run_identity
