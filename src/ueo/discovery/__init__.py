"""What the class list misses: absent classes and named groups of unknown images.

Rooms: find, naming, vocabulary. This face names what the other wings use; each name loads when first used."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..faces import loader

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

__getattr__ = loader(__name__, _WHERE)


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
