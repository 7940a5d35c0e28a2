"""Decoded images read from the decode cache's shards through memory maps (``ueo.cache`` builds them and
is the ``cache`` they report damage to)."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import torch

from .images import decode
from .shards import JPEG, unpack


class MappedPixels:
    """Decoded images read from the cache's shards through memory maps: the stored bytes stay file-backed
    (the process's own memory holds a few numbers per image; a JPEG entry is decoded at each read). Each
    image's CRC is checked the first time this process reads it; a mismatch removes its shard (with a
    warning) and the image is decoded from its source. ``places``: for each image, (shard, row), or
    (pixels, original size) when it is held in memory (the cache could not be written)."""

    def __init__(self, cache, places: list[tuple], paths: list, labels: list[int], short_side: int):
        self.cache, self.paths, self.labels, self.short_side = cache, list(paths), list(labels), short_side
        mapped = [place for place in places if isinstance(place[0], Path)]
        self.files = sorted({path for path, _ in mapped})
        number = {path: i for i, path in enumerate(self.files)}
        n = len(places)
        self.shard = np.full(n, -1, dtype=np.int32)
        self.offset, self.stored = np.zeros(n, dtype=np.uint64), np.zeros(n, dtype=np.uint64)
        self.format = np.zeros(n, dtype=np.uint8)
        self.crc = np.zeros(n, dtype=np.uint32)
        self.sizes, self.originals = [], []
        self.verified = np.zeros(n, dtype=bool)
        self.maps: dict[int, np.memmap] = {}
        self.decoded: dict[int, torch.Tensor] = {}  # images held in memory, or whose cached copy failed its check
        for i, place in enumerate(places):
            if isinstance(place[0], Path):
                path, row = place
                record = cache.shards[path].index[row]
                self.shard[i], self.offset[i], self.crc[i] = number[path], record["offset"], record["crc"]
                self.stored[i], self.format[i] = record["nbytes"], record["format"]
                self.sizes.append((int(record["h"]), int(record["w"])))
                self.originals.append((int(record["original_h"]), int(record["original_w"])))
            else:
                pixels, original = place
                self.decoded[i] = torch.from_numpy(pixels)
                self.sizes.append((pixels.shape[1], pixels.shape[2]))
                self.originals.append(tuple(original))

    def __len__(self):
        return len(self.sizes)

    @property
    def nbytes(self) -> int:
        """The bytes of the decoded pixels (what holding them all on a device takes)."""
        return int(sum(3 * h * w for h, w in self.sizes))

    def encoded(self, i: int) -> torch.Tensor | None:
        """The JPEG bytes of image i as a uint8 tensor (checked), or None when it is not stored as JPEG."""
        if i in self.decoded or self.format[i] != JPEG:
            return None
        view = self._view(i)
        return None if view is None else torch.from_numpy(np.asarray(view))

    def _view(self, i: int):
        """The stored bytes of image i in its memory map, checked the first time; None (and decoded from its
        source) when they fail their checksum."""
        shard = int(self.shard[i])
        if shard not in self.maps:
            self.maps[shard] = np.memmap(self.files[shard], dtype=np.uint8, mode="c")  # private: never written
        start = int(self.offset[i])
        view = self.maps[shard][start : start + int(self.stored[i])]
        if not self.verified[i]:
            if zlib.crc32(view.data) != int(self.crc[i]):  # (a 1-D slice: contiguous)
                self.cache.discard(self.files[shard], f"the pixels of {self.paths[i]} fail their checksum")
                self.decoded[i] = torch.from_numpy(decode(self.paths[i], self.short_side)[0])
                return None
            self.verified[i] = True
        return view

    def image(self, i: int) -> torch.Tensor:
        """uint8 [3, h, w]: a view of the memory map (raw; no copy), or the decoded JPEG."""
        if i in self.decoded:
            return self.decoded[i]
        view = self._view(i)
        if view is None:
            return self.decoded[i]
        h, w = self.sizes[i]
        return unpack(view, int(self.format[i]), h, w)


def decode_batch(pixels, indices, device) -> list[torch.Tensor]:
    """The images ``indices`` of ``pixels`` as uint8 [3, h, w] on ``device``: JPEG entries decoded together
    by torchvision (on a CUDA device: its batched GPU decoder, nvJPEG, whose pixels may differ from PIL's
    by a level), the others copied."""
    import warnings

    import torchvision

    encoded = [pixels.encoded(i) if hasattr(pixels, "encoded") else None for i in indices]
    jpegs = [i for i, e in zip(indices, encoded) if e is not None]
    decoded = {}
    if jpegs:
        datas = [e for e in encoded if e is not None]
        mode = torchvision.io.ImageReadMode.RGB
        with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders in favour of torchcodec
            warnings.simplefilter("ignore", DeprecationWarning)
            out = torchvision.io.decode_jpeg(datas, mode=mode, device=device)
        decoded = dict(zip(jpegs, out))
    return [decoded[i] if i in decoded else pixels.image(i).to(device) for i in indices]
