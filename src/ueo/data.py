"""Image collections on disk: folders, list files, class names (reading the pixels: ``ueo.images``).

Conventions
  * A list file has one image a line, "relative/path label" (the official format); the path is relative
    to ``root`` (or absolute, inside ``root``) and may contain spaces (the label is the last field). A
    line with a path only is unlabeled.
  * A folder is scanned recursively for jpg, jpeg, png, bmp, webp, tif, tiff (case-insensitive), sorted,
    following symbolic links (each real folder once). When its first-level sub-folders are named after
    classes, they give the labels: a sub-folder that matches a known class name gets that class's index,
    any other sub-folder is an unknown class (label >= K). Matching is case-insensitive and treats '_' and
    ' ' alike.
  * Labels 0..K-1 are known classes; any other label is unknown; -1 means unlabeled.
  * Text files (class lists, list files) are UTF-8; a byte-order mark is ignored.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DataError
from .thresholds import UNKNOWN

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def fold(name: str) -> str:
    """Case-insensitive, '_'/' ' tolerant key of a class or folder name."""
    return " ".join(name.replace("_", " ").split()).lower()


def read_text(path: Path, what: str = "") -> str:
    """A UTF-8 text file (a byte-order mark is dropped); DataError for other encodings."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        kind = "an image, not a text file" if Path(path).suffix.lower() in IMAGE_EXTENSIONS else "not UTF-8 text"
        raise DataError(f"{path}: {kind} ({error.reason} at byte {error.start}){what}.") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a folder, not a text file.") from None


def _looks_like_a_path(spec: str) -> bool:
    return os.sep in spec or "/" in spec or bool(re.search(r"\.[A-Za-z][A-Za-z0-9]{0,4}$", spec.strip()))


def parse_class_names(spec: str | Sequence[str]) -> list[str]:
    """Class names from a file (one a line), a comma-separated text, or a list of names; refuses
    duplicates (ignoring case and '_') and blanks. A text that looks like a path must name a file."""
    if isinstance(spec, (list, tuple)):
        if not all(isinstance(n, str) for n in spec):
            raise DataError(f"class names must be texts, got {list(spec)!r}.")
        names, where = [n.strip() for n in spec], [f"item {i + 1}" for i in range(len(spec))]
        if any(not n for n in names):
            raise DataError(f"The class list {list(spec)!r} has an empty name.")
        return _unique(names, where)
    if not isinstance(spec, str):
        raise DataError(f"class names must be a file, a,b,c or a list of names, got {spec!r}.")
    path = Path(spec)
    if path.is_file():
        # lines starting with '#' are comments (suggested_classes.txt says what it changed in them)
        lines = [(n + 1, line.strip()) for n, line in enumerate(read_text(path).splitlines())]
        lines = [(n, line) for n, line in lines if not line.startswith("#")]
        while lines and not lines[-1][1]:  # trailing blank lines are harmless
            lines.pop()
        blank = [n for n, line in lines if not line]
        if blank:  # a blank line inside would shift every later class index
            raise DataError(f"{spec}:{blank[0]}: empty line in the class list (one name a line, in label order).")
        names, where = [line for _, line in lines], [f"{spec}:{n}" for n, _ in lines]
    elif "," in spec or (spec.strip() and not _looks_like_a_path(spec)):
        names = [n.strip() for n in spec.split(",")]
        where = [f"item {i + 1} of {spec!r}" for i in range(len(names))]
        if any(not n for n in names):
            raise DataError(f"The class list {spec!r} has an empty name.")
    else:
        raise DataError(
            f"{spec!r}: no such file (give a file with one class name a line, or names separated by commas)."
        )
    if not names:
        raise DataError(f"{spec}: no class names.")
    return _unique(names, where)


def check_class_names(names: Sequence[str]) -> list[str]:
    """The class names, refused when one is blank, duplicates another (ignoring case and '_') or is the
    rejection label 'unknown'."""
    if any(not isinstance(n, str) or not n.strip() for n in names):
        raise DataError(f"The class list {list(names)!r:.200} has an empty name (or one that is not a text).")
    return _unique(list(names), [f"class {i + 1}" for i in range(len(names))])


def _unique(names: list[str], where: list[str]) -> list[str]:
    seen: dict[str, str] = {}
    for name, loc in zip(names, where):
        key = fold(name)
        if key == fold(UNKNOWN):
            raise DataError(
                f"{loc}: a class cannot be called {name!r}: {UNKNOWN!r} is what ueo calls an image of no listed "
                "class (in predictions.csv, the report and the confusion matrix); rename it, e.g. 'unknown object'."
            )
        if key in seen:
            raise DataError(f"{loc}: class {name!r} duplicates {seen[key]} (names are compared ignoring case and '_').")
        seen[key] = f"{name!r} ({loc})"
    return names


