"""Image collections on disk: folders, list files, class names (reading the pixels: ``ueo.images``).

Conventions
  * A list file has one image a line, "relative/path label" (the official format); the path is relative
    to ``root`` (or absolute, inside ``root``) and may contain spaces (the label is the last field). A
    line with a path only is unlabeled.
  * A folder is scanned recursively for every image format Pillow reads here (``IMAGE_EXTENSIONS``:
    jpg, png, gif, bmp, webp, tif, avif, ... case-insensitive), sorted, following symbolic links (each
    real folder once). Files of other image formats (HEIC without its plugin, camera raw, SVG) are left
    out with one line that counts them and says why. When its first-level sub-folders are named after
    classes, they give the labels: a sub-folder that matches a known class name gets that class's index,
    any other sub-folder is an unknown class (label >= K). Matching is case-insensitive and treats '_' and
    ' ' alike. A ``metadata.csv`` (Hugging Face's imagefolder) may add labels: see :func:`read_folder`.
  * Labels 0..K-1 are known classes; any other label is unknown; -1 means unlabeled.
  * Text files (class lists, list files) are UTF-8; a byte-order mark is ignored.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image

from ..config import UNKNOWN
from ..errors import DataError
from .imagelist import ImageList, fold, stderr
from .labels import LABEL_COLUMNS, label_value, labeled_by, name_labels

# What people keep pictures as. Those that Pillow opens here are read (IMAGE_EXTENSIONS); a file with one
# of the others is left out with its reason (NOT_READ), never silently.
PICTURE_EXTENSIONS = (
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".gif", ".bmp", ".dib", ".webp", ".tif", ".tiff",
    ".avif", ".avifs", ".heic", ".heif", ".jxl", ".jp2", ".j2k", ".jpx", ".ppm", ".pgm", ".pbm", ".pnm",
    ".tga", ".qoi", ".ico", ".svg", ".dng", ".cr2", ".cr3", ".nef", ".arw", ".raf", ".orf", ".rw2",
)  # fmt: skip
RAW_CAMERA = (".dng", ".cr2", ".cr3", ".nef", ".arw", ".raf", ".orf", ".rw2")


def _readable_extensions() -> tuple[str, ...]:
    """The picture extensions Pillow opens here (HEIC too when the pillow-heif plugin is installed)."""

    try:  # an optional plugin people install for phone photos
        import pillow_heif

        pillow_heif.register_heif_opener()
    except ImportError:
        pass
    Image.init()
    opened = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    return tuple(ext for ext in PICTURE_EXTENSIONS if ext in opened and ext not in RAW_CAMERA)


IMAGE_EXTENSIONS = _readable_extensions()


def why_not_read(suffix: str) -> str:
    """Why a picture with this extension is not read (one of PICTURE_EXTENSIONS, not of IMAGE_EXTENSIONS)."""
    suffix = suffix.lower()
    if suffix in (".heic", ".heif"):
        return "HEIC/HEIF photos: Pillow reads them with its plugin (pip install pillow-heif), not installed here"
    if suffix == ".svg":
        return "a vector drawing, not pixels: rasterise it (e.g. to PNG) first"
    if suffix in RAW_CAMERA:
        return "a camera raw file: develop it to JPEG, PNG or TIFF first"
    return f"Pillow cannot read {suffix} files here: convert them to JPEG, PNG or TIFF"


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


def _is_int(text: str, kind=int) -> bool:
    """Whether ``text`` reads as a ``kind`` (int, or float)."""
    try:
        kind(text)
        return True
    except ValueError:
        return False


def scan_folder(folder: str | os.PathLike, warn: Callable[[str], None] = stderr) -> tuple[list[Path], list[dict]]:
    """(every image file under ``folder``: recursive, following links, each real folder once, sorted; the
    skipped.csv rows of the pictures left out because Pillow cannot read their format here, counted in one
    warning line)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder.")
    found: list[Path] = []
    left_out: list[Path] = []
    visited: set[str] = set()
    for current, dirs, files in os.walk(folder, followlinks=True):
        real = os.path.realpath(current)
        if real in visited:  # a link back to a folder already seen: a loop or a duplicate
            dirs[:] = []
            continue
        visited.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for f in files:
            suffix = Path(f).suffix.lower()
            if f.startswith(".") or suffix not in PICTURE_EXTENSIONS:
                continue
            (found if suffix in IMAGE_EXTENSIONS else left_out).append(Path(current) / f)
    found = sorted(p for p in found if p.is_file())
    skipped = [{"path": str(p), "reason": why_not_read(p.suffix)} for p in sorted(left_out)]
    if skipped:
        counts: dict[str, int] = {}
        for p in left_out:
            counts[p.suffix.lower()] = counts.get(p.suffix.lower(), 0) + 1
        kinds = "; ".join(f"{n} {ext} ({why_not_read(ext)})" for ext, n in sorted(counts.items()))
        warn(f"warning: {folder}: {len(skipped)} picture file(s) left out: {kinds}. They are listed in skipped.csv.")
    if not found:
        raise DataError(
            f"No image ({', '.join(IMAGE_EXTENSIONS[:8])}, ...) found under {folder}"
            + (f" ({len(skipped)} picture file(s) of formats ueo cannot read here)." if skipped else ".")
        )
    return found, skipped


