"""The decode cache against decoding in memory (today's path before the cache), in one run, on generated JPEGs.

    python benchmarks/decode_cache.py --json benchmarks/results/decode_cache-cpu.json
    python benchmarks/decode_cache.py --sizes 200 400 --bench-images 60 --photo 300 500    # a quick check
    python benchmarks/decode_cache.py --sizes --json bench-grid.json                        # the bench grid only

Figures, each beside the in-memory path measured in the same run:
  first pass   images/s of check + decode + cache write (the cache) vs check pass + in-memory decode;
  second run   seconds from start to the first training step, per 10k images (the cache: nothing is
               decoded; in memory: everything is decoded again);
  memory       peak RssAnon of `ueo fit` (a tiny ViT, 1 epoch) for each collection size;
  bench grid   wall time of `ueo bench` (2 methods x 2 seeds x 2 scenarios on one generated domain), and
               whether both give the same metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import ueo
from ueo.data.folders import read_folder
from ueo.files import write_text
from ueo.images.cache import DecodeCache
from ueo.images.reading import ImageFiles, check_images
from ueo.views.fastpath import decode_all, decoded_short_side


def write_photos(folder: Path, n: int, sides: tuple[int, int], classes: list[str], seed: int = 0) -> Path:
    """``n`` JPEGs of random sizes (smooth colour fields with a disc), spread over class folders."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        target = folder / classes[i % len(classes)]
        target.mkdir(parents=True, exist_ok=True)
        w, h = (int(v) for v in rng.integers(sides[0], sides[1] + 1, size=2))
        small = rng.integers(0, 255, (max(1, h // 16), max(1, w // 16), 3), dtype=np.uint8)
        Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR).save(target / f"{i:06d}.jpg", quality=88)
    return folder


def textured(width: int, height: int, seed: int) -> Image.Image:
    """A stand-in for a photo whose every resampling step shows: noise at four scales over a checkerboard
    of edges and a colour ramp (a smooth field would hide the differences between resamplers)."""
    rng = np.random.default_rng(seed)
    field = np.zeros((height, width, 3))
    for scale in (1, 4, 16, 64):
        noise = rng.integers(0, 256, (max(1, height // scale), max(1, width // scale), 3), dtype=np.uint8)
        field += np.asarray(Image.fromarray(noise).resize((width, height), Image.Resampling.BICUBIC)) / scale**0.5
    field = field / field.max() * 190
    yy, xx = np.mgrid[0:height, 0:width]
    field[((xx // 19 + yy // 13) % 2) == 1] *= 0.6
    field[..., 1] += 60 * xx / width
    return Image.fromarray(field.clip(0, 255).astype(np.uint8))


def tiny_vit(folder: Path, image_size: int) -> str:
    """A ViT of real input size but tiny compute (patch 32, 2 layers) as an open_clip local-dir model in
    ``folder``, so that decoding matters as it does on a GPU (the cache keeps images at twice the input side,
    as for ViT-B/16); returns its model name."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "embed_dim": 64,
        "vision_cfg": {"image_size": image_size, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    }
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": config, "preprocess_cfg": {}}))
    return f"local-dir:{folder}"


def peak_anon_kb(command: list[str], env: dict, limit: float | None = None) -> tuple[int, float, int | None]:
    """(peak RssAnon in kB, wall seconds, exit code) of a command, sampled every 20 ms. With ``limit``: a
    run past that many seconds is stopped with SIGINT (it saves a checkpoint and exits), and its exit code
    is given as None (the peak is over those seconds)."""
    import signal

    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak, stopped = 0, False
    while process.poll() is None:
        try:
            with open(f"/proc/{process.pid}/status") as f:
                line = next(line for line in f if line.startswith("RssAnon"))
            peak = max(peak, int(line.split()[1]))
        except (OSError, StopIteration):
            pass
        if limit is not None and not stopped and time.perf_counter() - start > limit:
            process.send_signal(signal.SIGINT)
            stopped = True
        time.sleep(0.02)
    return peak, time.perf_counter() - start, None if stopped else process.returncode


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--sizes", type=int, nargs="*", default=[2000, 8000, 32000], help="collection sizes (none: the bench grid only)"
    )
    parser.add_argument("--photo", type=int, nargs=2, default=(300, 700), help="image sides, min max")
    parser.add_argument("--bench-images", type=int, default=600, help="images of the generated bench domain")
    parser.add_argument(
        "--image-size",
        type=int,
        default=224,
        help="input side of the tiny ViT the runs use (the cache keeps images at twice this side)",
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    python, threads = sys.executable, os.cpu_count() or 2
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = tiny_vit(tmp / "model", args.image_size)
        side = decoded_short_side(ueo.load_clip(model, device="cpu").views)
        results = {
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {threads} cores",
            "model": f"ViT, patch 32, 2 layers, {args.image_size} px input (cache side {side})",
            "photo_sides": list(args.photo),
            "sizes": {},
        }
        for n in args.sizes:
            data = write_photos(tmp / f"data{n}", n, tuple(args.photo), ["cat", "dog"])
            images = read_folder(data, ["cat", "dog"])
            row = {}
            start = time.perf_counter()  # in memory: the check pass, then a second decode into memory
            kept, _ = check_images(images, threads=threads)
            decode_all(ImageFiles(kept), side, threads=threads)
            row["memory_first_pass_img_s"] = n / (time.perf_counter() - start)
            row["memory_second_run_s_per_10k"] = (time.perf_counter() - start) / n * 10_000
            store = tmp / f"cache{n}"
            start = time.perf_counter()
            DecodeCache(store).ensure(images, side, threads=threads)
            row["cache_first_pass_img_s"] = n / (time.perf_counter() - start)
            start = time.perf_counter()
            pixels, _ = DecodeCache(store).ensure(images, side, threads=threads)  # a new run: nothing decoded
            pixels.image(0)
            row["cache_second_run_s_per_10k"] = (time.perf_counter() - start) / n * 10_000
            for name, extra in (("memory", ["--no-cache"]), ("cache", ["--cache-dir", str(store)])):
                fixed = "--device cpu --classes cat,dog --epochs 1 --batch-size 64 --eval-batch-size 256 --quiet --no-report"
                command = [
                    python,
                    "-m",
                    "ueo",
                    "fit",
                    "--model",
                    model,
                    "--data",
                    str(data),
                    *fixed.split(),
                    "--out",
                    str(tmp / f"run-{name}{n}"),
                    *extra,
                ]
                kb, seconds, code = peak_anon_kb(command, dict(os.environ))
                row[f"{name}_fit_peak_rss_anon_mb"] = kb / 1024
                row[f"{name}_fit_seconds"] = seconds
                assert code == 0, (name, n)
            print(n, json.dumps({k: round(v, 2) for k, v in row.items()}), flush=True)
            results["sizes"][str(n)] = row

        # the bench grid: 2 methods x 2 seeds x 2 scenarios on one generated Office-31 domain
        classes = ueo.experiments.protocols.class_names("office31")
        root = tmp / "office31"
        write_photos(root / "amazon" / "images", args.bench_images, tuple(args.photo), classes, seed=1)
        grid = [
            "bench",
            "--benchmark",
            "office31",
            "--root",
            str(root),
            "--model",
            model,
            *[
                "--domains",
                "amazon",
                "--scenarios",
                "oda",
                "opda",
                "--methods",
                "ueo",
                "infomax",
                "--seeds",
                "1",
                "2",
                "--device",
                "cpu",
                "--epochs",
                "1",
                "--quiet",
                "--no-report",
            ],
        ]
        tables = {}
        for name, extra in (("memory", ["--no-cache"]), ("cache", ["--cache-dir", str(tmp / "bench-cache")])):
            start = time.perf_counter()
            subprocess.run(
                [python, "-m", "ueo", *grid, "--out", str(tmp / f"bench-{name}"), *extra],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            results[f"bench_{name}_seconds"] = time.perf_counter() - start
            tables[name] = (tmp / f"bench-{name}" / "table.csv").read_text()
        results["bench_speedup"] = results["bench_memory_seconds"] / results["bench_cache_seconds"]
        results["bench_same_metrics"] = tables["memory"] == tables["cache"]
    sizes = sorted(int(n) for n in results["sizes"])
    if len(sizes) > 1:
        first, last = results["sizes"][str(sizes[0])], results["sizes"][str(sizes[-1])]
        per_10k = 10_000 / (sizes[-1] - sizes[0])
        for name in ("memory", "cache"):
            growth = last[f"{name}_fit_peak_rss_anon_mb"] - first[f"{name}_fit_peak_rss_anon_mb"]
            results[f"{name}_rss_anon_growth_mb_per_10k"] = growth * per_10k
    print(json.dumps({k: v for k, v in results.items() if k != "sizes"}, indent=2))
    if args.json:
        write_text(args.json, json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
