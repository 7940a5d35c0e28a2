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
its size, modification and change times, inode and device, and the member's name. A ``pipe:`` stream has
no file to look at: it is taken to give the same samples every time. Local uncompressed shards and
datasets are read at random; a pipe or a compressed shard only as a stream, which the decode cache reads
once (it then needs the cache).
"""

from __future__ import annotations

import glob
import io
import json
import os
import sys
import tarfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .data import IMAGE_EXTENSIONS, ImageList, file_state, name_labels, read_folder, read_list_file, read_text
from .errors import DataError

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
LABEL_NAMES = ("label", "labels", "cls", "class")  # columns / json fields that hold a label
IMAGE_COLUMNS = ("image", "img", "jpg", "jpeg", "png", "webp")
SPLIT = "test"  # the split read from a root with several, as CLIP_benchmark does by default


@dataclass(frozen=True)
class Member:
    """An image inside a container: a tar member (``offset``: where its bytes start, -1 when the container
    is read as a stream) or a dataset row (``offset``: the row, ``column``: the image column). ``state``:
    the container's ``data.file_state`` when it was listed."""

    container: str
    name: str
    offset: int = -1
    size: int = 0
    state: str = ""
    column: str = ""

    def __str__(self) -> str:
        return f"{self.container}::{self.name}"

    def identity(self) -> bytes:
        """The container's real path (a pipe: its command) and state, and the member's name."""
        where = self.container if self.container.startswith("pipe:") else os.path.realpath(self.container)
        return os.fsencode(where) + f"\0{self.state}\0{self.name}".encode()

    @property
    def streamed(self) -> bool:
        """Readable only by streaming its container (a pipe, a compressed shard)."""
        return not self.column and self.offset < 0


