"""Collections kept as containers: WebDataset tar shards and Hugging Face datasets (files: ``ueo.data``).

What is read
  * WebDataset shards: a ``.tar`` file, a folder of them, a glob (``shards/*.tar``), a brace pattern
    (``shards/{0000..0099}.tar``, several joined by ``::``) or a ``pipe:`` command (``pipe:cat x.tar``).
    Members are grouped into samples by WebDataset's rule (the name up to the first dot of its last part
    is the sample's key, the rest its extension). The image is the first of jpg, jpeg, png, webp; the
    label comes from ``cls`` (a class index), else ``json`` (its "label" or "cls" field), else ``txt`` (a
    class name).
  * CLIP_benchmark roots: a folder with ``classnames.txt`` and one folder of shards per split; the
    ``test`` split is read unless a split's folder is given. ``classnames.txt`` (beside the shards or one
    level up) names the class indices, and serves as the class list when none is given.
  * Hugging Face datasets: a folder written by ``save_to_disk`` (a DatasetDict: its ``test`` split, or
    its only one; give ``FOLDER/SPLIT`` for another), or parquet files (a file, a folder, a glob). The
    image column is the first with the ``Image`` feature (else one named image/img/jpg/png of bytes); the
    label column the first ``ClassLabel`` (its names name the indices), else one named label/labels/cls/class.
  * (An ``imagefolder`` with ``metadata.csv`` holds image files: ``ueo.data`` reads it.)

Labels that are names (classnames.txt, ClassLabel names, txt) are matched to the class list as folder
names are (ignoring case and '_'); a name that is not listed is an unknown class. Integer labels without
names are class indices (>= K: unknown).

An image inside a container is a ``Member``: the container, the member's name ("000123.jpg", or "row 17"),
and where to read it. Its identity (for the decode cache and for resuming) is the container's real path,
its size, modification and change times, inode and device, and the member's name; a member read as a stream (a ``pipe:``
command, a compressed shard) is known by a digest of its bytes instead, read while listing: a stream that
gives other bytes gives other images. Local uncompressed shards and
datasets are read at random; a pipe or a compressed shard only as a stream, which the decode cache reads
once (it then needs the cache).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

from ..errors import DataError
from .folders import PICTURE_EXTENSIONS, read_folder, read_list_file
from .hfdata import is_dataset_folder, parquets_in, read_row, read_table, table_of
from .imagelist import ImageList, stderr
from .members import Member, expand, state_of
from .tarshards import collection_names, is_tar, read_shards, read_tar_member, splits_in, tar_member, tars_in


def kind(spec) -> str | None:
    """ "tar", "dataset" (save_to_disk), "parquet", or None (image files: a folder or a list file)."""
    text = os.fspath(spec)
    if text.startswith("pipe:"):
        return "tar"
    path = Path(text)
    if path.is_file():
        if is_tar(path.name):
            return "tar"
        return "parquet" if path.suffix.lower() == ".parquet" else None
    if path.is_dir():
        if is_dataset_folder(path):
            return "dataset"
        if tars_in(path) or ((path / "classnames.txt").is_file() and splits_in(path)):
            return "tar"
        if parquets_in(path):
            return "parquet"
        return None
    if any(c in text for c in "*?[{") or "::" in text:
        if text.lower().endswith(".parquet"):
            return "parquet"
        if is_tar(text):  # (a pattern that matches nothing: shards_of says so)
            return "tar"
        names = expand(text)
        if names and all(is_tar(n) for n in names):
            return "tar"
        if names and all(n.lower().endswith(".parquet") for n in names):
            return "parquet"
    return None


def class_names_of(spec) -> list[str] | None:
    """The class names a container collection carries (classnames.txt, a ClassLabel's names), or None;
    DataError when its parts name their classes differently."""
    what = kind(spec)
    if what == "tar":
        return collection_names(spec)
    if what in ("dataset", "parquet"):
        table = table_of(spec)
        lists = {tuple(n) for n in (table.part_names or [table.label_names]) if n}
        if len(lists) > 1:
            raise DataError(f"{spec}: its files name their classes differently; give the class list with --classes.")
        return list(next(iter(lists))) if lists else None
    return None


def read_source(spec, class_names: Sequence[str] | None, warn: Callable[[str], None] = stderr) -> ImageList:
    """The images of a container collection (see the module's docstring), labeled when it carries labels."""
    what = kind(spec)
    if what == "tar":
        return read_shards(spec, class_names, warn)
    if what in ("dataset", "parquet"):
        return read_table(spec, class_names, warn)
    raise DataError(f"{spec}: not a WebDataset shard or a Hugging Face dataset.")


def read_images(
    spec: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    root: str | os.PathLike | None = None,
    *,
    warn: Callable[[str], None] = stderr,
) -> ImageList:
    """A folder, a list file (``ueo.data``), WebDataset shards or a Hugging Face dataset (this module),
    each image once (:func:`once_each`). ``warn``: where notes and warnings go (default: stderr)."""
    if kind(spec) is not None:
        return once_each(read_source(spec, class_names, warn), warn)
    spec = Path(spec)
    if spec.is_dir():
        return once_each(read_folder(spec, class_names, warn=warn), warn)
    if spec.is_file():
        if spec.suffix.lower() in PICTURE_EXTENSIONS:
            raise DataError(f"{spec} is an image: give the folder that holds the images, or a list file.")
        return once_each(read_list_file(spec, root), warn)
    raise DataError(f"{spec}: no such folder or list file.")


def same_image(item) -> tuple:
    """What tells one image from another whatever way it was reached: a file's device and inode (a link, a
    hard link, another spelling of its path), or a member's container (its real path) and place in it."""
    if isinstance(item, Member):
        where = item.container if item.container.startswith("pipe:") else os.path.realpath(item.container)
        return (where, item.column, item.name)
    try:
        stat = os.stat(item)
        return (stat.st_dev, stat.st_ino)
    except OSError:
        return (os.path.realpath(item),)


def once_each(images: ImageList, warn: Callable[[str], None] = stderr) -> ImageList:
    """The images with each one once: an image reached twice (a file and a link to it, a line repeated in a
    list, a shard or a dataset named twice) is read once, with a warning; DataError when its two ways give it
    two labels."""
    first: dict[tuple, int] = {}
    keep = []
    for i, item in enumerate(images.paths):
        j = first.setdefault(same_image(item), i)
        if j == i:
            keep.append(i)
        elif images.labeled and images.labels[i] != images.labels[j]:
            raise DataError(
                f"{item} and {images.paths[j]} are the same image with two labels "
                f"({images.labels[i]} and {images.labels[j]}): keep one of them."
            )
    if len(keep) == len(images):
        return images
    kept = set(keep)
    again = next(i for i in range(len(images)) if i not in kept)
    warn(
        f"warning: {len(images) - len(keep)} image(s) are reached twice (e.g. {images.paths[again]} is "
        f"{images.paths[first[same_image(images.paths[again])]]}): each is read once."
    )
    return images.subset(keep)


def read_member(member: Member) -> bytes:
    """The encoded bytes of a member, read at random (DataError for one that only a stream gives)."""
    return read_row(member) if member.column else read_tar_member(member)


def opened(item) -> Path | io.BytesIO:
    """What PIL can open for an image: its file, or its bytes."""
    return io.BytesIO(read_member(item)) if isinstance(item, Member) else Path(item)


def where(item) -> dict[str, str]:
    """The shard and key columns of skipped.csv for an image ('' for a file)."""
    return {"shard": item.container, "key": item.name} if isinstance(item, Member) else {"shard": "", "key": ""}


@lru_cache(maxsize=8)
def _image_column(container: str, state: str) -> str:
    """The image column of a dataset in this ``state`` (looked up once per page, not once per thumbnail)."""
    return table_of(container).image


def resolve(text: str):
    """The image a text from predictions.csv names: a file, or CONTAINER::NAME (None when neither). A
    member of a local uncompressed shard is read at its offset; one of a pipe or a compressed shard is
    given with offset -1 (``tarshards.stream`` reads it)."""
    if os.path.isfile(text) or "::" not in text:
        return Path(text)
    container, name = text.rsplit("::", 1)
    if name.startswith("row ") and name[4:].isdigit() and kind(container) in ("dataset", "parquet"):
        return Member(container, name, int(name[4:]), 0, "", _image_column(container, state_of(container)))
    if is_tar(container) and (container.startswith("pipe:") or os.path.isfile(container)):
        return tar_member(container, name)
    return None