@dataclass
class ImageList:
    """Paths (absolute) with integer labels; ``labeled`` tells whether the labels are real."""

    paths: list  # Path of an image file, or ``ueo.members.Member`` of an image inside a container
    labels: list[int]
    labeled: bool
    unknown_names: dict[int, str] = field(default_factory=dict)  # label -> folder name, for unknown folders
    skipped: list[dict] = field(default_factory=list)  # what listing found unreadable (skipped.csv rows)

    def __len__(self):
        return len(self.paths)

    def subset(self, keep: Sequence[int]) -> ImageList:
        keep = list(keep)
        return ImageList(
            [self.paths[i] for i in keep],
            [self.labels[i] for i in keep],
            self.labeled,
            dict(self.unknown_names),
            list(self.skipped),
        )


def read_list_file(
    path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    num_classes: int | None = None,
    check_files: bool = True,
) -> ImageList:
    """Parse a list file ("relative/path label" per line). ``root`` defaults to the list file's folder.

    num_classes: when given, labels must lie in [0, num_classes) (or be -1).
    Raises DataError naming the file and line for malformed lines, bad labels, paths outside the root
    and missing files.
    """
    path = Path(path)
    root = Path(root) if root is not None else path.parent
    if not path.exists():
        raise DataError(f"List file {path} does not exist.")
    lines = read_text(path, " (a list file has one 'path label' a line)").splitlines()
    absolute_root = os.path.abspath(root)
    paths, labels, labeled = [], [], None
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) == 2 and _is_int(parts[1]):
            relative, label = parts[0], int(parts[1])
            has_label = True
        else:
            relative, label, has_label = line, -1, False
        if labeled is None:
            labeled = has_label
        elif labeled != has_label:
            raise DataError(f"{path}:{number}: some lines have a label and others do not: {line!r}")
        if label < -1 or (num_classes is not None and label >= num_classes):
            allowed = f"0..{num_classes - 1}" if num_classes is not None else ">= 0"
            raise DataError(f"{path}:{number}: label {label} is out of range ({allowed}, or -1): {line!r}")
        full = Path(os.path.normpath(relative if os.path.isabs(relative) else root / relative))
        if os.path.commonpath([absolute_root, os.path.abspath(full)]) != absolute_root:
            raise DataError(f"{path}:{number}: path {relative!r} escapes the root folder {root}.")
        if check_files and not full.is_file():
            raise DataError(f"{path}:{number}: {_missing(full, root, relative)}")
        paths.append(full)
        labels.append(label)
    if not paths:
        raise DataError(f"List file {path} has no image lines.")
    return ImageList(paths, labels, bool(labeled))


def _missing(full: Path, root: Path, relative: str) -> str:
    """Why a listed file is not there: a label that is not a number, or extra fields, read as part of the path."""
    words = relative.split()
    for cut in range(len(words) - 1, 0, -1):  # the longest start of the line that names a file
        head = " ".join(words[:cut])
        if (root / head).is_file() or (os.path.isabs(head) and os.path.isfile(head)):
            rest = words[cut:]
            if len(rest) == 1:
                return f"the label {rest[0]!r} is not a whole number (labels are class indices 0..K-1, or -1)."
            return f"after the path {head!r} come {len(rest)} fields ({' '.join(rest)!r}); a line is 'path label'."
    return f"file not found: {full}"


def _is_int(text: str) -> bool:
    try:
        int(text)
        return True
    except ValueError:
        return False


