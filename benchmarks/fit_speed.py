"""A 2-epoch fit with the fast path against the plain path (PIL views in DataLoader workers), in one run.

python benchmarks/fit_speed.py --model ueo-tiny-vit --images 96 --sides 300 900
python benchmarks/fit_speed.py --model ueo-toy-rn --pretrained toyworld --images 96 --sides 64 64
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

import ueo
from ueo.data.folders import read_folder
from ueo.images.cache import DecodeCache
from ueo.images.reading import ImageFiles


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ueo-tiny-vit")
    parser.add_argument("--pretrained", default=None)
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--sides", type=int, nargs=2, default=(300, 900))
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    bundle = ueo.load_clip(args.model, pretrained=args.pretrained, device="cpu")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.images):
            w, h = (int(v) for v in rng.integers(args.sides[0], args.sides[1] + 1, size=2))
            folder = Path(tmp) / "data" / ("cat", "dog")[i % 2]
            folder.mkdir(parents=True, exist_ok=True)
            small = rng.integers(0, 255, (max(1, h // 8), max(1, w // 8), 3), dtype=np.uint8)
            Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC).save(folder / f"{i}.jpg", quality=90)
        images = read_folder(Path(tmp) / "data", ["cat", "dog"])
        settings = dict(epochs=2, batch_size=32, eval_train=False, eval_every=0)
        times = {}
        for name, data, fast in (
            ("fast (decode cache)", ImageFiles(images, DecodeCache(Path(tmp) / "cache")), True),
            ("plain (PIL in workers)", ImageFiles(images), False),
        ):
            start = time.perf_counter()
            ueo.fit(bundle, ["cat", "dog"], data, fast=fast, num_workers=0 if fast else args.workers, **settings)
            times[name] = time.perf_counter() - start
            print(f"{name}: {times[name]:.1f} s", flush=True)
    fast, plain = times.values()
    print(
        f"{args.model}, {args.images} images of {args.sides[0]}-{args.sides[1]} px: plain / fast = {plain / fast:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
