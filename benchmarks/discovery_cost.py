"""What finding what the class list misses costs, against the adaptation's own time, measured in one run.

* the vocabulary: encoding the default vocabulary (timm's ImageNet-21k names, one template) through
  ViT-B-16's text tower (random weights) once, as ``ueo.discover`` does the first time for a model;
* the clustering (``ueo.discovery.find.find_groups``) of 10k and 100k synthetic unknown-image features
  (512-d unit vectors around 8 directions, with noise), each in a fresh process, with the peak of the
  memory it allocates (tracemalloc, which sees numpy's and so scikit-learn's arrays);
* the reference: ViT-B-16's adaptation time per image and epoch (``ueo.fit`` on 64 real-size photos,
  2 epochs), scaled to the same collection and the paper's 10 epochs.

    python benchmarks/discovery_cost.py --out benchmarks/results/discovery_cost.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np


def cluster(n: int) -> dict:
    """Time and extra peak memory of grouping ``n`` synthetic features (run in a process of its own)."""
    import torch

    from ueo.discovery.find import find_groups

    torch.set_num_threads(2)
    rng = np.random.default_rng(0)
    directions = rng.standard_normal((8, 512), dtype=np.float32)
    features = rng.standard_normal((n, 512), dtype=np.float32)  # made in place: no float64 copy sets the peak
    features *= 0.8
    features += directions[rng.integers(0, 8, n)]
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    tracemalloc.start()  # numpy's (and so scikit-learn's arrays') allocations are traced
    start = time.perf_counter()
    labels = find_groups(features)
    seconds = time.perf_counter() - start
    extra = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return {
        "n": n,
        "seconds": round(seconds, 2),
        "peak_allocated_mb": round(extra, 1),
        "features_mb": round(features.nbytes / 2**20, 1),
        "nxn_matrix_mb": round(n * n * 4 / 2**20),
        "groups": int(labels.max()) + 1,
    }


def write_photos(folder: Path, sizes) -> list[str]:
    """Textured JPEGs of real photo sizes (noise over a colour gradient)."""
    from PIL import Image

    rng, paths = np.random.default_rng(0), []
    for i, (width, height) in enumerate(sizes):
        gradient = np.linspace(0, 160, width)[None, :, None] + np.linspace(0, 60, height)[:, None, None]
        pixels = np.clip(gradient + rng.normal(0, 40, (height, width, 3)), 0, 255).astype(np.uint8)
        paths.append(str(folder / f"{i}.jpg"))
        Image.fromarray(pixels).save(paths[-1], quality=90)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=int, default=[10_000, 100_000])
    parser.add_argument("--out", default="benchmarks/results/discovery_cost.json")
    parser.add_argument("--cluster", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cluster is not None:
        print(json.dumps(cluster(args.cluster)))
        return

    import torch

    import ueo
    from ueo.discovery import vocabulary

    torch.set_num_threads(2)
    results: dict = {"machine": f"{torch.get_num_threads()} threads, torch {torch.__version__}"}
    bundle = ueo.load_clip("ViT-B-16", pretrained=None, device="cpu")

    names = vocabulary.default_vocabulary()
    start = time.perf_counter()
    vocabulary.template_features(bundle, names, templates=vocabulary.SCAN_TEMPLATES, progress=True)
    results["vocabulary"] = {"names": len(names), "seconds": round(time.perf_counter() - start, 1)}
    print("vocabulary:", results["vocabulary"], flush=True)

    results["clustering"] = []
    for n in args.sizes:
        done = subprocess.run(
            [sys.executable, __file__, "--cluster", str(n)], capture_output=True, text=True, check=True
        )
        results["clustering"].append(json.loads(done.stdout.strip().splitlines()[-1]))
        print("clustering:", results["clustering"][-1], flush=True)

    with tempfile.TemporaryDirectory() as folder:
        images = write_photos(Path(folder), [(500, 375), (375, 500), (1000, 300), (640, 480)] * 16)
        start = time.perf_counter()
        from PIL import Image

        dataset = [(Image.open(path).convert("RGB"), -1) for path in images]  # unlabeled
        ueo.fit(bundle, ["cat", "dog", "bird"], dataset, epochs=2, batch_size=32, eval_every=0, eval_train=False)
        per_image_epoch = (time.perf_counter() - start) / (2 * len(images))
    results["adaptation"] = {"images": len(images), "epochs": 2, "seconds_per_image_epoch": round(per_image_epoch, 4)}
    for row in results["clustering"]:
        adaptation = per_image_epoch * row["n"] * 10
        row["adaptation_seconds_10_epochs"] = round(adaptation)
        row["clustering_over_adaptation"] = round(row["seconds"] / adaptation, 5)
        row["vocabulary_over_adaptation"] = round(results["vocabulary"]["seconds"] / adaptation, 4)
    print(json.dumps(results, indent=1))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