def need(module: str, extra: str, what: str):
    """Import an optional package, or DataError naming the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise DataError(f"Reading {what} needs the {module} package: pip install 'ueo[{extra}]'.") from None


# -- what a spec is ----------------------------------------------------------------------------------------


def kind(spec) -> str | None:
    """ "tar", "dataset" (save_to_disk), "parquet", or None (image files: a folder or a list file)."""
    text = os.fspath(spec)
    if text.startswith("pipe:"):
        return "tar"
    path = Path(text)
    if path.is_file():
        if _is_tar(path.name):
            return "tar"
        return "parquet" if path.suffix.lower() == ".parquet" else None
    if path.is_dir():
        if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
            return "dataset"
        if _tars(path) or ((path / "classnames.txt").is_file() and _splits(path)):
            return "tar"
        if _parquets(path):
            return "parquet"
        return None
    if any(c in text for c in "*?[{") or "::" in text:
        if text.lower().endswith(".parquet"):
            return "parquet"
        if _is_tar(text):  # (a pattern that matches nothing: shards_of says so)
            return "tar"
        names = expand(text)
        if names and all(_is_tar(n) for n in names):
            return "tar"
        if names and all(n.lower().endswith(".parquet") for n in names):
            return "parquet"
    return None


def _is_tar(name: str) -> bool:
    return name.startswith("pipe:") or name.lower().endswith((".tar", ".tgz", ".tar.gz"))


def _tars(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.iterdir() if _is_tar(p.name) and p.is_file())


def _splits(folder: Path) -> dict[str, Path]:
    """The split folders of a CLIP_benchmark-style root (sub-folders that hold shards; only looked for
    beside a classnames.txt, so that a large folder of images is not listed twice)."""
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".") and _tars(p)}


def _parquets(folder: Path) -> list[str]:
    """The parquet files of a folder: at its top, or under data/ (the Hugging Face Hub's layout)."""
    return sorted(str(p) for p in [*folder.glob("*.parquet"), *folder.glob("data/**/*.parquet")] if p.is_file())


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


def shards_of(spec) -> tuple[list[str], Path | None]:
    """(the shards of a tar spec, the classnames.txt that names its class indices, or None)."""
    text = os.fspath(spec)
    path = Path(text)
    folder = None
    if path.is_dir():
        tars = _tars(path)
        if not tars:
            splits = _splits(path)
            if SPLIT not in splits:
                raise DataError(
                    f"{path} holds the splits {', '.join(splits)} and no {SPLIT!r}: give one, e.g. {path / next(iter(splits))}."
                )
            tars, folder = _tars(splits[SPLIT]), splits[SPLIT]
        else:
            folder = path
    elif path.is_file():
        tars, folder = [text], path.parent
    else:
        tars = expand(text)
        local = [Path(t) for t in tars if not t.startswith("pipe:")]
        folder = local[0].parent if local else None
        if not tars:
            raise DataError(f"{text}: no shard matches this pattern.")
        missing = [t for t in local if not t.is_file()]
        if missing:
            raise DataError(f"{missing[0]}: no such shard ({len(missing)} of the {len(tars)} named are missing).")
    names = None
    if folder is not None:
        for where in (folder, folder.parent):
            if (where / "classnames.txt").is_file():
                names = where / "classnames.txt"
                break
    return tars, names


def class_names_of(spec) -> list[str] | None:
    """The class names a container collection carries (classnames.txt, a ClassLabel's names), or None."""
    from .data import parse_class_names

    what = kind(spec)
    if what == "tar":
        _, names = shards_of(spec)
        return parse_class_names(str(names)) if names is not None else None
    if what in ("dataset", "parquet"):
        table = _table_of(spec)
        return list(table.label_names) if table.label_names else None
    return None


def state_of(container: str) -> str:
    """What says a container is unchanged: ``data.file_state`` of its file (of a dataset folder: of its
    arrow files and state.json); '' for a pipe: stream (taken as unchanged). OSError when it is missing."""
    if container.startswith("pipe:"):
        return ""
    path = Path(container)
    files = sorted(path.glob("*.arrow")) + [path / "state.json"] if path.is_dir() else [path]
    return "|".join(file_state(os.stat(f)) for f in files)


# -- listing ---------------------------------------------------------------------------------------------------


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def read_source(spec, class_names: Sequence[str] | None, warn: Callable[[str], None] = _stderr) -> ImageList:
    """The images of a container collection (see the module's docstring), labeled when it carries labels."""
    what = kind(spec)
    if what == "tar":
        return _read_shards(spec, class_names, warn)
    if what in ("dataset", "parquet"):
        return _read_table(spec, class_names)
    raise DataError(f"{spec}: not a WebDataset shard or a Hugging Face dataset.")


def _split_name(name: str) -> tuple[str, str]:
    """(sample key, extension) by WebDataset's rule: the key ends at the first dot of the last part."""
    tariterators = need("webdataset.tariterators", "wds", "WebDataset shards")
    key, ext = tariterators.base_plus_ext(name)
    return (key, ext.lower()) if key is not None else (name, "")


def _open_tar(shard: str):
    """(tar object, whether its members can be read later at their offsets)."""
    if not shard.startswith("pipe:") and shard.lower().endswith(".tar"):
        return tarfile.open(shard, mode="r:"), True
    gopen = need("webdataset", "wds", "WebDataset shards").gopen
    return tarfile.open(fileobj=gopen(shard, "rb"), mode="r|*"), False


def _read_shards(spec, class_names, warn) -> ImageList:
    shards, names_file = shards_of(spec)
    dataset_names = None
    if names_file is not None:
        from .data import parse_class_names

        dataset_names = parse_class_names(str(names_file))
    members, raw, problems = [], [], []
    for shard in shards:
        state = state_of(shard)
        samples: dict[str, dict] = {}
        order: list[str] = []
        try:
            tar, seekable = _open_tar(shard)
            with tar:
                for info in tar:
                    if not info.isreg():
                        continue
                    key, ext = _split_name(info.name)
                    if key.split("/")[-1].startswith("__"):  # WebDataset's metadata members
                        continue
                    if key not in samples:
                        samples[key] = {}
                        order.append(key)
                    if ext in IMAGE_KEYS and "image" not in samples[key]:
                        samples[key]["image"] = (info.name, info.offset_data if seekable else -1, info.size)
                    elif ext in ("cls", "json", "txt") and info.size < 1 << 20:
                        samples[key][ext] = tar.extractfile(info).read()
        except (tarfile.TarError, OSError, EOFError) as error:
            reason = f"the shard is damaged or truncated ({type(error).__name__}: {str(error) or 'end of data'})"
            warn(f"warning: {shard}: {reason}; the {len(order)} sample(s) before it are read, the rest is skipped.")
            problems.append({"path": shard, "shard": shard, "key": "(rest of the shard)", "reason": reason})
        for key in order:
            sample = samples[key]
            if "image" not in sample:
                continue
            name, offset, size = sample["image"]
            members.append(Member(shard, name, offset, size, state))
            raw.append(_sample_label(sample, f"{shard}::{key}"))
    if not members:
        raise DataError(f"{spec}: no image member ({', '.join(IMAGE_KEYS)}) in {len(shards)} shard(s).")
    images = _labeled(members, raw, dataset_names, class_names, spec)
    images.skipped = problems
    return images


def _sample_label(sample: dict, where: str) -> int | str | None:
    if "cls" in sample:
        text = sample["cls"].decode("utf-8", "replace").strip()
        try:
            return int(text)
        except ValueError:
            raise DataError(f"{where}.cls: {text!r:.60} is not a class index.") from None
    if "json" in sample:
        try:
            record = json.loads(sample["json"])
        except ValueError:
            raise DataError(f"{where}.json: not valid JSON.") from None
        if isinstance(record, dict):
            for field in LABEL_NAMES:
                if isinstance(record.get(field), (int, str)) and not isinstance(record.get(field), bool):
                    return record[field]
        return None
    if "txt" in sample:
        return sample["txt"].decode("utf-8", "replace").strip() or None
    return None


def _labeled(members: list, raw: list, dataset_names, class_names, spec) -> ImageList:
    """An ImageList of ``members`` from their raw labels (indices, names or None)."""
    given = [r for r in raw if r is not None]
    if not given or not class_names:
        return ImageList(members, [-1] * len(members), labeled=False)
    if len(given) != len(raw):
        raise DataError(f"{spec}: {len(given)} sample(s) have a label and {len(raw) - len(given)} do not.")
    if all(isinstance(r, int) for r in raw) and dataset_names is None:
        return ImageList(members, [r if r >= 0 else -1 for r in raw], labeled=True)
    texts = []
    for r in raw:
        if isinstance(r, int):
            if not 0 <= r < len(dataset_names or []):
                raise DataError(
                    f"{spec}: label {r} has no name (the dataset names {len(dataset_names or [])} classes)."
                )
            texts.append(dataset_names[r])
        else:
            texts.append(r)
    labels, unknown, labeled = name_labels(texts, class_names)
    if not labeled:
        return ImageList(members, [-1] * len(members), labeled=False)
    return ImageList(members, labels, labeled=True, unknown_names=unknown)


def read_images(
    spec: str | os.PathLike, class_names: Sequence[str] | None = None, root: str | os.PathLike | None = None
) -> ImageList:
    """A folder, a list file (``ueo.data``), WebDataset shards or a Hugging Face dataset (this module)."""
    if kind(spec) is not None:
        return read_source(spec, class_names)
    spec = Path(spec)
    if spec.is_dir():
        return read_folder(spec, class_names)
    if spec.is_file():
        if spec.suffix.lower() in IMAGE_EXTENSIONS:
            raise DataError(f"{spec} is an image: give the folder that holds the images, or a list file.")
        return read_list_file(spec, root)
    raise DataError(f"{spec}: no such folder or list file.")


# -- Hugging Face datasets --------------------------------------------------------------------------------------


@dataclass
class Table:
    """A dataset's rows: (container, rows) parts, its image and label columns and the label names."""

    parts: list[tuple[str, int]]
    image: str
    label: str | None
    label_names: list[str] | None
    read_labels: Callable[[], list]


def _table_of(spec) -> Table:
    text = os.fspath(spec)
    if kind(text) == "dataset":
        return _disk_table(_dataset_folder(Path(text)))
    files = _parquets(Path(text)) if Path(text).is_dir() else (expand(text) if not Path(text).is_file() else [text])
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


def _columns(features, names: Sequence[str], where: str) -> tuple[str, str | None, list[str] | None]:
    """(image column, label column or None, label names or None) of a dataset's features."""
    datasets = need("datasets", "hf", "Hugging Face datasets")
    image = next((c for c, f in features.items() if isinstance(f, datasets.Image)), None)
    if image is None:
        image = next((c for c in names if c.lower() in IMAGE_COLUMNS), None)
    if image is None:
        raise DataError(
            f"{where}: no image column (columns: {', '.join(names)}); ueo reads a column with the datasets Image "
            f"feature, or one of bytes named {', '.join(IMAGE_COLUMNS)}."
        )
    label = next((c for c, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
    if label is not None:
        return image, label, list(features[label].names)
    label = next((c for c in names if c.lower() in LABEL_NAMES), None)
    return image, label, None


def _disk_table(folder: Path) -> Table:
    datasets = need("datasets", "hf", "Hugging Face datasets")
    try:
        dataset = datasets.load_from_disk(str(folder))
    except (OSError, ValueError, KeyError) as error:  # FileNotFoundError, a damaged state.json ...
        raise DataError(f"{folder}: not a readable dataset written by save_to_disk ({error}).") from None
    image, label, label_names = _columns(dataset.features, dataset.column_names, str(folder))
    return Table(
        [(str(folder), len(dataset))], image, label, label_names, lambda: list(dataset[label]) if label else []
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
    features = Features.from_arrow_schema(schemas[0])
    image, label, label_names = _columns(features, schemas[0].names, files[0])
    for f, schema in zip(files, schemas):
        if image not in schema.names or (label is not None and label not in schema.names):
            raise DataError(f"{f}: its columns ({', '.join(schema.names)}) differ from those of {files[0]}.")

    def labels():
        return [v for f in files for v in pq.read_table(f, columns=[label]).column(0).to_pylist()] if label else []

    return Table(parts, image, label, label_names, labels)


def _read_table(spec, class_names) -> ImageList:
    table = _table_of(spec)
    members = []
    for container, rows in table.parts:
        state = state_of(container)
        members += [Member(container, f"row {r}", r, 0, state, table.image) for r in range(rows)]
    if not members:
        raise DataError(f"{spec}: the dataset has no rows.")
    raw = table.read_labels() if table.label else [None] * len(members)
    return _labeled(members, raw, table.label_names, class_names, spec)


# -- reading -------------------------------------------------------------------------------------------------


_LOCK = threading.Lock()


@lru_cache(maxsize=8)
def _dataset(folder: str, column: str, state: str):
    import datasets

    dataset = datasets.load_from_disk(folder)
    if isinstance(dataset.features[column], datasets.Image):
        dataset = dataset.cast_column(column, datasets.Image(decode=False))
    return dataset


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


def read_member(member: Member) -> bytes:
    """The encoded bytes of a member, read at random (DataError for one that only a stream gives)."""
    if member.column:
        if os.path.isdir(member.container):
            with _LOCK:
                dataset = _dataset(member.container, member.column, member.state)
            return _value_bytes(dataset[member.offset][member.column], str(member))
        import pyarrow.parquet as pq

        meta = pq.ParquetFile(member.container).metadata
        row = member.offset
        for group in range(meta.num_row_groups):
            rows = meta.row_group(group).num_rows
            if row < rows:
                with _LOCK:
                    values = _row_group(member.container, group, member.column, member.state)
                return _value_bytes(values[row], str(member))
            row -= rows
        raise OSError(f"{member}: no such row")
    if member.streamed:
        raise DataError(
            f"{member.container} is read as a stream (a pipe or a compressed shard): its images need the decode "
            "cache (drop --no-cache / fast=False)."
        )
    with open(member.container, "rb") as f:
        f.seek(member.offset)
        data = f.read(member.size)
    if len(data) != member.size:
        raise OSError(f"{member}: the shard ends inside this member (truncated)")
    return data


def opened(item) -> Path | io.BytesIO:
    """What PIL can open for an image: its file, or its bytes."""
    return io.BytesIO(read_member(item)) if isinstance(item, Member) else Path(item)


def stream(members: Iterable[Member]) -> Iterator[tuple[Member, bytes | None, str | None]]:
    """(member, its bytes or None, why not) for members that only a stream gives, one pass per container."""
    by_container: dict[str, dict[str, Member]] = {}
    for m in members:
        by_container.setdefault(m.container, {})[m.name] = m
    for container, wanted in by_container.items():
        try:
            tar, _ = _open_tar(container)
            with tar:
                for info in tar:
                    member = wanted.pop(info.name, None)
                    if member is not None and info.isreg():
                        yield member, tar.extractfile(info).read(), None
                    if not wanted:
                        break
            why = "not in the shard any more (it changed since it was listed)"
        except (tarfile.TarError, OSError, EOFError) as error:
            why = f"the shard ends early or is damaged ({type(error).__name__}: {str(error) or 'end of data'})"
        for member in wanted.values():
            yield member, None, why


def where(item) -> dict[str, str]:
    """The shard and key columns of skipped.csv for an image ('' for a file)."""
    return {"shard": item.container, "key": item.name} if isinstance(item, Member) else {"shard": "", "key": ""}


def resolve(text: str):
    """The image a text from predictions.csv names: a file, or CONTAINER::NAME (None when neither)."""
    if os.path.isfile(text) or "::" not in text:
        return Path(text)
    container, name = text.rsplit("::", 1)
    if name.startswith("row ") and name[4:].isdigit() and kind(container) in ("dataset", "parquet"):
        table = _table_of(container)
        return Member(container, name, int(name[4:]), 0, "", table.image)
    if container.lower().endswith(".tar") and os.path.isfile(container):
        with tarfile.open(container, mode="r:") as tar:
            info = tar.getmember(name)
            return Member(container, name, info.offset_data, info.size)
    return None
