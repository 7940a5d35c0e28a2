"""WebDataset tar shards and CLIP_benchmark roots (``ueo.sources`` says what is read, and how).

Samples follow WebDataset's rule: a member's key is its name up to the first dot of its last part, the rest
its extension, and a new sample starts whenever the key changes (a key that comes back later in the shard
starts a sample of its own; its members are named "NAME#2", "NAME#3", ... in the outputs). Where WebDataset
stops at an extension repeated within a sample (keys from file stems: 001.jpg, 001.cls, 001.jpg, ...), the
repeated extension starts the next sample. Every member
whose extension ends in a format Pillow reads ("jpg", "png", "001.png", "gif", "tif", ...) is an image;
its label is the sample's ``cls`` (an index), else ``json`` (its label/labels/cls/class field), else
``txt`` (a name), taken from the field with the same middle part as the image's extension ("001.cls" for
"001.png") when there is one. Members of picture formats Pillow cannot read here, and samples without an
image, are skipped with a line each (skipped.csv has them all).
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from ..errors import DataError
from .folders import IMAGE_EXTENSIONS, PICTURE_EXTENSIONS, parse_class_names, why_not_read
from .imagelist import ImageList
from .labels import LABEL_COLUMNS, labeled_by
from .members import SPLIT, Member, expand, need, state_of

LABEL_FIELDS = ("cls", "json", "txt")  # in this order of preference
MAX_WARNINGS = 10  # lines printed about skipped members of one collection (skipped.csv lists every one)


def is_tar(name: str) -> bool:
    return name.startswith("pipe:") or name.lower().endswith((".tar", ".tgz", ".tar.gz"))


def tars_in(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.iterdir() if is_tar(p.name) and p.is_file())


def splits_in(folder: Path) -> dict[str, Path]:
    """The split folders of a CLIP_benchmark-style root (sub-folders that hold shards; only looked for
    beside a classnames.txt, so that a large folder of images is not listed twice)."""
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".") and tars_in(p)}


def _names_beside(folder: Path | None) -> Path | None:
    """The classnames.txt that names the class indices of the shards in ``folder`` (there or one level up)."""
    if folder is None:
        return None
    return next(
        (where / "classnames.txt" for where in (folder, folder.parent) if (where / "classnames.txt").is_file()), None
    )


def shards_of(spec) -> list[tuple[str, Path | None]]:
    """The shards of a tar spec, each with the classnames.txt that names its class indices (or None)."""
    text = os.fspath(spec)
    path = Path(text)
    if path.is_dir():
        tars = tars_in(path)
        folder = path
        if not tars:
            splits = splits_in(path)
            if SPLIT not in splits:
                raise DataError(
                    f"{path} holds the splits {', '.join(splits)} and no {SPLIT!r}: give one, e.g. {path / next(iter(splits))}."
                )
            tars, folder = tars_in(splits[SPLIT]), splits[SPLIT]
        return [(t, _names_beside(folder)) for t in tars]
    if path.is_file():
        return [(text, _names_beside(path.parent))]
    tars = expand(text)
    if not tars:
        raise DataError(f"{text}: no shard matches this pattern.")
    missing = [t for t in tars if not t.startswith("pipe:") and not Path(t).is_file()]
    if missing:
        raise DataError(f"{missing[0]}: no such shard ({len(missing)} of the {len(tars)} named are missing).")
    return [(t, None if t.startswith("pipe:") else _names_beside(Path(t).parent)) for t in tars]


def collection_names(spec) -> list[str] | None:
    """The class names the shards' classnames.txt give (None when there is none); DataError when the shards'
    files name their classes differently (then --classes must say which names are meant)."""
    files = {names for _, names in shards_of(spec) if names is not None}
    lists = {tuple(parse_class_names(str(f))) for f in files}
    if len(lists) > 1:
        shown = ", ".join(sorted(str(f) for f in files)[:3])
        raise DataError(
            f"{spec}: the shards' classnames.txt files ({shown}) differ; give the class list with --classes."
        )
    return list(next(iter(lists))) if lists else None


def _split_name(name: str) -> tuple[str, str]:
    """(sample key, extension) by WebDataset's rule: the key ends at the first dot of the last part."""
    tariterators = need("webdataset.tariterators", "wds", "WebDataset shards")
    key, ext = tariterators.base_plus_ext(name)
    return (key, ext.lower()) if key is not None else (name, "")


