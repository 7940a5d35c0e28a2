"""Hugging Face datasets: folders written by ``save_to_disk`` and parquet files (``ueo.sources`` says what
is read). Features are read by ``datasets``; parquet row groups by ``pyarrow``."""

from __future__ import annotations

import bisect
import itertools
import json
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..errors import DataError
from .folders import read_text
from .imagelist import ImageList
from .labels import LABEL_COLUMNS, labeled_by
from .members import SPLIT, Member, expand, need, state_of

IMAGE_COLUMNS = ("image", "img", "jpg", "jpeg", "png", "webp")


def parquets_in(folder: Path) -> list[str]:
    """The parquet files of a folder: at its top, or under data/ (the Hugging Face Hub's layout)."""
    return sorted(str(p) for p in [*folder.glob("*.parquet"), *folder.glob("data/**/*.parquet")] if p.is_file())


@dataclass
class Table:
    """A dataset's rows: (container, rows) parts, its image and label columns, the label names (of the
    first part; ``part_names``: of each part, whose ClassLabel may order the names otherwise), the other
    image columns it has, and how to read its labels."""

    parts: list[tuple[str, int]]
    image: str
    label: str | None
    label_names: list[str] | None
    read_labels: Callable[[], list]
    part_names: list[list[str] | None] | None = None
    other_images: tuple[str, ...] = ()


def is_dataset_folder(path: Path) -> bool:
    """A folder written by save_to_disk (a Dataset's state.json, or a DatasetDict's dataset_dict.json)."""
    return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()


def table_of(spec) -> Table:
    """The rows of a save_to_disk folder, or of parquet files (a file, a folder, a glob)."""
    text = os.fspath(spec)
    if Path(text).is_dir() and is_dataset_folder(Path(text)):
        return _disk_table(_dataset_folder(Path(text)))
    files = parquets_in(Path(text)) if Path(text).is_dir() else (expand(text) if not Path(text).is_file() else [text])
    if not files:
        raise DataError(f"{text}: no parquet file matches.")
    return _parquet_table(files, text)


def _dataset_folder(path: Path) -> Path:
    if (path / "dataset_dict.json").is_file():
        splits = json.loads(read_text(path / "dataset_dict.json")).get("splits", [])
        if SPLIT in splits or len(splits) == 1:
            return path / (SPLIT if SPLIT in splits else splits[0])
        raise DataError(f"{path} holds the splits {', '.join(splits)}: give one, e.g. {path / splits[0]}.")
    return path