def scan_folder(folder: str | os.PathLike) -> list[Path]:
    """Every image file under ``folder`` (recursive, following links, each real folder once; sorted)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder.")
    found, visited = [], set()
    for current, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(current)
        if real in visited:  # a link back to a folder already seen: a loop or a duplicate
            dirs[:] = []
            continue
        visited.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [
            Path(current) / f for f in files if Path(f).suffix.lower() in IMAGE_EXTENSIONS and not f.startswith(".")
        ]
    found = sorted(p for p in found if p.is_file())
    if not found:
        raise DataError(f"No image ({', '.join(IMAGE_EXTENSIONS)}) found under {folder}.")
    return found


def read_folder(folder: str | os.PathLike, class_names: Sequence[str] | None = None) -> ImageList:
    """Images under ``folder``; labeled by first-level sub-folder when any sub-folder matches a class name."""
    folder = Path(folder)
    if (folder / METADATA).is_file():
        return read_metadata(folder, class_names)
    paths = scan_folder(folder)
    index = {fold(n): i for i, n in enumerate(class_names or [])}
    tops = [p.relative_to(folder).parts[0] if len(p.relative_to(folder).parts) > 1 else None for p in paths]
    if not index or not any(t is not None and fold(t) in index for t in tops):
        return ImageList(paths, [-1] * len(paths), labeled=False)
    loose = [p for p, top in zip(paths, tops) if top is None]
    if loose:
        raise DataError(
            f"{folder} has class folders, but {len(loose)} image(s) lie at its top level, outside any class "
            f"folder (e.g. {loose[0].name}): move them into their class folder, or into a folder named after "
            "what they are (a folder that matches no class name is an unknown class)."
        )
    labels, unknown, _ = name_labels([t for t in tops if t is not None], class_names or [])  # (no loose image)
    return ImageList(paths, labels, labeled=True, unknown_names=unknown)


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


METADATA = "metadata.csv"  # Hugging Face's imagefolder: a file_name column and the labels
LABEL_COLUMNS = ("label", "labels", "cls", "class")


def labeled_by(items: list, raw: list, dataset_names, class_names, spec) -> ImageList:
    """An ImageList of ``items`` from their raw labels: class indices (into ``dataset_names`` when the
    collection names its classes, else into ``class_names``), class names, or None for no label. Names
    are matched to ``class_names`` as folder names are (``name_labels``); unlabeled when none matches."""
    given = [r for r in raw if r is not None]
    if not given or not class_names:
        return ImageList(items, [-1] * len(items), labeled=False)
    if len(given) != len(raw):
        raise DataError(f"{spec}: {len(given)} sample(s) have a label and {len(raw) - len(given)} do not.")
    if all(isinstance(r, int) for r in raw) and dataset_names is None:
        return ImageList(items, [r if r >= 0 else -1 for r in raw], labeled=True)
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
        return ImageList(items, [-1] * len(items), labeled=False)
    return ImageList(items, labels, labeled=True, unknown_names=unknown)


def read_metadata(folder: Path, class_names: Sequence[str] | None) -> ImageList:
    """An ``imagefolder`` with ``metadata.csv`` (Hugging Face's layout): a ``file_name`` column of paths
    relative to the folder, and a label column (label, labels, cls or class) of class names or indices."""
    import csv

    where = folder / METADATA
    rows = list(csv.DictReader(read_text(where).splitlines()))
    columns = list(rows[0]) if rows else []
    if "file_name" not in columns:
        raise DataError(f"{where}: no file_name column (columns: {', '.join(columns) or 'none'}).")
    label = next((c for c in columns if c.lower() in LABEL_COLUMNS), None)
    paths: list[Path] = []
    raw: list[str | int | None] = []
    for number, row in enumerate(rows, 2):
        full = Path(os.path.normpath(folder / (row["file_name"] or "")))
        if os.path.commonpath([os.path.abspath(folder), os.path.abspath(full)]) != os.path.abspath(folder):
            raise DataError(f"{where}:{number}: path {row['file_name']!r} escapes the folder {folder}.")
        if not full.is_file():
            raise DataError(f"{where}:{number}: file not found: {full}")
        paths.append(full)
        raw.append(((row.get(label) or "").strip() or None) if label else None)
    if not paths:
        raise DataError(f"{where}: no image rows.")
    texts = [r for r in raw if isinstance(r, str)]
    if len(texts) == len(raw) and all(_is_int(r) for r in texts):  # a column of indices, else of names
        raw = [int(r) for r in texts]
    return labeled_by(paths, raw, None, class_names, where)


def file_state(stat: os.stat_result) -> str:
    """What says that a file is still the one seen before: size, modification and change times, inode and
    device. Writing a file, extracting an archive over it (tar restores the modification time, not the
    change time) or editing it in place and resetting its modification time all change its change time,
    which only the kernel sets; a file copied elsewhere is another inode. Assumed: the clock does not go
    back and no one rewrites the change time (that takes resetting the system clock)."""
    return f"{stat.st_size}\t{stat.st_mtime_ns}\t{stat.st_ctime_ns}\t{stat.st_ino}\t{stat.st_dev}"


def fingerprint(images: ImageList) -> str:
    """A short hash of what a list of images is: every path, its ``file_state`` and label. Two runs over the
    same files give the same fingerprint; a file added, removed, replaced, rewritten or relabeled changes it."""
    import hashlib

    digest = hashlib.sha256()
    for path, label in zip(images.paths, images.labels):
        try:
            digest.update(identity(path) + f"\t{label}\n".encode())
        except OSError:
            digest.update(os.fsencode(os.path.abspath(path)) + f"\tmissing\t{label}\n".encode())
    return digest.hexdigest()[:16]


def identity(item) -> bytes:
    """What an image is, for the decode cache and for resuming: a file's real path (bytes: any file name)
    and ``file_state``, or an image inside a container (``ueo.members.Member.identity``). OSError when a
    file is missing."""
    if hasattr(item, "identity"):
        return item.identity()
    return os.fsencode(os.path.realpath(item)) + f"\0{file_state(os.stat(item))}".encode()
