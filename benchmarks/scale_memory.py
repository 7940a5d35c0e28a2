"""A million images with the defaults: the peak memory and wall time of `ueo fit` at growing collection sizes,
with the default bound and with a bound of a tenth of what the collection takes in the cache; the cache's
disk per image against the source JPEGs; how fast entries are read back (one core, and the batch-ahead pool)
against a real model's step on this CPU.

    python benchmarks/scale_memory.py --sizes 10000 100000 --json benchmarks/results/scale_memory-cpu.json
    python benchmarks/scale_memory.py --sizes 300 1000 --json /tmp/quick.json      # a quick check

Photos: generated textured JPEGs (quality 90) of 300-600 px a side, about what Office-Home's and DomainNet's
photos measure; the model: a ViT of real input size (224 px: the cache keeps images whole up to 448 px) but
tiny compute (2 layers), one epoch, everything else the defaults. Each fit runs in a process of its own with
its own cache folder; its peak RssAnon is sampled every 20 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from cache_scale import shard_bytes, write_photos
from decode_cache import peak_anon_kb, tiny_vit

import ueo
from ueo.files import write_text
from ueo.images.cache import DecodeCache
from ueo.views.fastpath import BatchViews


def fit_run(model: str, data: Path, cache: Path, out: Path, bound: str | None) -> dict:
    command = [sys.executable, "-m", "ueo", "fit", "--model", model, "--pretrained", "none", "--device", "cpu"]
    command += ["--data", str(data), "--classes", "cat,dog", "--epochs", "1", "--out", str(out), "--quiet"]
    command += ["--no-report", "--no-discover", "--cache-dir", str(cache)]
    command += ["--cache-max-size", bound] if bound else []
    peak, seconds, code = peak_anon_kb(command, dict(os.environ, OMP_NUM_THREADS="2"))
    if code != 0:
        raise SystemExit(f"ueo fit failed ({code}): {' '.join(command)}")
    return {"peak_anon_mb": round(peak / 1024, 1), "seconds": round(seconds, 1), "cache_bytes": shard_bytes(cache)}


def read_rates(images, model_name: str, sample: int = 512) -> dict:
    """Images/s of reading JPEG entries back: one by one on this thread, and a training epoch's views through
    the batch-ahead pool; beside them, a ViT-B/16 tuning step's images/s on this CPU (random weights)."""
    with tempfile.TemporaryDirectory() as tmp:
        subset = images.subset(range(min(sample, len(images))))
        pixels, _ = DecodeCache(tmp, format="jpeg", say=lambda _: None).ensure(subset, 448)
        start = time.perf_counter()
        for i in range(len(pixels)):
            pixels.image(i)
        one_core = len(pixels) / (time.perf_counter() - start)
        bundle = ueo.load_clip(model_name, device="cpu")
        source = BatchViews(pixels, bundle.views, seed=0, device="cpu")
        batches = [list(range(s, min(s + 64, len(pixels)))) for s in range(0, len(pixels), 64)]
        start = time.perf_counter()
        for views, _, _ in source.train_batches(batches, epoch=1):
            views.sum()
        views_rate = len(pixels) / (time.perf_counter() - start)
    big = ueo.load_clip("ViT-B-16", device="cpu")
    learner_batch = torch.randn(8, 3, 224, 224, requires_grad=True)
    start = time.perf_counter()
    for _ in range(2):
        big.model.encode_image(learner_batch).sum().backward()  # forward + input-gradient backward
    step_rate = 16 / (time.perf_counter() - start)
    return {
        "jpeg_entries_one_core_img_s": round(one_core, 1),
        "train_views_from_jpeg_entries_img_s": round(views_rate, 1),
        "vit_b16_tuning_step_img_s": round(step_rate, 2),
    }


def second_call(images, model_name: str, cache: Path, sample: int = 2048) -> dict:
    """Images/s of ``ueo.evaluate`` in a notebook: decoding every image (cache=False, what every call paid
    before) against the call after a ``ueo.fit`` of the same images through the decode cache (the default)."""
    subset = images.subset(range(min(sample, len(images))))
    bundle = ueo.load_clip(model_name, device="cpu")
    rate = {}
    start = time.perf_counter()
    ueo.evaluate(bundle, subset, class_names=["cat", "dog"], cache=False, progress=False)
    rate["evaluate_decoding_every_image_img_s"] = round(len(subset) / (time.perf_counter() - start), 1)
    ueo.fit(bundle, ["cat", "dog"], subset, epochs=1, cache=cache, eval_train=False, progress=False)
    start = time.perf_counter()
    ueo.evaluate(bundle, subset, class_names=["cat", "dog"], cache=cache, progress=False)
    rate["evaluate_after_fit_img_s"] = round(len(subset) / (time.perf_counter() - start), 1)
    return {"images": len(subset), **rate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--json", default="benchmarks/results/scale_memory-cpu.json")
    parser.add_argument("--work", default=None, help="folder for the photos and caches (default: a temporary one)")
    parser.add_argument("--memory-only", action="store_true", help="the fits only: no read-back rates, no second call")
    parser.add_argument("--default-bound-only", action="store_true", help="no second fit with a tenth of the bound")
    args = parser.parse_args()
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d"), "runs": []}
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        model = tiny_vit(work / "model", 224)
        for n in args.sizes:
            data = work / f"photos{n}"
            started = time.time()
            write_photos(data, n, (300, 600))
            source_bytes = sum(p.stat().st_size for p in data.rglob("*.jpg"))
            print(f"{n} photos written ({source_bytes / 1e9:.2f} GB, {time.time() - started:.0f} s)", flush=True)
            roomy = fit_run(model, data, work / f"cache{n}", work / f"fit{n}", None)
            tenth = str(max(int(roomy["cache_bytes"] / 10), 10**6))
            tight = (
                None
                if args.default_bound_only
                else fit_run(model, data, work / f"tight{n}", work / f"tightfit{n}", tenth)
            )
            formats: dict[str, int] = {}
            for record in (work / f"cache{n}").rglob("collections/*.json"):
                fmt = json.loads(record.read_text())["format"]
                formats[fmt] = formats.get(fmt, 0) + 1
            row = {
                "images": n,
                "source_bytes_per_image": round(source_bytes / n),
                "default_bound": roomy,
                "bound_a_tenth": None if tight is None else {**tight, "bound": int(tenth)},
                "cache_per_source_byte": round(roomy["cache_bytes"] / source_bytes, 2),
                "formats": formats,
            }
            result["runs"].append(row)
            print(json.dumps(row), flush=True)
            for folder in (work / f"tight{n}", work / f"cache{n}"):
                shutil.rmtree(folder, ignore_errors=True)
        if args.memory_only:
            write_text(args.json, json.dumps(result, indent=1) + "\n")
            return
        images = ueo.read_images(str(work / f"photos{args.sizes[0]}"), ["cat", "dog"])
        result["read_back"] = read_rates(images, model)
        print(json.dumps(result["read_back"]), flush=True)
        result["second_call"] = second_call(images, model, work / "notebook-cache")
        print(json.dumps(result["second_call"]), flush=True)
    write_text(args.json, json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
