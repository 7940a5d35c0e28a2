"""The decode cache at scale, on generated photos (CPU): disk per image, first-pass and read speed for raw
and JPEG entries, the second run's start, and the peak memory of `ueo fit`, at 10k and 100k images.

    python benchmarks/cache_scale.py --sizes 10000 100000 --json benchmarks/results/cache_scale-cpu.json
    python benchmarks/cache_scale.py --sizes 300 --fit-sizes 300 --sample 100     # a quick check

For each size and format (raw pixels; JPEG quality 95, 4:4:4; auto = JPEG for images shrunk to the cap):
  disk        bytes of shards per image;
  first pass  images/s of `DecodeCache.ensure` on an empty cache (decode, shrink, encode, write);
  second run  seconds from a new DecodeCache to the first image read (nothing is decoded), per 10k;
  read        images/s on one core of reading entries back (raw: a memory map; JPEG: decoded by PIL);
and, with the default format, the peak RssAnon and wall time of `ueo fit` (a ViT of real input size,
224 px, but tiny compute: 2 layers) over the whole collection for one epoch. Lossless WebP is measured on a
sample (size and decode speed) to show why it is not offered. The same collection is also read as
WebDataset shards at the first size (listing + first pass).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from decode_cache import peak_anon_kb, tiny_vit
from PIL import Image

import ueo
from ueo.data.folders import read_folder
from ueo.files import write_text
from ueo.images.cache import DecodeCache
from ueo.views.fastpath import decoded_short_side

FORMATS = ("raw", "jpeg", "auto")


def texture(side: int, seed: int) -> np.ndarray:
    """A photo-like texture: noise at three scales (what JPEG compresses as it does photos: ~100 kB at
    quality 90 for 600 x 600, where a smooth field takes a few kB)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((side, side, 3), np.float32)
    for step, weight in ((32, 1.0), (8, 0.6), (2, 0.35)):
        small = rng.integers(0, 255, (side // step, side // step, 3), dtype=np.uint8)
        out += np.asarray(Image.fromarray(small).resize((side, side), Image.Resampling.BILINEAR), np.float32) * weight
    return (out * (255 / out.max())).astype(np.uint8)


def _write(job):
    folder, start, stop, sides = job
    textures = [texture(sides[1], seed) for seed in range(4)]
    rng = np.random.default_rng(start)
    for i in range(start, stop):
        w, h = (int(v) for v in rng.integers(sides[0], sides[1] + 1, size=2))
        t = textures[i % 4]
        y, x = (int(v) for v in rng.integers(0, [sides[1] - h + 1, sides[1] - w + 1]))
        pixels = t[y : y + h, x : x + w][:, :, rng.permutation(3)]
        target = folder / ("cat" if i % 2 else "dog")
        Image.fromarray(pixels).save(target / f"{i:07d}.jpg", quality=90)


def write_photos(folder: Path, n: int, sides: tuple[int, int]) -> Path:
    """``n`` textured JPEGs of random sizes in two class folders, written by 2 processes."""
    from concurrent.futures import ProcessPoolExecutor

    for name in ("cat", "dog"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    step = 5000
    jobs = [(folder, s, min(s + step, n), sides) for s in range(0, n, step)]
    with ProcessPoolExecutor(max_workers=2) as pool:
        list(pool.map(_write, jobs))
    return folder


def shard_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*.shard"))


def read_speed(pixels, sample: int) -> float:
    """Images/s of reading ``sample`` entries back on this thread (the first read of each: checked)."""
    indices = np.random.default_rng(0).choice(len(pixels), size=min(sample, len(pixels)), replace=False)
    start = time.perf_counter()
    for i in indices:
        pixels.image(int(i)).sum()  # touch every byte
    return len(indices) / (time.perf_counter() - start)


def webp_figures(pixels, sample: int) -> dict:
    """Lossless WebP of decoded entries: bytes per image and decodes/s on one core."""
    sizes, seconds = [], 0.0
    for i in range(min(sample, len(pixels))):
        image = Image.fromarray(pixels.image(i).numpy().transpose(1, 2, 0))
        buffer = io.BytesIO()
        image.save(buffer, "WEBP", lossless=True, method=0)
        sizes.append(buffer.tell())
        start = time.perf_counter()
        with Image.open(io.BytesIO(buffer.getvalue())) as again:
            again.load()
        seconds += time.perf_counter() - start
    return {"webp_lossless_bytes_per_image": float(np.mean(sizes)), "webp_lossless_read_img_s": len(sizes) / seconds}


def as_shards(folder: Path, target: Path, per_shard: int = 1000) -> Path:
    """The folder's images as WebDataset-style tar shards (stdlib tarfile; key.jpg + key.cls)."""
    target.mkdir(parents=True)
    files = sorted(p for p in folder.rglob("*.jpg"))
    for start in range(0, len(files), per_shard):
        with tarfile.open(target / f"{start // per_shard:05d}.tar", "w") as tar:
            for i, path in enumerate(files[start : start + per_shard], start):
                tar.add(path, arcname=f"{i:07d}.jpg")
                label = str(["cat", "dog"].index(path.parent.name)).encode()
                info = tarfile.TarInfo(f"{i:07d}.cls")
                info.size = len(label)
                tar.addfile(info, io.BytesIO(label))
    (target / "classnames.txt").write_text("cat\ndog\n")
    return target


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--fit-sizes", type=int, nargs="*", default=None, help="sizes to run `ueo fit` on (all)")
    parser.add_argument("--photo", type=int, nargs=2, default=(300, 900), help="image sides, min max")
    parser.add_argument("--sample", type=int, default=2000, help="entries read back for the read speed")
    parser.add_argument(
        "--large", type=int, default=50_000, help="from this size on, only JPEG entries (raw ones would fill the disk)"
    )
    parser.add_argument("--fit-limit", type=float, default=None, help="seconds after which `ueo fit` is stopped")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    threads = os.cpu_count() or 2
    fit_sizes = args.sizes if args.fit_sizes is None else args.fit_sizes
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        tmp = Path(tmp)
        model = tiny_vit(tmp / "model", 224)
        side = decoded_short_side(ueo.load_clip(model, device="cpu").views)
        results = {
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {threads} cores",
            "cache_side": side,
            "photo_sides": list(args.photo),
            "sizes": {},
        }
        for n in args.sizes:
            start = time.perf_counter()
            data = write_photos(tmp / f"data{n}", n, tuple(args.photo))
            row: dict = {"generate_s": time.perf_counter() - start}
            row["source_bytes_per_image"] = sum(p.stat().st_size for p in data.rglob("*.jpg")) / n
            images = read_folder(data, ["cat", "dog"])
            formats = FORMATS if n < args.large else ("jpeg",)
            fit_format = "auto" if "auto" in formats else formats[0]
            row["fit_cache_format"] = fit_format
            for fmt in formats:
                store = tmp / f"cache-{fmt}{n}"
                start = time.perf_counter()
                DecodeCache(store, format=fmt, max_size="10TB").ensure(images, side, threads=threads)
                row[f"{fmt}_first_pass_img_s"] = n / (time.perf_counter() - start)
                row[f"{fmt}_bytes_per_image"] = shard_bytes(store) / n
                start = time.perf_counter()
                pixels, _ = DecodeCache(store, format=fmt, max_size="10TB").ensure(images, side, threads=threads)
                pixels.image(0)
                row[f"{fmt}_second_run_s_per_10k"] = (time.perf_counter() - start) / n * 10_000
                row[f"{fmt}_read_img_s_one_core"] = read_speed(pixels, args.sample)
                if fmt == "raw" and n == args.sizes[0]:
                    row |= webp_figures(pixels, min(args.sample, 300))
                if fmt != fit_format:
                    for p in store.rglob("*.shard"):
                        p.unlink()
            if n in fit_sizes:
                fixed = "--device cpu --classes cat,dog --epochs 1 --batch-size 64 --eval-batch-size 256 --quiet"
                command = [sys.executable, "-m", "ueo", "fit", "--model", model, "--data", str(data)]
                command += [*fixed.split(), "--no-report", "--no-discover", "--out", str(tmp / f"run{n}")]
                command += ["--cache-dir", str(tmp / f"cache-{fit_format}{n}"), "--cache-max-size", "10TB"]
                kb, seconds, code = peak_anon_kb(command, dict(os.environ), limit=args.fit_limit)
                assert code in (0, None), n
                row["fit_peak_rss_anon_mb"], row["fit_seconds"] = kb / 1024, seconds
                row["fit_finished"] = code == 0  # else stopped after --fit-limit seconds (the peak is over those)
            if n == args.sizes[0] and n <= 20_000:  # (the shard path at one size: listing + first pass)
                shards = as_shards(data, tmp / f"shards{n}")
                start = time.perf_counter()
                listed = ueo.read_images(str(shards), ["cat", "dog"])
                row["wds_list_s_per_10k"] = (time.perf_counter() - start) / n * 10_000
                start = time.perf_counter()
                DecodeCache(tmp / f"cache-wds{n}", max_size="10TB").ensure(listed, side, threads=threads)
                row["wds_first_pass_img_s"] = n / (time.perf_counter() - start)
            for p in (tmp / f"cache-{fit_format}{n}").rglob("*.shard"):
                p.unlink()
            for p in data.rglob("*.jpg"):  # room for the next size
                p.unlink()
            print(n, json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
            results["sizes"][str(n)] = row
            if args.json:  # what is measured so far survives a later failure
                write_text(args.json, json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