def _columns(features, names: Sequence[str], where: str) -> tuple[str, str | None, list[str] | None, tuple[str, ...]]:
    """(image column, label column or None, label names or None, the other image columns) of a dataset's
    features. With several image columns the one named like an image (image, img, ...) is read; without
    such a name ueo cannot tell which holds the pictures, and says so."""
    datasets = need("datasets", "hf", "Hugging Face datasets")
    images = [c for c, f in features.items() if isinstance(f, datasets.Image)]
    if not images:
        images = [c for c in names if c.lower() in IMAGE_COLUMNS]
    if not images:
        raise DataError(
            f"{where}: no image column (columns: {', '.join(names)}); ueo reads a column with the datasets Image "
            f"feature, or one of bytes named {', '.join(IMAGE_COLUMNS)}."
        )
    image = images[0]
    if len(images) > 1:
        image = next((c for name in IMAGE_COLUMNS for c in images if c.lower() == name), None)
        if image is None:
            raise DataError(
                f"{where}: {len(images)} image columns ({', '.join(images)}), none named {IMAGE_COLUMNS[0]!r}: ueo cannot "
                "tell which holds the pictures. Keep that one (datasets' select_columns) or rename it 'image'."
            )
    others = tuple(c for c in images if c != image)
    label = next((c for c, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
    if label is not None:
        return image, label, list(features[label].names), others
    label = next((c for c in names if c.lower() in LABEL_COLUMNS), None)
    return image, label, None, others


def _disk_table(folder: Path) -> Table:
    datasets = need("datasets", "hf", "Hugging Face datasets")
    try:
        dataset = datasets.load_from_disk(str(folder))
    except (OSError, ValueError, KeyError) as error:  # FileNotFoundError, a damaged state.json ...
        raise DataError(f"{folder}: not a readable dataset written by save_to_disk ({error}).") from None
    image, label, label_names, others = _columns(dataset.features, dataset.column_names, str(folder))
    return Table(
        [(str(folder), len(dataset))],
        image,
        label,
        label_names,
        lambda: list(dataset[label]) if label else [],
        other_images=others,
    )


def _parquet_table(files: list[str], where: str) -> Table:
    need("datasets", "hf", "Hugging Face datasets")
    import pyarrow.parquet as pq
    from datasets import Features

    if not files:
        raise DataError(f"{where}: no parquet file.")
    parts, schemas = [], []
    for f in files:
        try:
            meta = pq.ParquetFile(f)
        except (OSError, ValueError) as error:  # pyarrow.ArrowInvalid is a ValueError
            raise DataError(f"{f}: not a readable parquet file ({error}).") from None
        parts.append((f, meta.metadata.num_rows))
        schemas.append(meta.schema_arrow)
    features = [Features.from_arrow_schema(schema) for schema in schemas]
    image, label, label_names, others = _columns(features[0], schemas[0].names, files[0])
    for f, schema in zip(files, schemas):
        if image not in schema.names or (label is not None and label not in schema.names):
            raise DataError(f"{f}: its columns ({', '.join(schema.names)}) differ from those of {files[0]}.")
    part_names = [_columns(feature, schema.names, f)[2] for feature, schema, f in zip(features, schemas, files)]

    def labels():
        return [v for f in files for v in pq.read_table(f, columns=[label]).column(0).to_pylist()] if label else []

    return Table(parts, image, label, label_names, labels, part_names=part_names, other_images=others)


def read_table(spec, class_names, warn: Callable[[str], None]) -> ImageList:
    table = table_of(spec)
    if table.other_images:
        warn(
            f"note: {spec}: the images are read from the column {table.image!r} (other image columns: {', '.join(table.other_images)})."
        )
    members, names = [], []
    for part, (container, rows) in enumerate(table.parts):
        state = state_of(container)
        members += [Member(container, f"row {r}", r, 0, state, table.image) for r in range(rows)]
        names += [table.part_names[part] if table.part_names else table.label_names] * rows
    if not members:
        raise DataError(f"{spec}: the dataset has no rows.")
    raw = table.read_labels() if table.label else [None] * len(members)
    return labeled_by(members, raw, None, class_names, spec, names_per_item=names)


_LOCK = threading.Lock()


@lru_cache(maxsize=8)
def _dataset(folder: str, column: str, state: str):
    import datasets

    dataset = datasets.load_from_disk(folder)
    if isinstance(dataset.features[column], datasets.Image):
        dataset = dataset.cast_column(column, datasets.Image(decode=False))
    return dataset


@lru_cache(maxsize=64)
def _group_ends(path: str, state: str) -> list[int]:
    """The row after the last of each row group of a parquet file (read once, not for every row)."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    return list(itertools.accumulate(meta.row_group(g).num_rows for g in range(meta.num_row_groups)))


@lru_cache(maxsize=4)
def _row_group(path: str, group: int, column: str, state: str) -> list:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).read_row_group(group, columns=[column]).column(0).to_pylist()


def _value_bytes(value, where: str) -> bytes:
    """The encoded image of a dataset cell: bytes, or {"bytes", "path"} (the Image feature's storage)."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        if value.get("path") and os.path.isfile(value["path"]):
            return Path(value["path"]).read_bytes()
        raise OSError(f"{where}: the image cell holds no bytes and no readable path")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    raise OSError(f"{where}: the image cell is {type(value).__name__}, not an encoded image")


def read_row(member: Member) -> bytes:
    """The encoded image of a dataset row (a save_to_disk folder, or a parquet file's row group)."""
    if os.path.isdir(member.container):
        with _LOCK:
            dataset = _dataset(member.container, member.column, member.state)
        return _value_bytes(dataset[member.offset][member.column], str(member))
    with _LOCK:
        ends = _group_ends(member.container, member.state)
    group = bisect.bisect_right(ends, member.offset)
    if group == len(ends):
        raise OSError(f"{member}: no such row")
    with _LOCK:
        values = _row_group(member.container, group, member.column, member.state)
    return _value_bytes(values[member.offset - (ends[group - 1] if group else 0)], str(member))
