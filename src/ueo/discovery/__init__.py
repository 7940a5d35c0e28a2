"""What the class list misses: absent classes and named groups of unknown images.

Rooms: find, naming, vocabulary. This face names what the other wings use; each name loads when first used."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_WHERE = {  # name -> the room that defines it
    **dict.fromkeys(
        [
            "ABSENT_RATIO",
            "Discovery",
            "Group",
            "ListedClass",
            "MAX_GROUPS",
            "MIN_GROUP",
            "MIN_GROUP_FRACTION",
            "MIN_PER_CLASS",
            "MIN_SILHOUETTE",
            "SILHOUETTE_SAMPLE",
            "absent_verdicts",
            "central_first",
            "centroids",
            "class_shares",
            "discover",
            "discover_outputs",
            "find_groups",
            "suggested",
            "vocabulary_names",
        ],
        "find",
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
    from .find import (
        ABSENT_RATIO,
        MAX_GROUPS,
        MIN_GROUP,
        MIN_GROUP_FRACTION,
        MIN_PER_CLASS,
        MIN_SILHOUETTE,
        SILHOUETTE_SAMPLE,
        Discovery,
        Group,
        ListedClass,
        absent_verdicts,
        central_first,
        centroids,
        class_shares,
        discover,
        discover_outputs,
        find_groups,
        suggested,
        vocabulary_names,
    )
