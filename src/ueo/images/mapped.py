"""Decoded images that the process does not keep: read from the decode cache's shards through memory maps,
or decoded from their files when a batch needs them (``ueo.cache`` builds the shards and is the ``cache``
they report damage to).

Whatever the collection's size, the process's own memory holds a few numbers per image: a raw entry is a
view of its memory map (its pages belong to the file), a JPEG entry is decoded at each read, and an image
the cache could not take (its bound reached, the disk full or read-only, no cache at all) is decoded from
its file at each read. :meth:`Pixels.prefetch` decodes the images of a batch that need decoding on a pool
of threads (``fastpath.BatchViews`` asks for the next batch's while the current one is used).
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .builder import HELD, SOURCE
from .reading import decode, decoded_size, describe, original_size
from .shards import JPEG, unpack


class Pixels:
    """The decoded images of a collection, none of them held in memory. ``places``: for each image, (shard,
    row) of its cache entry, (SOURCE, (h, w) of the original image) to decode it from its source at each
    read, or (HELD, spill, offset, bytes, format, size, original size) of an entry kept in a ``builder.Spill``
    (a streamed image the cache could not take). ``cache``: the ``DecodeCache`` of the shards (None when
    there are none). Each entry's CRC is checked the first time this process reads
    it; a mismatch removes its shard (with a warning) and the image is decoded from its source after."""

    def __init__(self, cache, places: list[tuple], paths: list, labels: list[int], short_side: int):
        self.cache, self.paths, self.labels, self.short_side = cache, list(paths), list(labels), short_side
        mapped = [place for place in places if isinstance(place[0], Path)]
        self.files = sorted({path for path, _ in mapped})
        number = {path: i for i, path in enumerate(self.files)}
        n = len(places)
        self.shard = np.full(n, -1, dtype=np.int32)  # -1: decoded from its source
        self.offset, self.stored = np.zeros(n, dtype=np.uint64), np.zeros(n, dtype=np.uint64)
        self.format = np.zeros(n, dtype=np.uint8)
        self.crc = np.zeros(n, dtype=np.uint32)
        self.sizes: list[tuple[int, int]] = []
        self.originals: list[tuple[int, int]] = []
        self.verified = np.zeros(n, dtype=bool)
        self.maps: dict[int, np.memmap] = {}
        self.held: dict[int, tuple] = {}  # image -> (spill, offset, bytes)
        self.pool: ThreadPoolExecutor | None = None
        for i, place in enumerate(places):
            if isinstance(place[0], Path):
                path, row = place
                record = cache.shards[path].index[row]
                self.shard[i], self.offset[i], self.crc[i] = number[path], record["offset"], record["crc"]
                self.stored[i], self.format[i] = record["nbytes"], record["format"]
                self.sizes.append((int(record["h"]), int(record["w"])))
                self.originals.append((int(record["original_h"]), int(record["original_w"])))
            elif place[0] == HELD:
                _, spill, at, nbytes, fmt, size, original = place
                self.held[i], self.format[i] = (spill, at, nbytes), fmt
                self.sizes.append(tuple(size))
                self.originals.append(tuple(original))
            else:
                original = tuple(place[1])
                self.originals.append(original)
                self.sizes.append(decoded_size(original, short_side))

    def __len__(self):
        return len(self.sizes)

    @property
    def nbytes(self) -> int:
        """The bytes of the decoded pixels (what holding them all on a device takes)."""
        return int(sum(3 * h * w for h, w in self.sizes))

    @property
    def device(self) -> torch.device:
        """Where the pixels are read: the host."""
        return torch.device("cpu")

    @property
    def resident_bytes(self) -> int:
        """The decoded pixels this object holds in the process's memory between reads: none (raw entries
        are views of their memory maps; everything else is decoded when read)."""
        return 0

    def encoded(self, i: int) -> torch.Tensor | None:
        """The JPEG bytes of image i as a uint8 tensor (checked), or None when it is not stored as JPEG."""
        if i in self.held and self.format[i] == JPEG:
            spill, at, nbytes = self.held[i]
            return torch.frombuffer(bytearray(spill.read(at, nbytes)), dtype=torch.uint8)
        if self.shard[i] < 0 or self.format[i] != JPEG:
            return None
        view = self._view(i)
        return None if view is None else torch.from_numpy(np.asarray(view))

    def _view(self, i: int):
        """The stored bytes of image i in its memory map, checked the first time; None (and from then on
        decoded from its source) when they fail their checksum."""
        shard = int(self.shard[i])
        if shard not in self.maps:
            self.maps[shard] = np.memmap(self.files[shard], dtype=np.uint8, mode="c")  # private: never written
        start = int(self.offset[i])
        view = self.maps[shard][start : start + int(self.stored[i])]
        if not self.verified[i]:
            if zlib.crc32(view.data) != int(self.crc[i]):  # (a 1-D slice: contiguous)
                self.cache.discard(self.files[shard], f"the pixels of {self.paths[i]} fail their checksum")
                self.shard[i] = -1
                return None
            self.verified[i] = True
        return view

    def decoded_at_read(self, i: int) -> bool:
        """Whether reading image i decodes or copies something (a JPEG entry, a spilled one, or its source)."""
        return self.shard[i] < 0 or self.format[i] == JPEG

    def image(self, i: int) -> torch.Tensor:
        """uint8 [3, h, w]: a view of the memory map (raw; no copy), the decoded JPEG entry, or the image
        decoded from its source."""
        h, w = self.sizes[i]
        if i in self.held:
            spill, at, nbytes = self.held[i]
            return unpack(np.frombuffer(bytearray(spill.read(at, nbytes)), np.uint8), int(self.format[i]), h, w)
        if self.shard[i] >= 0:
            view = self._view(i)
            if view is not None:
                return unpack(view, int(self.format[i]), h, w)
        pixels, _ = decode(self.paths[i], self.short_side)
        if tuple(pixels.shape[1:]) != self.sizes[i]:
            raise DataError(f"{self.paths[i]} changed while this run read it (it is now another image).")
        return torch.from_numpy(pixels)

    def prefetch(self, indices: Sequence[int]) -> dict[int, torch.Tensor]:
        """The images among ``indices`` whose reading decodes something, decoded together on a pool of
        threads: {index: uint8 [3, h, w]} (the others are read as they are needed)."""
        wanted = sorted({int(i) for i in indices if self.decoded_at_read(int(i))})
        if len(wanted) < 2:
            return {i: self.image(i) for i in wanted}
        if self.pool is None:
            self.pool = ThreadPoolExecutor(max_workers=min(32, os.cpu_count() or 4))
        return dict(zip(wanted, self.pool.map(self.image, wanted)))


def file_pixels(images, short_side: int, threads: int | None = None) -> Pixels:
    """The pixels of image files decoded when a batch needs them, with nothing kept: their original sizes
    read from their headers (on a pool of threads). DataError names an image whose header cannot be read."""

    def size(item):
        try:
            return original_size(item)
        except Exception as error:  # (what decoding it would meet: named below)
            return error

    with ThreadPoolExecutor(max_workers=threads or min(32, os.cpu_count() or 4)) as pool:
        sizes = list(pool.map(size, images.paths))
    bad = [i for i, s in enumerate(sizes) if isinstance(s, BaseException)]
    if bad:
        raise DataError(
            f"{len(bad)} image(s) cannot be read, e.g. {images.paths[bad[0]]} ({describe(sizes[bad[0]])}); "
            "leave them out first (ueo.images.check_images)."
        )
    return Pixels(None, [(SOURCE, s) for s in sizes], images.paths, images.labels, short_side)


def decode_batch(pixels, indices, device) -> list[torch.Tensor]:
    """The images ``indices`` of ``pixels`` as uint8 [3, h, w] on ``device``: JPEG entries decoded together
    by torchvision (on a CUDA device: its batched GPU decoder, nvJPEG, whose pixels may differ from PIL's
    by a level), the others read (and decoded, on the CPU's threads, when they must be) and copied."""
    import warnings

    import torchvision

    encoded = [pixels.encoded(i) for i in indices]
    jpegs = [i for i, e in zip(indices, encoded) if e is not None]
    decoded = {}
    if jpegs:
        datas = [e for e in encoded if e is not None]
        mode = torchvision.io.ImageReadMode.RGB
        with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders in favour of torchcodec
            warnings.simplefilter("ignore", DeprecationWarning)
            out = torchvision.io.decode_jpeg(datas, mode=mode, device=device)
        decoded = dict(zip(jpegs, out))
    others = pixels.prefetch([i for i in indices if i not in decoded])
    return [decoded[i] if i in decoded else (others[i] if i in others else pixels.image(i)).to(device) for i in indices]
