"""Image collections on disk: folders, list files, class names.

Conventions
  * A list file has one image a line, "relative/path label" (the official format); the path is relative
    to ``root`` and may contain spaces (the label is the last field). A line with a path only is unlabeled.
  * A folder is scanned recursively for jpg, jpeg, png, bmp, webp, tif, tiff (case-insensitive), sorted.
    When its first-level sub-folders are named after classes, they give the labels: a sub-folder that
    matches a known class name gets that class's index, any other sub-folder is an unknown class
    (label >= K). Matching is case-insensitive and treats '_' and ' ' alike.
  * Labels 0..K-1 are known classes; any other label is unknown; -1 means unlabeled.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, ImageOps

from .errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def fold(name: str) -> str:
    """Case-insensitive, '_'/' ' tolerant key of a class or folder name."""
    return " ".join(name.replace("_", " ").split()).lower()


def parse_class_names(spec: str) -> list[str]:
    """Class names from a file (one per line) or a comma-separated list; refuses duplicates and blanks."""
    path = Path(spec)
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise DataError(f"{spec}: not UTF-8 text ({error.reason} at byte {error.start}).") from None
        names = [line.strip() for line in text.splitlines()]
        while names and not names[-1]:  # trailing blank lines are harmless
            names.pop()
        if "" in names:  # a blank line inside would shift every later class index
            raise DataError(
                f"{spec}:{names.index('') + 1}: empty line in the class list (one name a line, in label order)."
            )
        where = [f"{spec}:{i + 1}" for i in range(len(names))]
    elif "," in spec or (spec.strip() and os.sep not in spec and not spec.endswith(".txt")):
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
    seen: dict[str, str] = {}
    for name, loc in zip(names, where):
        key = fold(name)
        if key in seen:
            raise DataError(f"{loc}: class {name!r} duplicates {seen[key]} (names are compared ignoring case and '_').")
        seen[key] = f"{name!r} ({loc})"
    return names


@dataclass
class ImageList:
    """Paths (absolute) with integer labels; ``labeled`` tells whether the labels are real."""

    paths: list[Path]
    labels: list[int]
    labeled: bool
    unknown_names: dict[int, str] = field(default_factory=dict)  # label -> folder name, for unknown folders

    def __len__(self):
        return len(self.paths)

    def subset(self, keep: Sequence[int]) -> ImageList:
        keep = list(keep)
        return ImageList(
            [self.paths[i] for i in keep], [self.labels[i] for i in keep], self.labeled, dict(self.unknown_names)
        )


def read_list_file(
    path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    num_classes: int | None = None,
    check_files: bool = True,
) -> ImageList:
    """Parse a list file ("relative/path label" per line). ``root`` defaults to the list file's folder.

    num_classes: when given, labels must lie in [0, num_classes) (or be -1).
    Raises DataError naming the file and line for malformed lines, bad labels, paths escaping the root
    and missing files.
    """
    path = Path(path)
    root = Path(root) if root is not None else path.parent
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"List file {path} does not exist.") from None
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error.reason}).") from None
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
        normal = os.path.normpath(relative)
        if os.path.isabs(normal) or normal == ".." or normal.startswith(".." + os.sep):
            raise DataError(f"{path}:{number}: path {relative!r} escapes the root folder {root}.")
        full = root / normal
        if check_files and not full.is_file():
            raise DataError(f"{path}:{number}: file not found: {full}")
        paths.append(full)
        labels.append(label)
    if not paths:
        raise DataError(f"List file {path} has no image lines.")
    return ImageList(paths, labels, bool(labeled))


def _is_int(text: str) -> bool:
    try:
        int(text)
        return True
    except ValueError:
        return False


def scan_folder(folder: str | os.PathLike) -> list[Path]:
    """Every image file under ``folder`` (recursive, sorted by path)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder.")
    found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not found:
        raise DataError(f"No image ({', '.join(IMAGE_EXTENSIONS)}) found under {folder}.")
    return found


def read_folder(folder: str | os.PathLike, class_names: Sequence[str] | None = None) -> ImageList:
    """Images under ``folder``; labeled by first-level sub-folder when any sub-folder matches a class name."""
    folder = Path(folder)
    paths = scan_folder(folder)
    index = {fold(n): i for i, n in enumerate(class_names or [])}
    tops = [p.relative_to(folder).parts[0] if len(p.relative_to(folder).parts) > 1 else None for p in paths]
    if not index or not any(t is not None and fold(t) in index for t in tops):
        return ImageList(paths, [-1] * len(paths), labeled=False)
    unknown: dict[str, int] = {}
    labels = []
    for top in tops:
        key = fold(top) if top is not None else None
        if key in index:
            labels.append(index[key])
        else:
            name = top if top is not None else "(top level)"
            labels.append(unknown.setdefault(name, len(index) + len(unknown)))
    return ImageList(paths, labels, labeled=True, unknown_names={v: k for k, v in unknown.items()})


def read_images(
    spec: str | os.PathLike, class_names: Sequence[str] | None = None, root: str | os.PathLike | None = None
) -> ImageList:
    """A folder or a list file (see module docstring)."""
    spec = Path(spec)
    if spec.is_dir():
        return read_folder(spec, class_names)
    if spec.is_file():
        return read_list_file(spec, root)
    raise DataError(f"{spec}: no such folder or list file.")


def load_image(path: Path) -> Image.Image:
    """Open an image as RGB with its EXIF orientation applied (alpha over white, 16-bit scaled to 8).

    Raises OSError/ValueError/Image.DecompressionBombError for unreadable files and absurd sizes
    (more pixels than PIL.Image.MAX_IMAGE_PIXELS).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return _load_image(path)


def _load_image(path: Path) -> Image.Image:
    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            background = Image.new("RGB", rgba.size, (255, 255, 255))
            background.paste(rgba, mask=rgba.split()[-1])
            return background
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            image = image.point(lambda v: v / 256).convert("L")
        image = image.convert("RGB")
        image.load()
        return image


def check_images(
    images: ImageList, strict: bool = False, warn: Callable[[str], None] = print, threads: int = 8
) -> tuple[ImageList, list[dict[str, str]]]:
    """Decode every image once; return (the readable ones, [{"path", "reason"}] of the skipped ones).

    strict: raise DataError at the first unreadable file instead of skipping it.
    """

    def problem(path):
        try:
            load_image(path)
            return None
        except (
            OSError,
            ValueError,
            SyntaxError,
            Image.DecompressionBombError,
            Image.DecompressionBombWarning,
        ) as error:
            return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else 'unreadable'}"

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        problems = list(pool.map(problem, images.paths))
    skipped = []
    for path, reason in zip(images.paths, problems):
        if reason is None:
            continue
        if strict:
            raise DataError(f"{path}: unreadable image ({reason}).")
        warn(f"warning: skipping {path}: {reason}")
        skipped.append({"path": str(path), "reason": reason})
    keep = [i for i, reason in enumerate(problems) if reason is None]
    if not keep:
        raise DataError("No readable image: every file was skipped (see the warnings).")
    return images.subset(keep), skipped


class ImageFiles(torch.utils.data.Dataset):
    """A Dataset of (PIL image, label) over an ImageList; images are read when asked for."""

    def __init__(self, images: ImageList):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return load_image(self.images.paths[i]), self.images.labels[i]
