"""How closely the ways of using an adapted model agree on photo-sized images: `ueo predict` (reading the
decode cache with raw, auto or JPEG entries), ``ueo.load_adapted`` (decoding each file itself) and the
export's own lines (plain PyTorch + open_clip, no ueo). The figures the docs and the export's README state.

Two models, each fitted for one epoch on textured photos of 150-2000 px (4:3, 3:4, 10:3, 3:10; JPEG and
PNG), then every image scored every way: a ViT of real input size (224 px; random weights, tiny compute)
and the shipped toy CLIP (64 px, trained: its scores move more with the pixels).

    python benchmarks/agreement.py --out benchmarks/results/agreement.json
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from decode_cache import textured, tiny_vit  # (beside this script)

import ueo
from ueo.cli import main as ueo_main

# real benchmark sizes (width, height): 4:3 and 3:4, 10:3 and 3:10, large, and smaller than a 224 px input
SIZES = [(300, 225), (500, 375), (375, 500), (1000, 300), (300, 1000), (2000, 1500), (150, 100)]
SIZES += [(640, 480), (480, 640), (1600, 1200), (1200, 1600), (800, 600)]


def write_photos(folder: Path, seed: int) -> None:
    """Each size as a JPEG (quality 90) and a PNG, spread over cat, dog and horse folders."""
    for i, (width, height) in enumerate(SIZES):
        for j, ext in enumerate(("jpg", "png")):
            target = folder / ("cat", "dog", "horse")[(2 * i + j) % 3]
            target.mkdir(parents=True, exist_ok=True)
            options = {"quality": 90} if ext == "jpg" else {}
            textured(width, height, seed=seed + i).save(target / f"{i}_{width}x{height}.{ext}", **options)


def run(args) -> None:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = ueo_main([str(a) for a in args])
    if code != 0:
        raise SystemExit(f"ueo {args[0]} failed ({code})")


def scores_of(csv_path: Path) -> dict[str, tuple[str, float]]:
    with open(csv_path, newline="") as f:
        return {r["path"]: (r["prediction"], float(r["score"])) for r in csv.DictReader(f)}


def compare(a: dict, b: dict) -> dict:
    gaps = np.array([abs(a[p][1] - b[p][1]) for p in a])
    return {
        "max": float(gaps.max()),
        "median": float(np.median(gaps)),
        "decisions_changed": int(sum(a[p][0] != b[p][0] for p in a)),
        "images": len(a),
    }


def measure(tmp: Path, photos: Path, model: list[str]) -> dict:
    common = ["--device", "cpu", "--quiet", "--no-discover", "--no-report"]
    fit = ["fit", *model, "--data", photos, "--classes", "cat,dog", "--epochs", "1", "--batch-size", "8"]
    run([*fit, "--lr-prompt", "0.05", "--lr-norm", "0.05", "--out", tmp / "fit", *common])
    state = tmp / "fit" / "adapted.safetensors"
    ways = {}
    for fmt in ("raw", "auto", "jpeg"):
        out = tmp / f"predict-{fmt}"
        cache = ["--cache-format", fmt, "--cache-dir", tmp / f"cache-{fmt}"]
        run(["predict", "--adapted", state, "--data", photos, "--out", out, *cache, *common])
        ways[f"predict ({fmt} entries)"] = scores_of(out / "predictions.csv")
    paths = sorted(ways["predict (raw entries)"])
    classifier = ueo.load_adapted(state, device="cpu")
    ways["load_adapted"] = {p: (r.label, r.score) for p, r in zip(paths, classifier.predict(paths))}
    run(["export", "--adapted", state, "--out", tmp / "export"])
    code = re.search(r"```python\n(.*?)```", (tmp / "export" / "README.md").read_text(), re.S).group(1)
    code = code.replace('"path/to/this/folder"', repr(str(tmp / "export")))
    program = code + "\nimport sys\nprint(json.dumps([classify(p) for p in sys.argv[1:]]))\n"
    done = subprocess.run([sys.executable, "-c", program, *paths], capture_output=True, text=True, check=True)
    plain = json.loads(done.stdout.strip().splitlines()[-1])
    ways["export's lines"] = {p: (label, score) for p, (label, score, _) in zip(paths, plain)}
    size = classifier.bundle.image_size
    from PIL import Image

    whole = {p for p in paths if min(Image.open(p).size) <= 2 * size}
    pairs = [("export's lines", other) for other in ways if other != "export's lines"]
    pairs += [("load_adapted", f"predict ({fmt} entries)") for fmt in ("raw", "auto", "jpeg")]
    result = {}
    for a, b in pairs:
        entry = compare(ways[a], ways[b])
        kept = {p: ways[a][p] for p in ways[a] if p in whole}
        if kept:
            entry["max_images_kept_whole"] = compare(kept, ways[b])["max"]
        result[f"{a} vs {b}"] = entry
        print(
            f"  {a} vs {b}: max {entry['max']:.2g} (kept whole: {entry.get('max_images_kept_whole', float('nan')):.2g}),"
            f" median {entry['median']:.2g}, {entry['decisions_changed']} of {entry['images']} decisions changed"
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/agreement.json")
    args = parser.parse_args()
    started = time.time()
    result: dict = {"sizes": SIZES, "photo_sets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = {
            "ViT of 224 px, random weights (patch 32, 2 layers)": ["--pretrained", "none"],
            "the toy CLIP (64 px, trained)": ["--model", "ueo-toy-rn", "--pretrained", "toyworld"],
        }
        vit = tiny_vit(tmp / "model", 224)
        for photo_seed in (0, 1000):
            photos = tmp / f"photos{photo_seed}"
            write_photos(photos, photo_seed)
            for i, (name, model) in enumerate(models.items()):
                print(f"photo set {photo_seed}, {name}")
                work = tmp / f"{photo_seed}-{i}"
                work.mkdir()
                model = ["--model", vit, *model] if i == 0 else model
                result["photo_sets"].setdefault(str(photo_seed), {})[name] = measure(work, photos, model)
    result["seconds"] = round(time.time() - started)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
