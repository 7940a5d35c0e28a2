"""Throughput benchmark: the reference training/eval loop against ueo's fast path, in ONE run.

    python benchmarks/throughput.py --model ViT-B-16 --classes 50 --images 2048 --json out.json      # GPU
    python benchmarks/throughput.py --model ueo-tiny-vit --images 64 --min-side 64 --max-side 128   # CPU smoke

It builds the architecture with random weights (speed does not depend on them), writes synthetic JPEGs
of varied sizes, and measures:
  (a) reference: weights in fp16 on CUDA (fp32 on CPU), PIL decode + RandomResizedCrop in DataLoader
      workers, the full 77-token text encoder over all classes every step, batch 64;
  (b) ueo: decode once into a uint8 cache (timed: first pass), batched augmentation on the device,
      prompts cut after the longest <eot>, bf16 autocast with fp32 tuned parameters;
for fitting (steady state, images/s) and evaluation, and prints the ratio b/a, peak GPU memory and an
MFU estimate (FLOPs of one image-tower forward counted by torch; a tuning step ~ 2x, SPEC §7).
Timings are ratios within one run: compare figures only from the same machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import ueo  # noqa: E402
from ueo.data import ImageFiles, ImageList  # noqa: E402
from ueo.engine import _cache_geometry, _cached_batch, _image_features, _infer, epoch_batches  # noqa: E402
from ueo.fastpath import build_cache  # noqa: E402
from ueo.objectives import ueo_loss  # noqa: E402
from ueo.prompts import PromptLearner, encode_embedded_text  # noqa: E402
from ueo.tuning import configure_tuning  # noqa: E402


def write_jpegs(folder: Path, n: int, min_side: int, max_side: int, seed: int = 0) -> ImageList:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        w, h = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
        image = Image.fromarray(rng.integers(0, 255, (max(1, h // 8), max(1, w // 8), 3), dtype=np.uint8)).resize((w, h))
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


def image_flops(model, size: int, device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.encode_image(torch.zeros(1, 3, size, size, device=device))
    return float(counter.get_total_flops())


def class_names(k: int):
    words = ["apple", "bicycle", "camera", "dolphin", "engine", "falcon", "guitar", "harbor", "island", "jacket"]
    return [f"{words[i % 10]} {i // 10}" if i >= 10 else words[i] for i in range(k)]


def reference_fit(bundle, names, images: ImageList, steps: int, batch: int, workers: int, device) -> float:
    """img/s of the reference recipe's training step, steady state (after 3 warm-up steps)."""
    import copy

    model = copy.deepcopy(bundle.model)
    if device.type == "cuda":
        model.half()  # the reference keeps weights in fp16; its norm parameters stay fp32
        for name, module in model.named_modules():
            if isinstance(module, (torch.nn.LayerNorm, torch.nn.BatchNorm2d)):
                module.float()
    ref = ueo.ClipBundle(model, bundle.tokenizer, bundle.train_transform, bundle.eval_transform, bundle.name)
    learner = PromptLearner(ref, names).to(device)
    full = ref.tokenizer([f"a photo of a {n}." for n in names]).to(device)  # all 77 tokens, every step
    with torch.no_grad():
        embedded = model.token_embedding(full)
    tuned = configure_tuning(model, learner, "both")
    optimizer = torch.optim.SGD(tuned.values(), lr=1e-4)
    loader = torch.utils.data.DataLoader(_TrainSet(images, bundle.train_transform), batch_size=batch, shuffle=True,
                                         num_workers=workers, drop_last=True, persistent_workers=workers > 0,
                                         pin_memory=device.type == "cuda")
    weights = torch.full((len(images),), 0.5, device=device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32

    def run(n):
        done = 0
        while done < n:
            for x, index in loader:
                ctx = learner.ctx.to(embedded.dtype).unsqueeze(0).expand(len(names), -1, -1)
                emb = torch.cat([embedded[:, :1], ctx, embedded[:, 1 + learner.n_ctx:]], dim=1)
                text = encode_embedded_text(model, emb, full)
                feats = F.normalize(model.encode_image(x.to(device, dtype, non_blocking=True)).float(), dim=-1)
                probs = torch.softmax(100 * feats @ text.float().T, dim=-1)
                loss = ueo_loss(probs, weights[index.to(device)])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                loss.item()  # the reference logs the loss every step
                done += 1
                if done >= n:
                    break

    run(3)
    sync(device)
    start = time.perf_counter()
    run(steps)
    sync(device)
    return steps * batch / (time.perf_counter() - start)


class _TrainSet(torch.utils.data.Dataset):
    def __init__(self, images, transform):
        self.files, self.transform = ImageFiles(images), transform

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        return self.transform(self.files[i][0]), i


def reference_eval(bundle, images: ImageList, batch: int, workers: int, device) -> float:
    model = bundle.model.half() if device.type == "cuda" else bundle.model
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    loader = torch.utils.data.DataLoader(_TrainSet(images, bundle.eval_transform), batch_size=batch,
                                         num_workers=workers, pin_memory=device.type == "cuda")
    sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        for x, _ in loader:
            model.encode_image(x.to(device, dtype, non_blocking=True)).float().cpu()
    sync(device)
    rate = len(images) / (time.perf_counter() - start)
    bundle.model.float()
    return rate


def ueo_fit(bundle, names, cache, steps: int, batch: int, device, amp: bool) -> float:
    """img/s of ueo's fast training step (cache + device augmentation + truncated prompts + bf16)."""
    model = bundle.model
    learner = PromptLearner(bundle, names).to(device)
    tuned = configure_tuning(model, learner, "both")
    optimizer = torch.optim.SGD(tuned.values(), lr=1e-4)
    weights = torch.full((len(cache),), 0.5, device=device)
    geometry = _cache_geometry(bundle)
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp)
    batches = [b for e in range(1, 1000) for b in epoch_batches(len(cache), batch, 0, e) if len(b) == batch]
    losses = []

    def run(offset, n):
        for b in batches[offset:offset + n]:
            x, _, index = _cached_batch(cache, b, 0, 1, geometry, device)
            with autocast:
                text = learner.text_features().float()
                feats = _image_features(model, x)
            probs = torch.softmax(100 * feats @ text.T, dim=-1)
            loss = ueo_loss(probs, weights[index.to(device)])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())  # no host sync per step

    run(0, 3)
    sync(device)
    start = time.perf_counter()
    run(3, steps)
    sync(device)
    rate = steps * batch / (time.perf_counter() - start)
    model.requires_grad_(False)
    return rate


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-16")
    parser.add_argument("--classes", type=int, default=50)
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--min-side", type=int, default=300)
    parser.add_argument("--max-side", type=int, default=900)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--eval-batch-size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers of the reference loop")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--peak-tflops", type=float, default=790.0, help="bf16 peak for the MFU estimate")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    names = class_names(args.classes)
    bundle = ueo.load_clip(args.model, pretrained=None, device=device)
    size = bundle.image_size
    results = {"model": args.model, "classes": args.classes, "images": args.images, "batch_size": args.batch_size,
               "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
               "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    with tempfile.TemporaryDirectory() as tmp:
        images = write_jpegs(Path(tmp), args.images, args.min_side, args.max_side)
        files = ImageFiles(images)

        sync(device)
        start = time.perf_counter()
        cache = build_cache(files, 2 * size, device, threads=os.cpu_count() or 4)
        sync(device)
        results["ueo_first_pass_img_s"] = args.images / (time.perf_counter() - start)
        results["cache_bytes"] = cache.nbytes

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        results["ueo_fit_img_s"] = ueo_fit(bundle, names, cache, args.steps, args.batch_size, device,
                                           amp=device.type == "cuda")
        if device.type == "cuda":
            results["ueo_fit_peak_gb_excluding_cache"] = (torch.cuda.max_memory_allocated(device) - base) / 1e9
        learner = PromptLearner(bundle, names).to(device)
        with torch.no_grad():
            text = learner.text_features()
        sync(device)
        start = time.perf_counter()
        _infer(bundle.model, text, files, bundle.eval_transform, args.eval_batch_size, device,
               device.type == "cuda" or None, cache=cache, geometry=_cache_geometry(bundle))
        sync(device)
        results["ueo_eval_img_s"] = args.images / (time.perf_counter() - start)

        results["reference_fit_img_s"] = reference_fit(bundle, names, images, args.steps, args.batch_size,
                                                       args.workers, device)
        results["reference_eval_img_s"] = reference_eval(bundle, images, args.batch_size, args.workers, device)

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
        from ueo.files import write_text

        write_text(args.json, json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
