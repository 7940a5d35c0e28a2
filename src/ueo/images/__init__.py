"""The images' pixels: decoding, the decode cache and its upkeep.

Rooms: builder, cache, mapped, pixels, reading, shards, upkeep. This face names what the other wings use; each name loads when first used."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..faces import loader

_WHERE = {  # name -> the room that defines it
    **dict.fromkeys(["DecodeCache", "default_cache_dir"], "cache"),
    **dict.fromkeys(["decode_batch", "file_pixels"], "mapped"),
    **dict.fromkeys(["as_rgb"], "pixels"),
    **dict.fromkeys(
        [
            "CountsPixels",
            "DECODED",
            "DECODE_BUDGET_PIXELS",
            "GivenImages",
            "ImageDataset",
            "ImageFiles",
            "LIBC",
            "PixelBudget",
            "ROTATED",
            "SKIPPED_COLUMNS",
            "Tally",
            "UNREADABLE",
            "as_dataset",
            "check_images",
            "decode",
            "decoded_size",
            "describe",
            "image_pixels",
            "listed",
            "load_image",
            "opened_image",
            "original_size",
            "release_freed_memory",
            "shrink",
            "sort_out",
        ],
        "reading",
    ),
    **dict.fromkeys(["bound"], "shards"),
}
__all__ = sorted(_WHERE)

__getattr__ = loader(__name__, _WHERE)


if TYPE_CHECKING:
    from .cache import DecodeCache, default_cache_dir
    from .mapped import decode_batch, file_pixels
    from .pixels import as_rgb
    from .reading import (
        DECODE_BUDGET_PIXELS,
        DECODED,
        LIBC,
        ROTATED,
        SKIPPED_COLUMNS,
        UNREADABLE,
        CountsPixels,
        GivenImages,
        ImageDataset,
        ImageFiles,
        PixelBudget,
        Tally,
        as_dataset,
        check_images,
        decode,
        decoded_size,
        describe,
        image_pixels,
        listed,
        load_image,
        opened_image,
        original_size,
        release_freed_memory,
        shrink,
        sort_out,
    )
    from .shards import bound
