"""Command line: ``ueo <command>`` (also ``python -m ueo``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def _generated_images(n: int, labels, seed: int):
    """Images of coloured squares on noise, label cycling over ``labels`` (a stand-in for real data)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        label = labels[i % len(labels)]
        pixels = rng.integers(0, 80, size=(72, 72, 3), dtype=np.uint8)
        y, x = rng.integers(0, 36, size=2)
        pixels[y:y + 36, x:x + 36] = ((53 * (label + 3)) % 256, (97 * (label + 1)) % 256, 160)
        items.append((Image.fromarray(pixels), label))
    return items


def cmd_demo(args) -> int:
    import ueo

    print("NOTE: this demo uses a tiny RANDOMLY INITIALISED CLIP on generated images. It shows the pipeline "
          "running end to end; its numbers mean nothing about the method.")
    bundle = ueo.load_clip("ueo-tiny-vit", device="cpu")
    classes = ["red square", "green square", "blue square", "yellow square"]
    train = _generated_images(96, [0, 1, 2, 4, 5], seed=1)  # labels 4, 5: not in the class list
    test = _generated_images(96, [0, 1, 2, 3, 4, 5], seed=2)
    table = {}
    for method in ("zeroshot", "entropy", "infomax", "ueo"):
        result = ueo.fit(bundle, classes, train, test=test, method=method, epochs=args.epochs, batch_size=32,
                         lr_prompt=1e-2, lr_norm=1e-2, eval_train=False)
        row = result.metrics["adapted"]
        table[method] = {k: row[k] for k in ("pacc", "auroc", "hm")}
        print(f"{method:>9}  PACC {100 * row['pacc']:5.1f}  AUROC {100 * row['auroc']:5.1f}  HM {100 * row['hm']:5.1f}")
    if args.out:
        from .files import write_text

        write_text(Path(args.out) / "demo.json", json.dumps({"open-partial": table}, indent=2))
        print(f"wrote {Path(args.out) / 'demo.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ueo", description=__doc__,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the whole pipeline offline on generated images",
                          formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    demo.add_argument("--out", default=None, help="folder for demo.json")
    demo.add_argument("--epochs", type=int, default=5, help="adaptation epochs per method")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
