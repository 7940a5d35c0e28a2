"""The model's views: seeded, batched, made on the device (the fast path) or by PIL.

Rooms: fastpath, feed, resample, spec. This face names what the other wings use; each name loads when first used."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_WHERE = {  # name -> the room that defines it
    **dict.fromkeys(["decoded_short_side"], "fastpath"),
    **dict.fromkeys(["image_source", "readable"], "feed"),
    **dict.fromkeys(
        [
            "Batch",
            "INTERPOLATIONS",
            "LoadedImages",
            "Plan",
            "SeededViews",
            "ViewSpec",
            "checked_item",
            "chunks",
            "collate",
            "empty_batch",
            "epoch_batches",
            "view_seed",
        ],
        "spec",
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
    from .fastpath import decoded_short_side
    from .feed import image_source, readable
    from .spec import (
        INTERPOLATIONS,
        Batch,
        LoadedImages,
        Plan,
        SeededViews,
        ViewSpec,
        checked_item,
        chunks,
        collate,
        empty_batch,
        epoch_batches,
        view_seed,
    )
