"""The thumbnails of a run's page: small JPEG copies of its images in ``thumbs/``, named by a hash of the
image's path (so that no file name reaches an attribute), made once each."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from ..data import Member, resolve, stream
from ..files import atomic_path
from ..images import load_image

THUMB_SIDE = 112


class Thumbs:
    """Small JPEG copies of images in ``folder``/thumbs, each made once. An image that only a stream gives
    (in a pipe: or a compressed shard) is not read when first asked for: it waits in ``pending`` until
    :meth:`fetch_pending` reads them all, one pass per container."""

    def __init__(self, folder: Path):
        self.folder = folder / "thumbs"
        self.made: dict[str, str | None] = {}
        self.pending: dict[str, Member] = {}

    def _target(self, path: str) -> Path:
        return self.folder / (hashlib.sha1(path.encode("utf-8", "surrogateescape")).hexdigest()[:20] + ".jpg")

    def __call__(self, path: str) -> str | None:
        """The page's relative link to the thumbnail of ``path``; None when the image cannot be read (yet)."""
        if path not in self.made:
            target = self._target(path)
            try:
                if not target.is_file():
                    item = resolve(path)
                    if isinstance(item, Member) and item.streamed:
                        self.pending[path] = item
                        return None
                    self._make(load_image(item, max_side=2 * THUMB_SIDE), target)
                self.made[path] = f"thumbs/{target.name}"
            except Exception:  # a file that moved or broke since the run: shown as a caption only
                self.made[path] = None
        return self.made[path]

    def _make(self, image, target: Path) -> None:
        image.thumbnail((THUMB_SIDE, THUMB_SIDE))
        with atomic_path(target) as tmp:
            image.save(tmp, format="JPEG", quality=80)

    def fetch_pending(self) -> bool:
        """Make the thumbnails of the images that only a stream gives; whether there were any."""
        if not self.pending:
            return False
        paths = {member: path for path, member in self.pending.items()}
        for member, data, _ in stream(list(paths)):
            try:
                if data is None:
                    raise OSError("not in the stream")
                self._make(load_image(io.BytesIO(data), max_side=2 * THUMB_SIDE), self._target(paths[member]))
            except Exception:
                self.made[paths[member]] = None
        self.pending.clear()
        return True
