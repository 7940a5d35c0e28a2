"""What ueo knows of an image inside a container (a tar shard, a dataset), shared by ``ueo.tarshards`` and
``ueo.hfdata``: the ``Member`` record and its identity (labels: ``data.labeled_by``)."""

from __future__ import annotations

import glob
import importlib
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from ..files import file_state

SPLIT = "test"  # the split read from a root with several, as CLIP_benchmark does by default


@dataclass(frozen=True)
class Member:
    """An image inside a container: a tar member (``offset``: where its bytes start, -1 when the container
    is read as a stream) or a dataset row (``offset``: the row, ``column``: the image column). ``state``:
    the container's ``data.file_state`` when it was listed; for a member read as a stream, a digest of its
    bytes ("sha1:..."), which the listing reads anyway: a ``pipe:`` command or a compressed shard that gives
    other bytes under the same name gives other images. ``name``: the member's name in the container, with
    "#2", "#3", ... for a name that occurs again in the same shard."""

    container: str
    name: str
    offset: int = -1
    size: int = 0
    state: str = ""
    column: str = ""

    def __str__(self) -> str:
        return f"{self.container}::{self.name}"

    def identity(self) -> bytes:
        """The container's real path (a pipe: its command) and state (a streamed member: its bytes' digest),
        and the member's name."""
        where = self.container if self.container.startswith("pipe:") else os.path.realpath(self.container)
        return os.fsencode(where) + f"\0{self.state}\0{self.name}".encode()

    @property
    def streamed(self) -> bool:
        """Readable only by streaming its container (a pipe, a compressed shard)."""
        return not self.column and self.offset < 0


def need(module: str, extra: str, what: str):
    """Import an optional package, or DataError naming the extra that installs it."""

    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataError(f"Reading {what} needs the {module} package: pip install 'ueo[{extra}]'.") from None


def expand(text: str) -> list[str]:
    """The shards of a pattern: brace-expanded (WebDataset's rule, ``::`` joins several), then globbed."""
    shardlists = need("webdataset.shardlists", "wds", "WebDataset shards")
    found: list[str] = []
    for name in shardlists.expand_urls(text):
        if name.startswith("pipe:") or not any(c in name for c in "*?["):
            found.append(name)
        else:
            found += sorted(glob.glob(name))
    return found


def state_of(container: str) -> str:
    """What says a container is unchanged: ``data.file_state`` of its file (of a dataset folder: of its
    arrow files and state.json); '' for a pipe: stream (its members carry their bytes' digests). OSError
    when it is missing."""
    if container.startswith("pipe:"):
        return ""
    path = Path(container)
    files = sorted(path.glob("*.arrow")) + [path / "state.json"] if path.is_dir() else [path]
    return "|".join(file_state(os.stat(f)) for f in files)
