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
from ueo.toyworld import TARGET_STYLE, render


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
            run([*args[:-4], "--no-cache", "--vocabulary", "none", "--out", work / f"{folder.name}_c"])
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