def occurrence_name(name: str, seen: dict[str, int]) -> str:
    """The name of a member in ueo's outputs: its name, with "#k" for the k-th member of that name in the shard."""
    seen[name] = seen.get(name, 0) + 1
    return name if seen[name] == 1 else f"{name}#{seen[name]}"


def digest(data: bytes) -> str:
    return "sha1:" + hashlib.sha1(data).hexdigest()


def _open_tar(shard: str):
    """(tar object, whether its members can be read later at their offsets)."""
    if not shard.startswith("pipe:") and shard.lower().endswith(".tar"):
        return tarfile.open(shard, mode="r:"), True
    gopen = need("webdataset", "wds", "WebDataset shards").gopen
    return tarfile.open(fileobj=gopen(shard, "rb"), mode="r|*"), False


def _damage(error: BaseException) -> str:
    return f"the shard is damaged or truncated ({type(error).__name__}: {str(error) or 'end of data'})"


def list_shard(shard: str, problems: list[dict]) -> list[tuple[Member, int | str | float | None]]:
    """(member, raw label) of every image of a shard, in order; skipped.csv rows of what is left out are
    added to ``problems``. A shard that ends early keeps the samples before the last one it was reading
    (which may lack members) and adds one row for the rest."""
    state = state_of(shard)
    samples: list[dict] = []
    seen: dict[str, int] = {}
    try:
        tar, seekable = _open_tar(shard)
        with tar:
            for info in tar:
                if not info.isreg():
                    continue
                name = occurrence_name(info.name, seen)
                key, ext = _split_name(info.name)
                if key.split("/")[-1].startswith("__"):  # WebDataset's metadata members
                    continue
                if not samples or samples[-1]["key"] != key or ext in samples[-1]["exts"]:
                    samples.append({"key": key, "images": [], "fields": {}, "other": [], "exts": set()})
                samples[-1]["exts"].add(ext)
                sample = samples[-1]
                middle, _, kind = ext.rpartition(".")
                if f".{kind}" in IMAGE_EXTENSIONS:
                    stamp = state if seekable else digest(tar.extractfile(info).read())
                    offset = info.offset_data if seekable else -1
                    sample["images"].append((Member(shard, name, offset, info.size, stamp), middle))
                elif kind in LABEL_FIELDS and info.size < 1 << 20 and (middle, kind) not in sample["fields"]:
                    sample["fields"][(middle, kind)] = (name, tar.extractfile(info).read())
                elif f".{kind}" in PICTURE_EXTENSIONS:
                    problems.append(_row(shard, name, f"not read: {why_not_read('.' + kind)}"))
                else:
                    sample["other"].append(name)
    except (tarfile.TarError, OSError, EOFError) as error:
        cut = samples.pop() if samples else None  # the sample being read at the cut may lack members
        where = f" (from the sample {cut['key']!r} on)" if cut else ""
        problems.append(
            _row(shard, "(rest of the shard)", f"{_damage(error)}; {len(samples)} sample(s) before it are read{where}")
        )
    listed = []
    for sample in samples:
        if not sample["images"]:
            names = sample["other"] + [name for name, _ in sample["fields"].values()]
            problems += [_row(shard, name, "no image in its sample (key {!r})".format(sample["key"])) for name in names]
            continue
        for member, middle in sample["images"]:
            listed.append((member, _sample_label(sample["fields"], middle, f"{shard}::{sample['key']}")))
    return listed


def _row(shard: str, key: str, reason: str) -> dict:
    return {"path": shard, "shard": shard, "key": key, "reason": reason}


