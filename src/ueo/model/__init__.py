"""The model: CLIP, the learned prompt, the tuned norms, the adapted state and its threshold.

Rooms: clip, prompts, state, thresholds, tuning. This face names what the other wings use; each name loads when first used."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

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


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


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
