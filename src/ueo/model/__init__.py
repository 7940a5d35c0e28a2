"""The model: CLIP, the learned prompt, the tuned norms, the adapted state and its threshold.

Rooms: clip, prompts, state, thresholds, tuning. This face names what the other wings use; each name loads when first used."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..faces import loader

_WHERE = {  # name -> the room that defines it
    **dict.fromkeys(["ClipBundle", "load_clip"], "clip"),
    **dict.fromkeys(["PromptLearner", "encode_tokens"], "prompts"),
    **dict.fromkeys(["AdaptedState"], "state"),
    **dict.fromkeys(
        ["Threshold", "choose_threshold", "decide", "otsu_threshold", "parse_threshold", "threshold_warning"],
        "thresholds",
    ),
    **dict.fromkeys(
        [
            "adapted_state",
            "applied",
            "apply_adapted_state",
            "batch_statistics",
            "configure_tuning",
            "damaged_tensors",
            "resolve_rule",
            "tunable_parameters",
        ],
        "tuning",
    ),
}
__all__ = sorted(_WHERE)

__getattr__ = loader(__name__, _WHERE)


if TYPE_CHECKING:
    from .clip import ClipBundle, load_clip
    from .prompts import PromptLearner, encode_tokens
    from .state import AdaptedState
    from .thresholds import Threshold, choose_threshold, decide, otsu_threshold, parse_threshold, threshold_warning
    from .tuning import (
        adapted_state,
        applied,
        apply_adapted_state,
        batch_statistics,
        configure_tuning,
        damaged_tensors,
        resolve_rule,
        tunable_parameters,
    )
