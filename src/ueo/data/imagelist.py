"""What a collection of images is: ``ImageList`` (paths or container members, labels), and what says that an
image is still the one seen before (its identity; a fingerprint of a whole list)."""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..files import file_state
from .members import Member


def stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fold(name: str) -> str:
    """Case-insensitive, '_'/' ' tolerant key of a class or folder name."""
    return " ".join(name.replace("_", " ").split()).lower()


@dataclass
class ImageList:
    """Paths (absolute) with integer labels; ``labeled`` tells whether the labels are real."""

    paths: list  # Path of an image file, or ``ueo.members.Member`` of an image inside a container
    labels: list[int]
    labeled: bool
    unknown_names: dict[int, str] = field(default_factory=dict)  # label -> folder name, for unknown folders
    skipped: list[dict] = field(default_factory=list)  # what listing found unreadable (skipped.csv rows)

    def __len__(self):
        return len(self.paths)

    def subset(self, keep: Sequence[int]) -> ImageList:
        keep = list(keep)
        return ImageList(
            [self.paths[i] for i in keep],
            [self.labels[i] for i in keep],
            self.labeled,
            dict(self.unknown_names),
            list(self.skipped),
        )


def fingerprint(images: ImageList) -> str:
    """A short hash of what a list of images is: every path, its ``file_state`` and label. Two runs over the
    same files give the same fingerprint; a file added, removed, replaced, rewritten or relabeled changes it."""

    digest = hashlib.sha256()
    for path, label in zip(images.paths, images.labels):
        try:
            digest.update(identity(path) + f"\t{label}\n".encode())
        except OSError:
            digest.update(os.fsencode(os.path.abspath(path)) + f"\tmissing\t{label}\n".encode())
    return digest.hexdigest()[:16]


def identity(item) -> bytes:
    """What an image is, for the decode cache and for resuming: a file's real path (bytes: any file name)
    and ``file_state``, or an image inside a container (``ueo.members.Member.identity``). OSError when a
    file is missing."""
    if isinstance(item, Member):
        return item.identity()
    return os.fsencode(os.path.realpath(item)) + f"\0{file_state(os.stat(item))}".encode()
