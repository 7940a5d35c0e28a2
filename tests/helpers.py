"""What several test files share: class names, generated images, model snapshots."""

import contextlib

import numpy as np
import torch
from PIL import Image

CLASSES = ["cat", "hot_dog", "The_Eiffel_Tower", "aircraft carrier"]


class GeneratedImages(torch.utils.data.Dataset):
    """Random-size RGB images of a coloured square on a noisy background; label cycles over ``labels``."""

    def __init__(self, n, labels, seed=0):
        rng = np.random.default_rng(seed)
        self.labels = [labels[i % len(labels)] for i in range(n)]
        self.images = []
        for i in range(n):
            h, w = rng.integers(40, 90, size=2)
            pixels = rng.integers(0, 60, size=(h, w, 3), dtype=np.uint8)
            colour = np.array([(37 * (self.labels[i] + 2)) % 256, 90, 200], dtype=np.uint8)
            y, x = rng.integers(0, h // 2), rng.integers(0, w // 2)
            pixels[y : y + h // 2, x : x + w // 2] = colour
            self.images.append(Image.fromarray(pixels))

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


def snapshot(model):
    """Copies of every parameter and buffer of a model."""
    return {n: p.detach().clone() for n, p in model.state_dict().items()}


@contextlib.contextmanager
def restored(model):
    """Whatever happens inside, the model leaves with the values, gradient flags and modes it came with."""
    values = snapshot(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    try:
        yield model
    finally:
        model.load_state_dict(values)
        for name, p in model.named_parameters():
            p.requires_grad_(flags[name])
            p.grad = None
        for name, m in model.named_modules():
            m.training = modes[name]


def read_csv(path):
    """The rows of a CSV file as dicts."""
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def fit_args(weights, data, out, *extra, classes="cat,dog", epochs="1", batch_size="4", lr=None):
    """`ueo fit` arguments for the tiny ViT with ``weights`` on CPU, quiet; ``lr``: both learning rates."""
    rates = ["--lr-prompt", str(lr), "--lr-norm", str(lr)] if lr is not None else []
    return [
        "fit",
        "--model",
        "ueo-tiny-vit",
        "--pretrained",
        weights,
        "--device",
        "cpu",
        "--data",
        str(data),
        "--classes",
        classes,
        "--epochs",
        str(epochs),
        "--batch-size",
        str(batch_size),
        *rates,
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]
