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


def run_cli(capsys, argv):
    """`ueo ARGV` in this process: (exit code, stdout, stderr), asserting that no traceback was printed."""
    from ueo.cli import main

    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err, captured.err
    return code, captured.out, captured.err


def quick_fit_args(weights, data, out, *extra, classes="cat,dog", epochs="2"):
    """``fit_args`` of a run that moves: two epochs at a learning rate of 0.05."""
    return fit_args(weights, data, out, *extra, classes=classes, epochs=epochs, lr="0.05")


def fit_args(weights, data, out, *extra, classes="cat,dog", epochs="1", batch_size="4", lr=None, model="ueo-tiny-vit"):
    """`ueo fit` arguments for ``model`` (the tiny ViT by default) with ``weights`` on CPU, quiet; ``lr``: both
    learning rates."""
    rates = ["--lr-prompt", str(lr), "--lr-norm", str(lr)] if lr is not None else []
    return [
        "fit",
        "--model",
        model,
        "--pretrained",
        str(weights),
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


# Sizes of real benchmark photos (width, height): 4:3 and 3:4, 10:3 and 3:10, large, and smaller than the
# model's input. Views, features and decisions are tested on these, not only on input-sized toy images.
PHOTO_SIZES = [(300, 225), (500, 375), (375, 500), (1000, 300), (300, 1000), (2000, 1500), (150, 100)]


def photo(width, height, seed=0):
    """A textured stand-in for a photo: noise at every scale (a 1/f-like spectrum), a grid of edges and a
    colour gradient, so that every resampling step shows in the pixels (a flat image hides them)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((height, width, 3))
    for octave in range(8):
        step = 2**octave
        small = rng.normal(size=(max(1, height // step), max(1, width // step), 3))
        small = ((small - small.min()) / (np.ptp(small) + 1e-9) * 255).astype(np.uint8)
        out += np.asarray(Image.fromarray(small).resize((width, height), Image.BILINEAR), dtype=float) * 0.7**octave
    out = (out - out.min()) / np.ptp(out) * 200
    yy, xx = np.mgrid[0:height, 0:width]
    out[((xx // max(3, width // 23) + yy // max(3, height // 17)) % 2) == 0] *= 0.55
    out[..., 0] += 55 * xx / width
    out[..., 2] += 55 * yy / height
    return Image.fromarray(out.clip(0, 255).astype(np.uint8))


def write_photos(folder, sizes=PHOTO_SIZES, classes=("cat", "dog"), formats=("jpg", "png"), seed=0):
    """Photos of ``sizes`` in each of ``formats`` (JPEG quality 90, PNG), in class sub-folders (cycling
    over ``classes``); returns the paths in order."""
    paths = []
    for i, (width, height) in enumerate(sizes):
        for j, ext in enumerate(formats):
            target = folder / classes[(i * len(formats) + j) % len(classes)]
            target.mkdir(parents=True, exist_ok=True)
            path = target / f"photo{i}_{width}x{height}.{ext}"
            photo(width, height, seed=seed + i).save(path, **({"quality": 90} if ext == "jpg" else {}))
            paths.append(path)
    return paths


def psnr(a, b):
    """Peak signal-to-noise ratio in dB of two images in [0, 1] (arrays or tensors of one shape)."""
    mse = float(((np.asarray(a, dtype=float) - np.asarray(b, dtype=float)) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def odd_images(folder):
    """Files whose pixels need care: transparency, an EXIF rotation, 16-bit grey, float and 32-bit TIFFs."""
    rng = np.random.default_rng(3)
    folder.mkdir(parents=True, exist_ok=True)
    base = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    rgba = np.dstack([base, np.where(np.arange(60) < 30, 0, 255).astype(np.uint8)[None].repeat(40, 0)])
    Image.fromarray(rgba, "RGBA").save(folder / "alpha.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° when shown
    Image.fromarray(base).save(folder / "rotated.jpg", exif=exif)
    grey = (np.linspace(0, 65535, 40 * 60).reshape(40, 60)).astype(np.uint16)
    Image.fromarray(grey).save(folder / "deep.png")
    Image.fromarray(np.linspace(0, 1, 40 * 60, dtype=np.float32).reshape(40, 60), "F").save(folder / "float.tif")
    wide = (np.linspace(0, 2**31 - 1, 40 * 60)).astype(np.int32).reshape(40, 60)
    Image.fromarray(wide, "I").save(folder / "int32.tif")
    return sorted(folder.iterdir())


def make_folder(root, classes=("cat", "dog", "zebra"), n=4, size=(30, 24), seed=0, ext="jpg"):
    """Class folders of ``n`` noisy images each, coloured by class (a BMP's file size depends on its
    dimensions only: what a test that rewrites a file with its old size needs)."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = rng.integers(0, 80, (size[1], size[0], 3), dtype=np.uint8)
            pixels[:, :, c % 3] += 150
            Image.fromarray(pixels).save(root / name / f"{i}.{ext}")
    return root


def paused_after_first_checkpoint(wait: str) -> str:
    """The source of a script that runs `ueo` (its arguments) with a hook after the first checkpoint it saves:
    it prints "saved" and then runs ``wait`` (a Python statement that blocks until the test lets it go on),
    so that a test can stop the run mid-way without polling, whatever the machine's speed."""
    return (
        "import sys\nimport ueo.cli.fit as f\nfrom ueo.cli.main import main\nreal, saved = f.save_checkpoint, []\n"
        "def save(path, checkpoint):\n"
        "    real(path, checkpoint)\n"
        "    if not saved:\n"
        "        saved.append(path)\n"
        "        print('saved', flush=True)\n"
        f"        {wait}\n"
        "f.save_checkpoint = save\nsys.exit(main(sys.argv[1:]))\n"
    )


def unfinish(run_dir):
    """A run whose training finished but whose outputs were not all written."""
    for name in ("metrics.json", "predictions.csv", "adapted.safetensors", "roc.png"):
        (run_dir / name).unlink(missing_ok=True)
