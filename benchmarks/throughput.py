"""Throughput benchmark: the reference training/eval loop against ueo, in ONE run.

    python benchmarks/throughput.py --model ViT-B-16 --classes 50 --images 2048 --json out.json      # GPU
    python benchmarks/throughput.py --model ueo-tiny-vit --images 64 --min-side 64 --max-side 128   # CPU smoke

It builds the architecture with random weights (speed does not depend on them), writes synthetic JPEGs
of varied sizes, and measures:
  (a) the reference loop: weights in fp16 on CUDA (fp32 on the CPU), PIL decoding + RandomResizedCrop in
      DataLoader workers, the full 77-token text encoder over all classes every step, batch 64;
  (b) ueo as a user calls it: ``ueo.fit`` and ``ueo.evaluate`` on the same image files. The fit figure
      is the marginal rate of training epochs (two fits of E1 < E2 epochs: (E2 - E1) x N images over the
      difference of their wall times), so it is what one more epoch of ``ueo fit`` costs; ``fit_end_to_end``
      divides E2 x N by the whole call (first decode and zero-shot pass included).
  (c) a compute-only ueo step on a batch resident on the device, beside (a)'s compute-only step.
It prints the ratios b/a, peak GPU memory and an MFU estimate (FLOPs of one image-tower forward
counted by torch; a tuning step is about twice that: forward + input-gradient backward).
Timings are ratios within one run: compare figures only from the same machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

import ueo
from ueo.data.imagelist import ImageList
from ueo.files import write_text
from ueo.images.reading import ImageFiles
from ueo.method.inference import autocast, image_features
from ueo.model.prompts import TextTower


def write_jpegs(folder: Path, n: int, min_side: int, max_side: int, seed: int = 0) -> ImageList:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        w, h = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
        image = Image.fromarray(rng.integers(0, 255, (max(1, h // 8), max(1, w // 8), 3), dtype=np.uint8)).resize(
            (w, h)
        )
        draw = ImageDraw.Draw(image)
        x, y = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
        draw.ellipse([x, y, x + w // 3, y + h // 3], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        path = folder / f"{i:05d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return ImageList(paths, [i % 7 for i in range(n)], labeled=True)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device, work):
    sync(device)
    start = time.perf_counter()
    value = work()
    sync(device)
    return time.perf_counter() - start, value


def image_flops(model, size: int, device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.encode_image(torch.zeros(1, 3, size, size, device=device))
    return float(counter.get_total_flops())


def class_names(k: int):
    words = ["apple", "bicycle", "camera", "dolphin", "engine", "falcon", "guitar", "harbor", "island", "jacket"]
    return [f"{words[i % 10]} {i // 10}" if i >= 10 else words[i] for i in range(k)]


class _Indexed(torch.utils.data.Dataset):
    def __init__(self, images, transform):
        self.files, self.transform = ImageFiles(images), transform

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        return self.transform(self.files[i][0]), i


def reference_model(bundle, device):
    """The reference's numerics: weights in fp16 on CUDA, its norm parameters in fp32."""
    model = copy.deepcopy(bundle.model)
    if device.type == "cuda":
        model.half()
        for module in model.modules():
            if isinstance(module, (torch.nn.LayerNorm, torch.nn.BatchNorm2d)):
                module.float()
    return model


def reference_step(bundle, names, device):
    """One training step of the reference recipe, as a function of (images, indices)."""
    model = reference_model(bundle, device)
    ref = ueo.ClipBundle(model, bundle.tokenizer, bundle.name)
    learner = ueo.PromptLearner(ref, names).to(device)
    full = ref.tokenizer([f"a photo of a {n}." for n in names]).to(device)  # all 77 tokens, every step
    tower = TextTower.of(model)
    with torch.no_grad():
        embedded = tower.embed(full)
    tuned = ueo.configure_tuning(model, learner, "both")
    optimizer = torch.optim.SGD(tuned.values(), lr=1e-4)
    dtype = torch.float16 if device.type == "cuda" else torch.float32

    def step(x, index, weights):
        ctx = learner.ctx.to(embedded.dtype).unsqueeze(0).expand(len(names), -1, -1)
        emb = torch.cat([embedded[:, :1], ctx, embedded[:, 1 + learner.n_ctx :]], dim=1)
        text = tower.encode(emb, full)  # all 77 tokens: the reference does not cut prompts
        feats = torch.nn.functional.normalize(
            model.encode_image(x.to(device, dtype, non_blocking=True)).float(), dim=-1
        )
        probs = torch.softmax(100 * feats @ text.float().T, dim=-1)
        loss = ueo.ueo_loss(probs, weights[index.to(device)])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss

    return step


def reference_fit(bundle, names, images: ImageList, steps: int, batch: int, workers: int, device) -> float:
    """img/s of the reference loop, steady state (after 3 warm-up steps): PIL views in DataLoader workers."""
    step = reference_step(bundle, names, device)
    loader = torch.utils.data.DataLoader(
        _Indexed(images, bundle.train_transform),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
    )
    weights = torch.full((len(images),), 0.5, device=device)

    def run(n):
        done = 0
        while done < n:
            for x, index in loader:
                step(x, index, weights).item()  # the reference logs the loss every step
                done += 1
                if done >= n:
                    break

    run(3)
    seconds, _ = timed(device, lambda: run(steps))
    return steps * batch / seconds


