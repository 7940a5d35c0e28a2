"""WebDataset tar shards and CLIP_benchmark roots (``ueo.sources`` says what is read, and how)."""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from .data import ImageList, labeled_by
from .errors import DataError
from .members import LABEL_NAMES, SPLIT, Member, expand, need, state_of

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")


def is_tar(name: str) -> bool:
    return name.startswith("pipe:") or name.lower().endswith((".tar", ".tgz", ".tar.gz"))


def tars_in(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.iterdir() if is_tar(p.name) and p.is_file())


def splits_in(folder: Path) -> dict[str, Path]:
    """The split folders of a CLIP_benchmark-style root (sub-folders that hold shards; only looked for
    beside a classnames.txt, so that a large folder of images is not listed twice)."""
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".") and tars_in(p)}


def shards_of(spec) -> tuple[list[str], Path | None]:
    """(the shards of a tar spec, the classnames.txt that names its class indices, or None)."""
    text = os.fspath(spec)
    path = Path(text)
    folder = None
    if path.is_dir():
        tars = tars_in(path)
        if not tars:
            splits = splits_in(path)
            if SPLIT not in splits:
                raise DataError(
                    f"{path} holds the splits {', '.join(splits)} and no {SPLIT!r}: give one, e.g. {path / next(iter(splits))}."
                )
            tars, folder = tars_in(splits[SPLIT]), splits[SPLIT]
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


def read_shards(spec, class_names, warn) -> ImageList:
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
    images = labeled_by(members, raw, dataset_names, class_names, spec)
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


def tar_member(container: str, name: str) -> Member:
    """A member of a local shard by name (for a path read back from predictions.csv)."""
    with tarfile.open(container, mode="r:") as tar:
        info = tar.getmember(name)
        return Member(container, name, info.offset_data, info.size)