def read_folder(
    folder: str | os.PathLike, class_names: Sequence[str] | None = None, *, warn: Callable[[str], None] = stderr
) -> ImageList:
    """Every image under ``folder``; labeled by first-level sub-folder when any sub-folder matches a class
    name. A ``metadata.csv`` in the folder (Hugging Face's imagefolder: a ``file_name`` column of paths
    relative to the folder and a label column, ``label``/``labels``/``cls``/``class``, of names or indices)
    labels the files it lists, as Hugging Face reads it: every image of the folder is read, listed or not.
    With class folders too, the folders give the labels and each label of metadata.csv must agree with its
    file's folder; without them, metadata.csv must label every image. One line says where the labels come
    from; a metadata.csv without ``file_name`` is not Hugging Face's and is left aside, with a warning."""
    folder = Path(folder)
    paths, skipped = scan_folder(folder, warn)
    listed = metadata_labels(folder, paths, warn) if (folder / METADATA).is_file() else None
    index = {fold(n): i for i, n in enumerate(class_names or [])}
    tops = [p.relative_to(folder).parts[0] if len(p.relative_to(folder).parts) > 1 else None for p in paths]
    if not index or not any(t is not None and fold(t) in index for t in tops):
        if listed:
            column, given = listed
            warn(f"note: {folder}: the labels are those of {METADATA}'s {column!r} column.")
            images = labeled_by(
                paths, [given.get(os.path.abspath(p)) for p in paths], None, class_names, folder / METADATA
            )
            images.skipped = skipped
            return images
        return ImageList(paths, [-1] * len(paths), labeled=False, skipped=skipped)
    loose = [p for p, top in zip(paths, tops) if top is None]
    if loose:
        raise DataError(
            f"{folder} has class folders, but {len(loose)} image(s) lie at its top level, outside any class "
            f"folder (e.g. {loose[0].name}): move them into their class folder, or into a folder named after "
            "what they are (a folder that matches no class name is an unknown class)."
        )
    tops_known = [t for t in tops if t is not None]
    labels, unknown, _ = name_labels(tops_known, class_names or [])
    if listed:
        column, given = listed
        names = list(class_names or [])
        for path, top in zip(paths, tops_known):
            value = given.get(os.path.abspath(path))
            if value is None:
                continue
            if isinstance(value, int):  # an index: a listed class, or (K and above) an unknown one
                agree = fold(names[value]) == fold(top) if value < len(names) else fold(top) not in index
            else:
                agree = fold(value) == fold(top)
            if not agree:
                raise DataError(
                    f"{folder / METADATA}: {path.relative_to(folder)} is labeled {value!r} there, but it lies in the "
                    f"class folder {top!r}. Correct one of them (the folders and {METADATA} must agree)."
                )
        warn(
            f"note: {folder}: the labels are the class folders' ({METADATA}'s {column!r} column agrees on the "
            f"{len(given)} image(s) it labels)."
        )
    return ImageList(paths, labels, labeled=True, unknown_names=unknown, skipped=skipped)


METADATA = "metadata.csv"  # Hugging Face's imagefolder: a file_name column and the labels


def metadata_labels(folder: Path, paths: Sequence[Path], warn) -> tuple[str, dict[str, int | str]] | None:
    """(label column, {absolute path of an image: its raw label}) of a folder's ``metadata.csv`` (Hugging Face's imagefolder);
    None when it holds no labels, or is not imagefolder metadata (no ``file_name`` column: warned about)."""

    where = folder / METADATA
    rows = list(csv.DictReader(read_text(where).splitlines()))
    columns = list(rows[0]) if rows else []
    if "file_name" not in columns:
        warn(
            f"warning: {where} has no file_name column (columns: {', '.join(columns) or 'none'}): it is not Hugging "
            "Face's imagefolder metadata, and is left aside; the folder's images are read as if it were not there."
        )
        return None
    column = next((c for c in columns if c.lower() in LABEL_COLUMNS), None)
    if column is None:
        return None
    images = {os.path.abspath(p) for p in paths}
    labels: dict[str, int | str] = {}
    values = [(row.get(column) or "").strip() for row in rows]
    numeric = all(_is_int(v, float) for v in values if v)  # a column of indices, else of names
    for number, (row, value) in enumerate(zip(rows, values), 2):
        full = Path(os.path.normpath(folder / (row["file_name"] or "")))
        if os.path.commonpath([os.path.abspath(folder), os.path.abspath(full)]) != os.path.abspath(folder):
            raise DataError(f"{where}:{number}: path {row['file_name']!r} escapes the folder {folder}.")
        if not full.is_file():
            raise DataError(f"{where}:{number}: file not found: {full}")
        label = label_value(float(value) if numeric and value else value, f"{where}:{number}")
        key = os.path.abspath(full)
        if key in labels and labels[key] != label:
            raise DataError(f"{where}:{number}: {row['file_name']!r} is listed again with another label.")
        if key in images and label is not None:
            labels[key] = label
    return column, labels
