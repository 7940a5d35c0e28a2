"""Labels as collections carry them: class indices, class names or nothing, read the same way for every
container (folders' metadata.csv, WebDataset shards, Hugging Face datasets, parquet): one place decides
what a raw label means, and refuses what it cannot mean."""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..config import UNKNOWN
from ..errors import DataError
from .imagelist import ImageList, fold

LABEL_COLUMNS = ("label", "labels", "cls", "class")  # columns / json fields that hold a label


def name_labels(names: Sequence[str], class_names: Sequence[str]) -> tuple[list[int], dict[int, str], bool]:
    """(labels, {label: name} of the unknown ones, whether any name is a listed class) of images named by
    class names (folders, dataset labels): a listed name (ignoring case and '_') gets its index, each other
    name a label of its own from K on."""
    index = {fold(n): i for i, n in enumerate(class_names)}
    unknown: dict[str, int] = {}
    labels = []
    for name in names:
        key = fold(name)
        labels.append(index[key] if key in index else unknown.setdefault(name, len(index) + len(unknown)))
    return labels, {v: k for k, v in unknown.items()}, any(fold(n) in index for n in names)


def label_value(value, where: str) -> int | str | None:
    """A raw label as ueo takes it: a class index (an int, or a whole float: pandas stores an int column with
    a missing value as floats), a class name, or None for no label (None, NaN, an empty text, or a negative
    index such as -1). DataError for anything else (a fraction, a boolean, a list)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip() or None
    if not isinstance(value, bool):
        try:
            number = float(value)  # ints and floats of Python, numpy and torch
        except (TypeError, ValueError):
            number = None
        if number is not None and not isinstance(value, (bytes, bytearray)):
            if math.isnan(number):
                return None
            if number.is_integer():
                return int(number) if number >= 0 else None
    raise DataError(f"{where}: {value!r:.60} is not a label (a class index, a class name, or nothing).")


def labeled_by(items: list, raw: list, dataset_names, class_names, spec, *, names_per_item=None) -> ImageList:
    """An ImageList of ``items`` from their raw labels (see :func:`label_value`): class indices (into the
    names the collection gives its classes, else into ``class_names``), class names, or none.
    ``dataset_names``: the collection's class names (None: it names none); ``names_per_item``: instead, the
    names of each item's own container (shards beside different classnames.txt files), None where it has
    none. Names are matched to ``class_names`` as folder names are (``name_labels``); unlabeled when none
    matches or none is given. DataError when some items have a label and others none: labels are taken for
    every image or for none (a missing one would count as an unknown class)."""
    raw = [label_value(r, f"{spec}: the label of {item}") for item, r in zip(items, raw)]
    given = sum(r is not None for r in raw)
    if not given or not class_names:
        return ImageList(items, [-1] * len(items), labeled=False)
    if given != len(raw):
        first = next(item for item, r in zip(items, raw) if r is None)
        raise DataError(
            f"{spec}: {given} of the {len(raw)} images have a label and {len(raw) - given} have none (e.g. {first}; "
            "a missing or empty value, or a negative index, means no label). ueo takes labels for every image or "
            "for none: complete them, or leave the labels out to read the images unlabeled."
        )
    names_of = names_per_item if names_per_item is not None else [dataset_names] * len(items)
    if all(isinstance(r, int) for r in raw) and not any(names_of):
        return ImageList(items, list(raw), labeled=True)  # indices into the class list
    texts = []
    for item, r, names in zip(items, raw, names_of):
        if not isinstance(r, int):
            texts.append(r)
        elif names is None:  # this container names no class: an index into the class list (K and above: unknown)
            texts.append(class_names[r] if r < len(class_names) else f"{UNKNOWN} class {r}")
        elif r < len(names):
            texts.append(names[r])
        else:
            raise DataError(f"{spec}: label {r} of {item} has no name (the collection names {len(names)} classes).")
    labels, unknown, labeled = name_labels(texts, class_names)
    if not labeled:
        return ImageList(items, [-1] * len(items), labeled=False)
    return ImageList(items, labels, labeled=True, unknown_names=unknown)
