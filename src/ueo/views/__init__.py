"""The model's views: seeded, batched, made on the device (the fast path) or by PIL.

Rooms: fastpath, feed, resample, spec. This face names what the other wings use; each name loads when first used."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..faces import loader

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

__getattr__ = loader(__name__, _WHERE)


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