def compute_only(step, size: int, batch: int, steps: int, device) -> float:
    """img/s of a training step on one batch resident on the device (no data loading)."""
    x = torch.randn(batch, 3, size, size, device=device)
    index = torch.arange(batch)
    weights = torch.full((batch,), 0.5, device=device)
    for _ in range(3):
        step(x, index, weights)
    seconds, _ = timed(device, lambda: [step(x, index, weights) for _ in range(steps)])
    return steps * batch / seconds


def ueo_step(bundle, names, device):
    """ueo's training step: truncated prompts, bf16 autocast on CUDA with fp32 tuned parameters."""
    learner = ueo.PromptLearner(bundle, names).to(device)
    tuned = ueo.configure_tuning(bundle.model, learner, "both")
    optimizer = torch.optim.SGD(tuned.values(), lr=1e-4)

    def step(x, index, weights):
        with autocast(device, None):
            text = learner.text_features().float()
            feats = image_features(bundle.model, x)
        probs = torch.softmax(100 * feats @ text.T, dim=-1)
        loss = ueo.ueo_loss(probs, weights[index.to(device)])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def reference_eval(bundle, images: ImageList, batch: int, workers: int, device) -> float:
    model = reference_model(bundle, device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    loader = torch.utils.data.DataLoader(
        _Indexed(images, bundle.eval_transform), batch_size=batch, num_workers=workers, pin_memory=device.type == "cuda"
    )

    def run():
        with torch.no_grad():
            for x, _ in loader:
                model.encode_image(x.to(device, dtype, non_blocking=True)).float().cpu()

    seconds, _ = timed(device, run)
    return len(images) / seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--classes", type=int, default=50)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--min-side", type=int, default=300)
    parser.add_argument("--max-side", type=int, default=900)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--eval-batch-size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=30, help="timed steps of the reference and compute-only loops")
    parser.add_argument(
        "--epochs",
        type=int,
        nargs=2,
        default=(1, 3),
        metavar=("E1", "E2"),
        help="the two ueo fits whose difference gives the training rate",
    )
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers of the reference loop")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--peak-tflops", type=float, default=790.0, help="bf16 peak for the MFU estimate")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    names = class_names(args.classes)
    bundle = ueo.load_clip(args.model, pretrained=None, device=device)
    size, batch = bundle.image_size, args.batch_size
    results = {
        "model": args.model,
        "classes": args.classes,
        "images": args.images,
        "batch_size": batch,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        images = write_jpegs(Path(tmp), args.images, args.min_side, args.max_side)
        files = ImageFiles(images)
        fit_options = dict(batch_size=batch, eval_every=0, eval_train=False, lr_prompt=1e-4, lr_norm=1e-4)

        ueo.fit(bundle, names, files, epochs=1, **fit_options)  # untimed: one-time costs (threads, kernels)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        short, _ = timed(device, lambda: ueo.fit(bundle, names, files, epochs=args.epochs[0], **fit_options))
        long, _ = timed(device, lambda: ueo.fit(bundle, names, files, epochs=args.epochs[1], **fit_options))
        if device.type == "cuda":
            results["ueo_fit_peak_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
        if long <= short:
            raise SystemExit(
                f"the {args.epochs[1]}-epoch fit took no longer than the {args.epochs[0]}-epoch one ({long:.3f} s vs "
                f"{short:.3f} s): timing noise exceeds the work; use more --images or a wider --epochs."
            )
        results["ueo_fit_img_s"] = (args.epochs[1] - args.epochs[0]) * args.images / (long - short)
        results["ueo_fit_end_to_end_img_s"] = args.epochs[1] * args.images / long
        seconds, _ = timed(
            device, lambda: ueo.evaluate(bundle, files, class_names=names, batch_size=args.eval_batch_size)
        )
        results["ueo_eval_img_s"] = args.images / seconds

        results["reference_fit_img_s"] = reference_fit(bundle, names, images, args.steps, batch, args.workers, device)
        results["reference_eval_img_s"] = reference_eval(bundle, images, batch, args.workers, device)
    results["ueo_compute_only_img_s"] = compute_only(ueo_step(bundle, names, device), size, batch, args.steps, device)
    bundle.model.requires_grad_(False)
    results["reference_compute_only_img_s"] = compute_only(
        reference_step(bundle, names, device), size, batch, args.steps, device
    )
    results["fit_ratio"] = results["ueo_fit_img_s"] / results["reference_fit_img_s"]
    results["eval_ratio"] = results["ueo_eval_img_s"] / results["reference_eval_img_s"]
    flops = image_flops(bundle.model, size, device)
    results["image_forward_gflop"] = flops / 1e9
    if device.type == "cuda":
        peak = args.peak_tflops * 1e12
        results["ueo_fit_mfu"] = results["ueo_fit_img_s"] * 2 * flops / peak
        results["ueo_eval_mfu"] = results["ueo_eval_img_s"] * flops / peak
    for key, value in results.items():
        print(f"{key:34s} {value:,.3f}" if isinstance(value, float) else f"{key:34s} {value}")
    if args.json:
        write_text(args.json, json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