def read_shards(spec, class_names, warn: Callable[[str], None]) -> ImageList:
    members: list[Member] = []
    raw: list = []
    names: list[list[str] | None] = []
    problems: list[dict] = []
    parsed: dict[Path, list[str]] = {}
    for shard, names_file in shards_of(spec):
        if names_file is not None and names_file not in parsed:
            parsed[names_file] = parse_class_names(str(names_file))
        for member, label in list_shard(shard, problems):
            members.append(member)
            raw.append(label)
            names.append(parsed[names_file] if names_file is not None else None)
    for row in problems[:MAX_WARNINGS]:
        warn(f"warning: skipping {row['shard']}::{row['key']}: {row['reason']}")
    if len(problems) > MAX_WARNINGS:
        warn(f"warning: ... and {len(problems) - MAX_WARNINGS} more member(s) skipped; skipped.csv lists them all.")
    if not members:
        raise DataError(f"{spec}: no image member ({', '.join(IMAGE_EXTENSIONS[:6])}, ...) in its shard(s).")
    images = labeled_by(members, raw, None, class_names, spec, names_per_item=names)
    images.skipped = problems
    return images


def _sample_label(fields: dict, middle: str, where: str) -> int | str | float | None:
    """The raw label of the image with extension ``middle.<format>`` in a sample (``data.label_value``
    reads it): its own field ("001.cls" for "001.png"), else the sample's ("cls"); cls, else json, else txt."""
    for kind in LABEL_FIELDS:
        found = fields.get((middle, kind)) or fields.get(("", kind))
        if found is None:
            continue
        name, data = found
        text = data.decode("utf-8", "replace").strip()
        if kind == "cls":
            try:
                return float(text) if "." in text or "e" in text.lower() else int(text)
            except ValueError:
                raise DataError(f"{where} ({name}): {text!r:.60} is not a class index.") from None
        if kind == "json":
            try:
                record = json.loads(data)
            except ValueError:
                raise DataError(f"{where} ({name}): not valid JSON.") from None
            if isinstance(record, dict):
                field = next((f for f in LABEL_COLUMNS if f in record), None)
                if field is not None:
                    return record[field]
            return None
        return text or None
    return None


def stream(members: Iterable[Member]) -> Iterator[tuple[Member, bytes | None, str | None]]:
    """(member, its bytes or None, why not) for members that only a stream gives, one pass per container.
    A member listed with a digest of its bytes whose bytes now differ is not given ("changed")."""
    by_container: dict[str, dict[str, Member]] = {}
    for m in members:
        by_container.setdefault(m.container, {})[m.name] = m
    for container, wanted in by_container.items():
        seen: dict[str, int] = {}
        try:
            tar, _ = _open_tar(container)
            with tar:
                for info in tar:
                    if not info.isreg():
                        continue
                    member = wanted.pop(occurrence_name(info.name, seen), None)
                    if member is not None:
                        data = tar.extractfile(info).read()
                        if member.state.startswith("sha1:") and digest(data) != member.state:
                            yield (
                                member,
                                None,
                                "its bytes changed since the shard was listed (the stream gives other data)",
                            )
                        else:
                            yield member, data, None
                    if not wanted:
                        break
            why = "not in the shard any more (it changed since it was listed)"
        except (tarfile.TarError, OSError, EOFError) as error:
            why = f"the shard ends early or is damaged ({type(error).__name__}: {str(error) or 'end of data'})"
        for member in wanted.values():
            yield member, None, why


def read_tar_member(member: Member) -> bytes:
    """The bytes of a member of a local uncompressed shard, at its offset (DataError for one that only a
    stream gives)."""
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


def tar_member(container: str, name: str) -> Member | None:
    """A member by its name in ueo's outputs ("NAME", "NAME#2"), for a path read back from predictions.csv:
    at its offset in a local uncompressed shard, else to be streamed (offset -1). None when it is not there."""
    if container.startswith("pipe:") or not container.lower().endswith(".tar"):
        return Member(container, name)
    seen: dict[str, int] = {}
    with tarfile.open(container, mode="r:") as tar:
        for info in tar:
            if info.isreg() and occurrence_name(info.name, seen) == name:
                return Member(container, name, info.offset_data, info.size)
    return None
