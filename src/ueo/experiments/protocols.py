"""The paper's benchmarks and class-shift protocols (docs/protocols.md).

Class orders are the official lists in ``resources/classes`` (alphabetical, case-INSENSITIVE); the first
K classes are the known (prompted) ones. Labels in every list keep the official index, so a label >= K
is an unknown class. Scenarios give the classes of the adaptation (training) set; the test set always
holds every class:

  cda   closed       known classes only          pda   partial       a subset of the known classes
  oda   open         known + some unknown        opda  open-partial  a known subset + some unknown
  csda  every class is known, no unknown (a sanity setting)

Images come from official list files when ``lists`` is given ("<domain>_list.txt" used for both
adaptation and test — evaluation is transductive —, or "<domain>_train.txt" + "<domain>_test.txt"),
else from the usual folder layouts, matched to the class list case-insensitively.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from ..data import ImageList, fold, read_list_file
from ..errors import DataError
from ..files import write_text

SHIFT_SCENARIOS = ("cda", "pda", "oda", "opda")  # the four class shifts (the paper's table and the demo's)
SCENARIOS = (*SHIFT_SCENARIOS, "csda")


@dataclass(frozen=True)
class Benchmark:
    name: str
    class_file: str
    domains: tuple[str, ...]
    known: int
    scenarios: dict[str, tuple[range, ...]]  # training classes per scenario (csda: all classes)
    layout: str  # folder layout under the root, "{domain}" and "{cls}" filled in
    split_lists: bool  # official lists are "<domain>_train/_test.txt" (else "<domain>_list.txt")


def _ranges(*pairs):
    return tuple(range(a, b + 1) for a, b in pairs)


BENCHMARKS: dict[str, Benchmark] = {
    "office31": Benchmark(
        "office31",
        "office31.txt",
        ("amazon", "dslr", "webcam"),
        25,
        {"cda": _ranges((0, 24)), "pda": _ranges((0, 19)), "oda": _ranges((0, 27)), "opda": _ranges((0, 14), (25, 27))},
        "{domain}/images/{cls}",
        False,
    ),
    "officehome": Benchmark(
        "officehome",
        "officehome.txt",
        ("Art", "Clipart", "Product", "RealWorld"),
        50,
        {"cda": _ranges((0, 49)), "pda": _ranges((0, 34)), "oda": _ranges((0, 59)), "opda": _ranges((0, 34), (50, 59))},
        "{domain}/{cls}",
        False,
    ),
    "visda": Benchmark(
        "visda",
        "visda_c.txt",
        ("train", "validation"),
        8,
        {"cda": _ranges((0, 7)), "pda": _ranges((0, 5)), "oda": _ranges((0, 9)), "opda": _ranges((0, 5), (8, 9))},
        "{domain}/{cls}",
        False,
    ),
    "domainnet": Benchmark(
        "domainnet",
        "domainnet.txt",
        ("clipart", "infograph", "painting", "quickdraw", "real", "sketch"),
        300,
        {
            "cda": _ranges((0, 299)),
            "pda": _ranges((0, 249)),
            "oda": _ranges((0, 329)),
            "opda": _ranges((0, 249), (300, 329)),
        },
        "{domain}/{cls}",
        True,
    ),
}


def get_benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise DataError(f"Unknown benchmark {name!r}; choose one of {sorted(BENCHMARKS)}.")
    return BENCHMARKS[name]


def class_names(benchmark: str) -> list[str]:
    """The official class order of a benchmark (all classes, known first)."""
    text = (
        resources.files("ueo")
        .joinpath("resources")
        .joinpath("classes")
        .joinpath(get_benchmark(benchmark).class_file)
        .read_text(encoding="utf-8")
    )
    return [line.strip() for line in text.splitlines() if line.strip()]


def scenario_classes(benchmark: str, scenario: str) -> tuple[int, list[int]]:
    """(number of known classes K, the adaptation set's classes) of a scenario."""
    bench = get_benchmark(benchmark)
    if scenario not in SCENARIOS:
        raise DataError(f"Unknown scenario {scenario!r}; choose one of {SCENARIOS}.")
    if scenario == "csda":
        total = len(class_names(benchmark))
        return total, list(range(total))
    return bench.known, [c for r in bench.scenarios[scenario] for c in r]


def _compact(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _domain_folder(root: Path, domain: str) -> Path:
    for child in sorted(root.iterdir()) if root.is_dir() else []:
        if child.is_dir() and _compact(child.name) == _compact(domain):
            return child
    raise DataError(f"No folder for domain {domain!r} under {root} (looked for a name like {domain!r}).")


def _from_folders(bench: Benchmark, domain: str, root: Path) -> ImageList:
    """All images of a domain from the usual folder layout, labeled in the official class order."""
    names = class_names(bench.name)
    index = {fold(n): i for i, n in enumerate(names)}
    domain_dir = _domain_folder(root, domain)
    class_parent = domain_dir / "images" if "{domain}/images" in bench.layout else domain_dir
    if not class_parent.is_dir():
        raise DataError(f"Expected the layout {bench.layout} under {root}: {class_parent} is missing.")
    paths, labels, unmatched = [], [], []
    for folder in sorted(p for p in class_parent.iterdir() if p.is_dir()):
        label = index.get(fold(folder.name))
        if label is None:
            unmatched.append(folder.name)
            continue
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        paths += files
        labels += [label] * len(files)
    if unmatched:
        raise DataError(
            f"{class_parent}: folder(s) {unmatched[:5]} match no class of {bench.name} "
            f"(names are compared ignoring case and '_')."
        )
    if not paths:
        raise DataError(f"No image found under {class_parent}.")
    return ImageList(paths, labels, labeled=True)


def _seeded_split(images: ImageList, fraction: float, seed: int) -> tuple[ImageList, ImageList]:
    rng = np.random.default_rng(seed)
    train, test = [], []
    labels = np.asarray(images.labels)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        cut = int(round(fraction * len(members)))
        train += members[:cut].tolist()
        test += members[cut:].tolist()
    return images.subset(sorted(train)), images.subset(sorted(test))


def domain_images(
    benchmark: str, domain: str, root, lists=None, check_files: bool = True, warn=print
) -> tuple[ImageList, ImageList]:
    """(adaptation pool, test set) of one domain, all classes, official labels."""
    bench = get_benchmark(benchmark)
    match = [d for d in bench.domains if _compact(d) == _compact(domain)]
    if not match:
        raise DataError(f"Unknown domain {domain!r} for {benchmark}; choose one of {bench.domains}.")
    domain = match[0]
    root = Path(root)
    num_classes = len(class_names(benchmark))
    if lists is not None:
        lists = Path(lists)

        def find(suffix):
            for candidate in sorted(lists.glob("*.txt")):
                if _compact(candidate.stem) == _compact(f"{domain}{suffix}"):
                    return candidate
            raise DataError(f"No list file '{domain}{suffix}.txt' in {lists}.")

        if bench.split_lists:
            return (
                read_list_file(find("_train"), root, num_classes, check_files),
                read_list_file(find("_test"), root, num_classes, check_files),
            )
        both = read_list_file(find("_list"), root, num_classes, check_files)
        return both, both
    images = _from_folders(bench, domain, root)
    if bench.split_lists:
        warn(
            f"warning: no official lists given for {benchmark}; using a seeded 70/30 split of the folders. "
            "Pass --lists DIR with the official <domain>_train.txt / <domain>_test.txt for comparable numbers."
        )
        return _seeded_split(images, 0.7, seed=0)
    return images, images


@dataclass
class Split:
    """One protocol instance: the known class names, the adaptation set and the test set."""

    benchmark: str
    domain: str
    scenario: str
    known_classes: list[str]
    train: ImageList
    test: ImageList


def build_split(
    benchmark: str,
    domain: str,
    scenario: str,
    root,
    *,
    lists=None,
    check_files: bool = True,
    warn=print,
    images: tuple[ImageList, ImageList] | None = None,
) -> Split:
    """One scenario of one domain. ``images``: the domain's (pool, test) when already read."""
    num_known, train_classes = scenario_classes(benchmark, scenario)
    pool, test = images or domain_images(benchmark, domain, root, lists, check_files, warn)
    domain = next(d for d in get_benchmark(benchmark).domains if _compact(d) == _compact(domain))
    wanted = set(train_classes)
    train = pool.subset([i for i, label in enumerate(pool.labels) if label in wanted])
    if len(train) == 0:
        raise DataError(f"{benchmark}/{domain}/{scenario}: no image of the scenario's classes was found.")
    return Split(benchmark, domain, scenario, class_names(benchmark)[:num_known], train, test)


def write_list(images: ImageList, root, path) -> None:
    """Write an ImageList as a list file with paths relative to ``root`` (atomically)."""

    lines = [f"{Path(os.path.relpath(p, root)).as_posix()} {label}" for p, label in zip(images.paths, images.labels)]
    write_text(path, "\n".join(lines) + "\n")
