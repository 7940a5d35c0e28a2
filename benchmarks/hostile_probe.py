"""Probe the families of hostile input around each defect fixed, and count how each input ended.

Every input goes through the front door (the `ueo` command, in process, or ``ueo.<name>``) and ends as:

* ``ok``: it worked, and the answer is right (for rewritten images: the new pixels were scored);
* ``refused``: a clear error (exit 2, or a ``ueo.UeoError``) naming the input, without a traceback;
* ``warned``: it worked with a warning on stderr;
* ``traceback`` (exit 1 or another exception) or ``wrong`` (a silently wrong answer): a defect.

    python benchmarks/hostile_probe.py --out benchmarks/results/hostile_probe.json
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import ueo
from ueo.cli import main as ueo_main
from ueo.experiments.toyworld import TARGET_STYLE, render


def run(args) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = ueo_main([str(a) for a in args])
    return code, err.getvalue()


def ended(code: int, err: str) -> str:
    if code == 1 or "Traceback" in err:
        return "traceback"
    if code == 2:
        return "refused"
    return "warned" if "warning" in err.lower() else "ok"


def toy_folder(root: Path, classes=("red circle", "blue circle", "red square"), n=4) -> Path:
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            render(TARGET_STYLE, label, i, seed=0).resize((300, 225)).save(root / name / f"{i}.png")
    return root


TOY = ["--model", "ueo-toy-rn", "--pretrained", "toyworld", "--device", "cpu", "--quiet"]
FIT = [*TOY, "--epochs", "1", "--batch-size", "4", "--vocabulary", "none"]


def damaged_metrics(work: Path, good: Path) -> dict[str, str]:
    """`ueo report` over a good run and one damaged metrics.json."""
    record = json.loads((good / "metrics.json").read_text())
    variants = {
        "string metric": {**record, "adapted": {**record["adapted"], "pacc": "high"}},
        "threshold list": {**record, "threshold": [0.1]},
        "a JSON list": [record],
        "null": None,
        "a number": 3,
        "NaN metric": {**record, "adapted": {**record["adapted"], "auroc": float("nan")}},
        "negative count": {**record, "num_test_images": -4},
        "class names not names": {**record, "class_names": [1, 2]},
        "run a list": {**record, "run": ["x"]},
        "discovery a text": {**record, "discovery": "none"},
    }
    variants["infinite metric"] = {**record, "adapted": {**record["adapted"], "pacc": float("inf")}}
    texts = {name: json.dumps(value) for name, value in variants.items()}  # (NaN and Infinity as JSON writes them)
    texts |= {"truncated": json.dumps(record)[:40], "empty": ""}
    outcomes = {}
    for i, (name, text) in enumerate({**texts, "non-UTF-8": None}.items()):
        folder = work / f"damaged{i}"
        shutil.copytree(good, folder)
        path = folder / "metrics.json"
        path.write_bytes(b"\xff\xfe{\x00" if text is None else text.encode())
        code, err = run(["report", good, folder, "--out", work / f"table{i}.md"])
        outcome = ended(code, err)
        left_out = "left out" in err
        outcomes[name] = outcome if (outcome != "ok" or left_out) else "wrong"  # a damaged run must be named
    return outcomes


def class_names(work: Path, data: Path) -> dict[str, str]:
    names = [
        "$$",
        "$x^2$",
        "back\\slash",
        "100%",
        "{}",
        "🐱 cat",
        "x" * 300,
        "<b>bold</b>",
        "Unknown",
        "  red circle  ",
    ]
    outcomes = {}
    for i, name in enumerate(names):
        code, err = run(["fit", *FIT, "--data", data, "--classes", f"{name},blue circle", "--out", work / f"names{i}"])
        outcomes[repr(name[:20])] = ended(code, err)
    return outcomes


def api_inputs(work: Path, data: Path, adapted: Path) -> dict[str, str]:
    classifier = ueo.load_adapted(adapted, device="cpu")
    truncated = work / "truncated.png"
    good = sorted(data.rglob("*.png"))
    truncated.write_bytes(good[0].read_bytes()[:200])
    variants = {
        "numpy HWC uint8": [np.zeros((225, 300, 3), np.uint8)],
        "numpy float": [np.zeros((225, 300, 3))],
        "tensor [3, H]": torch.zeros(3, 64),
        "tensor 5-d": torch.zeros(1, 1, 3, 64, 64),
        "float64 batch": torch.zeros(2, 3, 64, 64, dtype=torch.float64),
        "int batch": torch.zeros(2, 3, 64, 64, dtype=torch.int64),
        "NaN batch": torch.full((2, 3, 64, 64), float("nan")),
        "a generator": (Image.open(p) for p in good[:2]),
        "None": None,
        "a missing path": [work / "nowhere.png"],
        "one truncated file among many": [*good, truncated],
        "bytes": [b"\x89PNG"],
    }
    outcomes = {}
    for name, images in variants.items():
        try:
            classifier.predict(images)
            outcomes[name] = "ok"
        except ueo.UeoError as error:
            outcomes[name] = "refused" if str(error) else "wrong"
        except Exception:
            outcomes[name] = "traceback"
    return outcomes


def config_files(work: Path, data: Path) -> dict[str, str]:
    base = f"data: {data}\nclasses: red circle,blue circle\nepochs: 1\nbatch_size: 4\nvocabulary: none\n"
    variants = {
        "duplicate key": base + "epochs: 2\n",
        "dash and underscore": base + "batch-size: 8\n",
        "a list": "- epochs: 1\n",
        "a tab": base + "seed:\t3\n",
        "an alias": base + "seed: &s 3\neval_every: *s\n",
        "unknown key": base + "epoch: 3\n",
        "epochs ten": base.replace("epochs: 1", "epochs: ten"),
        "epochs 1.5": base.replace("epochs: 1", "epochs: 1.5"),
        "method a boolean": base + "method: yes\n",
        "byte-order mark": "\ufeff" + base,
    }
    outcomes = {}
    for i, (name, text) in enumerate(variants.items()):
        path = work / f"config{i}.yaml"
        path.write_text(text, encoding="utf-8")
        code, err = run(["fit", *TOY, "--config", path, "--out", work / f"config{i}"])
        outcomes[name] = ended(code, err)
    return outcomes


def vocabularies(work: Path, data: Path, adapted: Path) -> dict[str, str]:
    variants = {
        "empty": b"",
        "blank lines": b"\n \n\n",
        "byte-order mark": "\ufeffzebra\nhorse\n".encode(),
        "duplicates": b"zebra\nZebra\nzebra\n",
        "non-UTF-8": b"caf\xe9\n",
        "100k lines": b"x\n" * 100_000,
        "'unknown'": b"unknown\nzebra\n",
        "a 2000-character line": b"a" * 2000 + b"\nzebra\n",
        "binary": bytes(range(256)),
    }
    outcomes = {}
    for i, (name, content) in enumerate(variants.items()):
        path = work / f"vocabulary{i}.txt"
        path.write_bytes(content)
        code, err = run(
            ["discover", *TOY, "--adapted", adapted, "--data", data, "--vocabulary", path, "--out", work / f"v{i}"]
        )
        outcomes[name] = ended(code, err)
    code, err = run(
        ["discover", *TOY, "--adapted", adapted, "--data", data, "--vocabulary", work, "--out", work / "vdir"]
    )
    outcomes["a folder"] = ended(code, err)
    return outcomes


def rewritten_images(work: Path, adapted: Path) -> dict[str, str]:
    """An image repainted in place with its size and modification time kept (or its EXIF orientation
    edited): a second `ueo predict` over the decode cache must score the new pixels."""
    outcomes = {}
    cache = work / "cache"
    for ext in ("png", "bmp", "jpg"):
        for change in ("repaint", "exif"):
            if change == "exif" and ext != "jpg":
                continue
            folder = work / f"rewrite_{ext}_{change}"
            folder.mkdir()
            path = folder / f"0.{ext}"
            render(TARGET_STYLE, 0, 0, seed=0).resize((400, 300)).save(path)
            args = [
                "predict",
                *TOY,
                "--adapted",
                adapted,
                "--data",
                folder,
                "--cache-dir",
                cache,
                "--vocabulary",
                "none",
            ]
            run([*args, "--out", work / f"{folder.name}_a"])
            stat = path.stat()
            if change == "repaint":
                render(TARGET_STYLE, 2, 5, seed=0).resize((400, 300)).save(path)
            else:
                image = Image.open(path)
                exif = image.getexif()
                exif[0x0112] = 6
                image.save(path, exif=exif)
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
            run([*args, "--out", work / f"{folder.name}_b"])
            fresh = ["--cache-dir", work / f"{folder.name}_fresh", "--vocabulary", "none"]  # the same entry format
            run([*args[:-4], *fresh, "--out", work / f"{folder.name}_c"])
            score = [(work / f"{folder.name}_{s}" / "predictions.csv").read_text().splitlines()[1] for s in "bc"]
            outcomes[f"{ext} {change}"] = "ok" if score[0] == score[1] else "wrong"
    return outcomes


def duplicated_runs(work: Path, good: Path) -> dict[str, str]:
    backup = work / "backup" / good.name
    shutil.copytree(good, backup)
    variants = {
        "the same folder twice": [good, good],
        "a folder and its parent": [good, good.parent],
        "a backup copy": [good, backup],
    }
    outcomes = {}
    for i, (name, folders) in enumerate(variants.items()):
        code, err = run(["report", *folders, "--out", work / f"dup{i}.md"])
        with open(work / f"dup{i}.csv", newline="") as f:
            runs = {row["runs"] for row in csv.DictReader(f)} if code == 0 else set()
        outcomes[name] = ended(code, err) if code != 0 else ("ok" if runs == {"1"} else "wrong")
    return outcomes


# ------------------------------------------------------------------------------------------ round 4
def tar_of(path: Path, members) -> str:
    import tarfile

    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def encoded(seed: int, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    render(TARGET_STYLE, seed % 24, seed, seed=0).save(buffer, fmt)
    return buffer.getvalue()


def read_as(spec, classes, want) -> str:
    """ok when ueo.read_images gives ``want`` (labels, or (labels, member names)), refused on a UeoError."""
    try:
        images = ueo.read_images(spec, classes, warn=lambda _: None)
    except ueo.UeoError:
        return "refused"
    except Exception:
        return "traceback"
    labels = images.labels if images.labeled else None
    got = (labels, [getattr(m, "name", Path(str(m)).name) for m in images.paths]) if isinstance(want, tuple) else labels
    return "ok" if got == want else "wrong"


def container_labels(work: Path) -> dict[str, str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    a, b, c = encoded(1), encoded(2), encoded(3)
    cases = {
        "a key that comes back (a, b, a)": (
            [("a.png", a), ("a.cls", b"0"), ("b.png", b), ("b.cls", b"1"), ("a.png", c), ("a.cls", b"2")],
            ([0, 1, 2], ["a.png", "b.png", "a.png#2"]),
        ),
        "keys from file stems": ([("001.png", a), ("001.cls", b"1"), ("001.png", b), ("001.cls", b"0")], [1, 0]),
        "gif, bmp and tiff members": (
            [("g.gif", encoded(4, "GIF")), ("b.bmp", encoded(5, "BMP")), ("t.tif", encoded(6, "TIFF"))],
            (None, ["g.gif", "b.bmp", "t.tif"]),
        ),
        "two dots in a name": ([("img.001.png", a), ("img.002.png", b)], (None, ["img.001.png", "img.002.png"])),
        "a label per image of a sample": (
            [("s.1.png", a), ("s.1.cls", b"1"), ("s.2.png", b), ("s.2.cls", b"0")],
            [1, 0],
        ),
        "-1 as no label": ([("a.png", a), ("a.cls", b"-1"), ("b.png", b), ("b.cls", b"-1")], None),
        "-1 among labels": ([("a.png", a), ("a.cls", b"-1"), ("b.png", b), ("b.cls", b"1")], "refused"),
        "a json label 0.0": ([("a.png", a), ("a.json", b'{"label": 0.0}')], [0]),
        "a json label null": (
            [("a.png", a), ("a.json", b'{"label": null}'), ("b.png", b), ("b.json", b'{"label": 1}')],
            "refused",
        ),
        "a cls of 1.5": ([("a.png", a), ("a.cls", b"1.5")], "refused"),
        "a heic member": ([("a.png", a), ("h.heic", b"....")], (None, ["a.png"])),
    }
    outcomes = {}
    for i, (name, (members, want)) in enumerate(cases.items()):
        spec = tar_of(work / f"labels{i}.tar", members)
        got = read_as(spec, ["red circle", "blue circle", "red square"], want)
        outcomes[name] = got if want != "refused" else ("refused" if got == "refused" else "wrong")
    for i, order in enumerate([("red circle", "blue circle"), ("blue circle", "red circle")]):
        folder = work / f"named{i}"
        folder.mkdir()
        (folder / "classnames.txt").write_text("\n".join(order) + "\n")
        tar_of(folder / "0.tar", [("a.png", a), ("a.cls", str(order.index("blue circle")).encode())])
    spec = f"{work / 'named0' / '0.tar'}::{work / 'named1' / '0.tar'}"
    outcomes["two shards named in two orders"] = read_as(spec, ["red circle", "blue circle"], [1, 1])
    for name, values, want in [
        ("a float label column", [0.0, 1.0], [0, 1]),
        ("a float column with NaN", [0.0, float("nan")], "refused"),
        ("a label column of None", [None, 1], "refused"),
        ("labels of -1", [-1, -1], None),
    ]:
        path = work / f"{name.replace(' ', '_')}.parquet"
        pq.write_table(pa.table({"image": [a, b], "label": values}), path)
        got = read_as(str(path), ["red circle", "blue circle"], want)
        outcomes[name] = got if want != "refused" else ("refused" if got == "refused" else "wrong")
    return outcomes


def folders_and_twins(work: Path) -> dict[str, str]:
    data = toy_folder(work / "meta", classes=("red circle", "blue circle"), n=4)
    outcomes = {}
    (data / "metadata.csv").write_text("file_name,label\nred circle/0.png,red circle\n")
    outcomes["metadata.csv listing 1 of 8 beside class folders"] = read_as(
        str(data), ["red circle", "blue circle"], [1] * 4 + [0] * 4
    )
    (data / "metadata.csv").write_text("file_name,label\nred circle/0.png,blue circle\n")
    outcomes["metadata.csv against its folder"] = (
        "refused" if read_as(str(data), ["red circle", "blue circle"], None) == "refused" else "wrong"
    )
    (data / "metadata.csv").write_text("frame,date\nIMG_1,2024\n")
    outcomes["a camera export as metadata.csv"] = read_as(str(data), ["red circle", "blue circle"], [1] * 4 + [0] * 4)
    (data / "metadata.csv").unlink()
    os.symlink(data / "red circle" / "0.png", data / "red circle" / "link.png")
    outcomes["a link to a file beside it"] = read_as(str(data), ["red circle", "blue circle"], [1] * 4 + [0] * 4)
    listing = work / "twice.txt"
    listing.write_text("meta/red circle/1.png 0\nmeta/red circle/1.png 0\nmeta/./blue circle/1.png 1\n")
    outcomes["a list line twice"] = read_as(str(listing), ["red circle", "blue circle"], [0, 1])
    shard = tar_of(work / "twice.tar", [("a.png", encoded(1)), ("b.png", encoded(2))])
    outcomes["a shard named twice"] = read_as(f"{shard}::{shard}", ["red circle"], (None, ["a.png", "b.png"]))
    os.symlink(data / "red circle" / "1.png", data / "blue circle" / "other.png")
    got = read_as(str(data), ["red circle", "blue circle"], None)
    outcomes["one image in two class folders"] = "refused" if got == "refused" else "wrong"
    return outcomes


def pixel_depths(work: Path) -> dict[str, str]:
    rng = np.random.default_rng(0)
    eight = rng.integers(0, 256, (30, 40)).astype(np.int32)
    twelve = rng.integers(0, 4096, (30, 40)).astype(np.uint16)
    cases = {
        "8-bit values in a 32-bit TIFF": (Image.fromarray(eight, "I"), "i32.tif", eight.astype(np.uint8)),
        "12-bit values in a 16-bit PNG": (Image.fromarray(twelve), "twelve.png", (twelve / 16).astype(np.uint8)),
    }
    outcomes = {}
    for name, (image, file, want) in cases.items():
        image.save(work / file)
        got = np.asarray(ueo.load_image(work / file))[..., 0]
        outcomes[name] = "ok" if np.array_equal(got, want) else "wrong"
    return outcomes


def cache_housekeeping(work: Path, data: Path) -> dict[str, str]:
    outcomes = {}
    mine = work / "mine"
    (mine / "vocabulary").mkdir(parents=True)
    (mine / "vocabulary" / "notes.txt").write_text("mine")
    code, err = run(["cache", "clear", "--cache-dir", mine])
    outcomes["clear a folder that is not a cache"] = (
        ended(code, err) if (mine / "vocabulary" / "notes.txt").exists() else "wrong"
    )
    code, err = run(["cache", "clear", "--cache-dir", ""])
    outcomes["clear --cache-dir ''"] = ended(code, err)
    cache = work / "kept-cache"
    run(
        [
            "predict",
            *TOY,
            "--adapted",
            work / "runs" / "good" / "adapted.safetensors",
            "--data",
            data,
            "--cache-dir",
            cache,
            "--out",
            work / "hk",
            "--vocabulary",
            "none",
        ]
    )
    folder = next(cache.glob("v3/short*"))
    (folder / "notes.shard").write_text("mine")
    code, err = run(["cache", "prune", "--cache-dir", cache])
    outcomes["prune beside a user's .shard"] = ended(code, err) if (folder / "notes.shard").exists() else "wrong"
    (cache / "settings.json").write_text('{"max_size": -1}')
    shards = list(cache.rglob("*.shard"))
    code, err = run(
        [
            "predict",
            *TOY,
            "--adapted",
            work / "runs" / "good" / "adapted.safetensors",
            "--data",
            data,
            "--cache-dir",
            cache,
            "--out",
            work / "hk2",
            "--vocabulary",
            "none",
        ]
    )
    outcomes["a bound of -1 in settings.json"] = ended(code, err) if all(p.exists() for p in shards) else "wrong"
    code, err = run(["cache", "bound", "5MB", "--cache-dir", cache])
    outcomes["ueo cache bound 5MB"] = (
        ended(code, err) if json.loads((cache / "settings.json").read_text())["max_size"] == 5_000_000 else "wrong"
    )
    return outcomes


def states_and_weights(work: Path, data: Path) -> dict[str, str]:
    from safetensors.torch import save_file

    outcomes = {}
    weights = work / "w.safetensors"
    model = ueo.load_clip("ueo-tiny-vit", device="cpu", seed=3).model
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    tiny = ["--model", "ueo-tiny-vit", "--device", "cpu", "--quiet", "--vocabulary", "none"]
    run(
        [
            "fit",
            *tiny,
            "--pretrained",
            weights,
            "--data",
            data,
            "--classes",
            "red circle,blue circle",
            "--epochs",
            "1",
            "--out",
            work / "wfit",
        ]
    )
    tuned = bytearray(weights.read_bytes())
    middle = len(tuned) // 2 & ~3
    for at in range(middle, middle + 4096, 4):
        tuned[at] ^= 1
    (work / "tuned.safetensors").write_bytes(bytes(tuned))
    code, err = run(
        [
            "predict",
            *tiny,
            "--adapted",
            work / "wfit" / "adapted.safetensors",
            "--data",
            data,
            "--pretrained",
            work / "tuned.safetensors",
            "--out",
            work / "wp",
        ]
    )
    outcomes["weights tuned in the middle, same size and ends"] = ended(code, err)
    state = ueo.AdaptedState.load(work / "wfit" / "adapted.safetensors")
    state.threshold = {**state.threshold, "threshold": 5.0}
    state.save(work / "edited.safetensors")
    code, err = run(["predict", *tiny, "--adapted", work / "edited.safetensors", "--data", data, "--out", work / "wq"])
    outcomes["a stored threshold of 5"] = "warned" if code == 0 and "stored threshold" in err else "wrong"
    classifier = ueo.load_adapted(work / "wfit" / "adapted.safetensors", device="cpu")
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        classifier.threshold = 5.0
    outcomes["classifier.threshold = 5"] = "warned" if caught else "wrong"
    (work / "export").mkdir()
    (work / "export" / "README.md").write_text("mine")
    try:
        classifier.export(work / "export")
        outcomes["export over a user's README"] = "wrong"
    except ueo.UeoError:
        outcomes["export over a user's README"] = (
            "refused" if (work / "export" / "README.md").read_text() == "mine" else "wrong"
        )
    try:
        ueo.discover(classifier, sorted(data.rglob("*.png"))[:4], vocabulary=123)
        outcomes["discover(vocabulary=123)"] = "wrong"
    except ueo.UeoError:
        outcomes["discover(vocabulary=123)"] = "refused"
    except Exception:
        outcomes["discover(vocabulary=123)"] = "traceback"
    two = sorted(data.rglob("*.png"))[:2]
    found = ueo.discover(classifier, two, vocabulary="none")
    outcomes["absent classes from 2 images"] = "ok" if found.too_few and not found.absent_classes else "wrong"
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/hostile_probe.json")
    args = parser.parse_args()
    started = time.time()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        os.environ["UEO_CACHE_DIR"] = str(work / "default-cache")
        data = toy_folder(work / "data")
        good = work / "runs" / "good"
        code, err = run(
            ["fit", *FIT, "--data", data, "--test", data, "--classes", "red circle,blue circle", "--out", good]
        )
        assert code == 0, err
        adapted = good / "adapted.safetensors"
        families = {
            "damaged metrics.json (ueo report)": damaged_metrics(work, good),
            "class names (ueo fit)": class_names(work, data),
            "Python API inputs (Classifier.predict)": api_inputs(work, data, adapted),
            "--config YAML (ueo fit)": config_files(work, data),
            "--vocabulary files (ueo discover)": vocabularies(work, data, adapted),
            "images rewritten in place (ueo predict, cached)": rewritten_images(work, adapted),
            "one run given several ways (ueo report)": duplicated_runs(work, good),
            "labels and samples in containers (ueo.read_images)": container_labels(work),
            "metadata.csv and images reached twice (ueo.read_images)": folders_and_twins(work),
            "pixels of more than 8 bits (ueo.load_image)": pixel_depths(work),
            "the cache's housekeeping (ueo cache, ueo predict)": cache_housekeeping(work, data),
            "weights, states, thresholds, export, discovery": states_and_weights(work, data),
        }
    total = Counter(outcome for family in families.values() for outcome in family.values())
    for name, family in families.items():
        counts = Counter(family.values())
        print(f"{name}: {len(family)} inputs: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        for case, outcome in family.items():
            if outcome in ("traceback", "wrong"):
                print(f"   DEFECT {case}: {outcome}")
    print(f"all: {sum(total.values())} inputs: " + ", ".join(f"{k} {v}" for k, v in sorted(total.items())))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"families": families, "total": dict(total), "seconds": round(time.time() - started)}, indent=1)
    )
    print(f"wrote {out} ({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
