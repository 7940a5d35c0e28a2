"""How closely the ways of using an adapted model agree on photo-sized images: `ueo predict` (reading the
decode cache with raw, auto or JPEG entries), ``ueo.load_adapted`` (decoding each file itself) and the
export's own lines (plain PyTorch + open_clip, no ueo). The figures the docs and the export's README state.

A ViT of real input size (224 px; random weights, tiny compute) fitted for one epoch on textured photos of
300-2000 px (4:3, 3:4, 10:3, 3:10; JPEG and PNG), then every image scored every way.

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

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from decode_cache import tiny_vit  # noqa: E402

import ueo  # noqa: E402
from helpers import PHOTO_SIZES, write_photos  # noqa: E402
from ueo.cli import main as ueo_main  # noqa: E402

SIZES = PHOTO_SIZES + [(640, 480), (480, 640), (1600, 1200), (1200, 1600), (800, 600)]


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/agreement.json")
    args = parser.parse_args()
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        photos = tmp / "photos"
        write_photos(photos, sizes=SIZES, classes=("cat", "dog", "horse"))
        model = tiny_vit(tmp / "model", 224)
        common = ["--device", "cpu", "--quiet", "--no-discover", "--no-report"]
        fit = ["fit", "--model", model, "--pretrained", "none", "--data", photos, "--classes", "cat,dog"]
        run(
            [
                *fit,
                "--epochs",
                "1",
                "--batch-size",
                "8",
                "--lr-prompt",
                "0.05",
                "--lr-norm",
                "0.05",
                "--out",
                tmp / "fit",
                *common,
            ]
        )
        state = tmp / "fit" / "adapted.safetensors"
        ways = {}
        for fmt in ("raw", "auto", "jpeg"):
            out = tmp / f"predict-{fmt}"
            run(
                [
                    "predict",
                    "--adapted",
                    state,
                    "--data",
                    photos,
                    "--out",
                    out,
                    "--cache-format",
                    fmt,
                    "--cache-dir",
                    tmp / f"cache-{fmt}",
                    *common,
                ]
            )
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
    result = {"model": "ViT of 224 px, random weights (patch 32, 2 layers)", "sizes": SIZES, "pairs": {}}
    for a, b in pairs:
        entry = compare(ways[a], ways[b])
        kept = {p: ways[a][p] for p in ways[a] if p in whole}
        if kept:
            entry["max_images_kept_whole"] = compare(kept, ways[b])["max"]
        result["pairs"][f"{a} vs {b}"] = entry
        print(
            f"{a} vs {b}: max {entry['max']:.2g} (kept whole: {entry.get('max_images_kept_whole', float('nan')):.2g}), "
            f"median {entry['median']:.2g}, {entry['decisions_changed']} of {entry['images']} decisions changed"
        )
    result["seconds"] = round(time.time() - started)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
