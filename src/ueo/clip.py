"""Load a CLIP through open_clip: a model name with a tag, a checkpoint file, ``hf-hub:`` or ``local-dir:``.

The two tiny configurations shipped in ``model_configs/`` (``ueo-tiny-vit``: ViT with LayerNorm,
``ueo-tiny-rn``: ModifiedResNet with BatchNorm) build through exactly the same open_clip code paths
as ``ViT-B-16`` and ``RN50``; tests and CPU benchmarks use them with random weights.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import open_clip
import torch
from torchvision import transforms as T

CONFIG_DIR = Path(__file__).parent / "model_configs"
WEIGHTS_DIR = Path(__file__).parent / "weights"
open_clip.add_model_config(CONFIG_DIR)
# Weights that ship inside the package: (model, tag) -> file. Made by scripts/pretrain_toy_clip.py.
SHIPPED_WEIGHTS = {("ueo-toy-rn", "toyworld"): WEIGHTS_DIR / "ueo-toy-rn-toyworld.safetensors"}

# Reference train augmentation (SPEC §4): RandomResizedCrop(scale 0.5-1, bicubic) + horizontal flip.
TRAIN_CROP_SCALE = (0.5, 1.0)


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be obtained (typically: no network). The message says what to do."""


@dataclass
class ClipBundle:
    """A CLIP model with what is needed to use it.

    model: the open_clip ``CLIP`` module (fp32, on ``device``).
    tokenizer: open_clip tokenizer, ``tokenizer(list_of_str) -> LongTensor [N, context_length]``.
    train_transform / eval_transform: PIL image -> normalised float tensor [3, S, S].
    name / pretrained: what was asked for, recorded in adapted states so they can be matched later.
    """

    model: torch.nn.Module
    tokenizer: Callable
    train_transform: Callable
    eval_transform: Callable
    name: str
    pretrained: str | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def image_size(self) -> int:
        size = self.model.visual.image_size
        return size[0] if isinstance(size, (tuple, list)) else int(size)


def _offline_message(model: str, pretrained: str | None, error: BaseException) -> str:
    what = f"{model!r} with pretrained={pretrained!r}" if pretrained else repr(model)
    return (
        f"Could not obtain the weights for {what}: {type(error).__name__}: {str(error).splitlines()[0][:300]}\n"
        "Without network access, supply the weights yourself, for example:\n"
        f"  - a checkpoint file:  load_clip({model.split(':')[-1]!r}, pretrained='/path/to/open_clip_model.safetensors')\n"
        "                        (CLI: --model NAME --pretrained /path/to/file)\n"
        "  - an open_clip folder: load_clip('local-dir:/path/to/folder') with open_clip_config.json and the weights\n"
        "  - a filled Hugging Face cache: copy ~/.cache/huggingface from a machine that has it, then set HF_HUB_OFFLINE=1\n"
        "Use pretrained=None for random weights (tests only)."
    )


def _is_local_file(pretrained: str | None) -> bool:
    return bool(pretrained) and os.path.isfile(pretrained)


def build_train_transform(image_size: int, mean, std) -> Callable:
    """The reference's training view: RandomResizedCrop(scale 0.5-1, bicubic) + flip, CLIP mean/std."""
    return T.Compose([
        T.Lambda(_to_rgb),
        T.RandomResizedCrop(image_size, scale=TRAIN_CROP_SCALE, interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(p=0.5),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def _to_rgb(image):
    return image.convert("RGB")


def load_clip(model: str, pretrained: str | None = None, device: str | torch.device | None = None) -> ClipBundle:
    """Build a CLIP through open_clip and return a :class:`ClipBundle`.

    model: an open_clip name ("ViT-B-16", "RN50", "ueo-tiny-vit", ...), "hf-hub:org/repo" or
        "local-dir:/path" (for the last two, ``pretrained`` is ignored, as in open_clip).
    pretrained: a tag ("openai", "laion2b_s34b_b88k", ...), a checkpoint file, or None for random weights.
    device: where the model lives; default CUDA when available, else CPU.

    Raises WeightsUnavailableError with instructions when weights cannot be downloaded or read.
    """
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    schema, _ = open_clip.factory.parse_model_name(model)
    shipped = SHIPPED_WEIGHTS.get((model, pretrained))
    checkpoint = str(shipped) if shipped is not None else pretrained
    if schema is None and checkpoint and not _is_local_file(checkpoint):
        if not open_clip.get_pretrained_cfg(model.replace("/", "-"), pretrained):
            known = open_clip.list_pretrained_tags_by_model(model.replace("/", "-"))
            raise WeightsUnavailableError(
                f"pretrained={pretrained!r} is neither a file nor a known tag for {model!r}. "
                f"Known tags: {', '.join(known) or 'none'}.")
    if schema is None and model.replace("/", "-") not in open_clip.list_models():
        raise ValueError(f"Unknown model {model!r}. Use an open_clip name (see open_clip.list_models()), "
                         "'hf-hub:org/repo' or 'local-dir:/path'.")
    try:
        clip_model, _, preprocess = open_clip.create_model_and_transforms(
            model, pretrained=checkpoint if schema is None else None, device=device)
    except (RuntimeError, OSError, ValueError) as error:
        if schema is None and not pretrained:
            raise
        if schema is None and _is_local_file(checkpoint):
            raise WeightsUnavailableError(
                f"Could not load the checkpoint file {checkpoint} into {model!r}: "
                f"{str(error).splitlines()[0][:300]}\nIs it a checkpoint of this architecture?") from error
        raise WeightsUnavailableError(_offline_message(model, pretrained, error)) from error
    if not hasattr(clip_model, "token_embedding"):
        raise ValueError(f"{model!r} has a custom text tower (e.g. a Hugging Face text model); ueo needs "
                         "open_clip's built-in CLIP text transformer for prompt learning.")
    clip_model.eval()
    cfg: dict[str, Any] = clip_model.visual.preprocess_cfg
    size = cfg["size"] if isinstance(cfg["size"], int) else cfg["size"][0]
    return ClipBundle(
        model=clip_model,
        tokenizer=open_clip.get_tokenizer(model),
        train_transform=build_train_transform(size, cfg["mean"], cfg["std"]),
        eval_transform=preprocess,
        name=model,
        pretrained=pretrained,
    )
