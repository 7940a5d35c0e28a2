"""Pretrain the tiny toy-world CLIP shipped as ``ueo.load_clip("ueo-toy-rn", pretrained="toyworld")``.

Contrastive (symmetric InfoNCE, open_clip's ClipLoss) on captioned images of the PRETRAINING styles
only (clean, sketch, noisy); the painting style stays unseen. Seeded; about 10 minutes on 2 CPU cores.

    python scripts/pretrain_toy_clip.py [--steps 1800] [--out src/ueo/weights/ueo-toy-rn-toyworld.safetensors]
"""

import argparse
import math
import time

import numpy as np
import open_clip
import torch
from safetensors.torch import save_file

import ueo
from ueo.experiments import toyworld as tw
from ueo.files import atomic_path
from ueo.model.prompts import encode_tokens, prompt_text


def render_pool(styles, per_class, seed):
    images, labels, style_ids = [], [], []
    for s, style in enumerate(styles):
        for label in range(len(tw.CLASS_NAMES)):
            for i in range(per_class):
                images.append(np.asarray(tw.render(style, label, i, seed)))
                labels.append(label)
                style_ids.append(s)
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(), torch.tensor(labels), style_ids


def normalise(uint8, mean, std):
    return (uint8.float() / 255 - mean) / std


@torch.no_grad()
def zero_shot_accuracy(model, tokenizer, mean, std, seed):
    text = encode_tokens(model, tokenizer([prompt_text(n) for n in tw.CLASS_NAMES]))
    result = {}
    for style in tw.STYLES:
        data = tw.ToyImages(style, range(len(tw.CLASS_NAMES)), 20, seed=seed + 1, offset=50_000)
        x = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in data.images])
        feats = torch.nn.functional.normalize(model.encode_image(normalise(x, mean, std)), dim=-1)
        labels = torch.tensor([label for label, _ in data.samples])
        result[style] = round(100 * float(((feats @ text.T).argmax(-1) == labels).float().mean()), 1)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1800)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--per-class", type=int, default=600, help="images per class and style in the pool")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="src/ueo/weights/ueo-toy-rn-toyworld.safetensors")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    start = time.time()
    bundle = ueo.load_clip("ueo-toy-rn", device="cpu")
    model, tokenizer = bundle.model, bundle.tokenizer
    cfg = model.visual.preprocess_cfg
    mean, std = torch.tensor(cfg["mean"]).view(1, 3, 1, 1), torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    pool, labels, style_ids = render_pool(tw.PRETRAIN_STYLES, args.per_class, args.seed)
    print(f"rendered {len(pool)} images in {time.time() - start:.0f}s", flush=True)

    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}], lr=args.lr
    )
    warmup = 50
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            (s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (args.steps - warmup)))
        ),
    )
    loss_fn = open_clip.ClipLoss()
    model.train()
    for step in range(1, args.steps + 1):
        index = torch.from_numpy(rng.integers(0, len(pool), size=args.batch_size))
        captions = [tw.caption(rng, tw.PRETRAIN_STYLES[style_ids[i]], int(labels[i])) for i in index.tolist()]
        images = normalise(pool[index], mean, std)
        image_features = torch.nn.functional.normalize(model.encode_image(images), dim=-1)
        text_features = encode_tokens(model, tokenizer(captions))
        loss = loss_fn(image_features, text_features, model.logit_scale.exp())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 100 == 0 or step == args.steps:
            print(
                f"step {step} loss {loss.item():.3f} scale {model.logit_scale.exp().item():.1f} "
                f"{time.time() - start:.0f}s",
                flush=True,
            )
        if step % 600 == 0 or step == args.steps:
            model.eval()
            print(
                "zero-shot accuracy (24 classes):",
                zero_shot_accuracy(model, tokenizer, mean, std, args.seed),
                flush=True,
            )
            model.train()
    model.eval()
    state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(args.out) as tmp:
        save_file(state, str(tmp), metadata={"steps": str(args.steps), "seed": str(args.seed)})
    print(f"saved {args.out} after {time.time() - start:.0f}s")


if __name__ == "__main__":
    main()
