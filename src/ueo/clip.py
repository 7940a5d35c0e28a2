"""Load a CLIP through open_clip: a model name with a tag, a checkpoint file, ``hf-hub:`` or ``local-dir:``.

The two tiny configurations shipped in ``model_configs/`` (``ueo-tiny-vit``: ViT with LayerNorm,
``ueo-tiny-rn``: ModifiedResNet with BatchNorm) build through exactly the same open_clip code paths
as ``ViT-B-16`` and ``RN50``; tests and CPU benchmarks use them with random weights.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch

from .errors import ConfigError, ModelUnavailableError, WeightsUnavailableError
from .views import ViewSpec

CONFIG_DIR = Path(__file__).parent / "model_configs"
WEIGHTS_DIR = Path(__file__).parent / "weights"
open_clip.add_model_config(CONFIG_DIR)
# Weights that ship inside the package: (model, tag) -> file. Made by scripts/pretrain_toy_clip.py.
SHIPPED_WEIGHTS = {("ueo-toy-rn", "toyworld"): WEIGHTS_DIR / "ueo-toy-rn-toyworld.safetensors"}


@dataclass
class ClipBundle:
    """A CLIP model with what is needed to use it.

    model: the open_clip ``CLIP`` module (fp32, on ``device``), in eval mode.
    tokenizer: open_clip tokenizer, ``tokenizer(list_of_str) -> LongTensor [N, context_length]``.
    name / pretrained: what was asked for, recorded in adapted states so that they can be matched later.
    """

    model: torch.nn.Module
    tokenizer: Callable
    name: str
    pretrained: str | None = None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def views(self) -> ViewSpec:
        """The train and eval views of this model (input size, normalisation, crop)."""
        return ViewSpec.of(self.model)

    @property
    def image_size(self) -> int:
        return self.views.size

    @property
    def train_transform(self) -> Callable:
        """PIL image -> normalised tensor: the reference's train view (RandomResizedCrop 0.5-1 + flip)."""
        return self.views.train_transform()

    @property
    def eval_transform(self) -> Callable:
        """PIL image -> normalised tensor: the model's own eval preprocessing."""
        return self.views.eval_transform()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0][:300] if text else 'no message'}"


def _offline_message(model: str, pretrained: str | None, error: BaseException) -> str:
    what = f"{model!r} with pretrained={pretrained!r}" if pretrained else repr(model)
    return (
        f"Could not obtain the weights for {what} ({_first_line(error)}).\n"
        "Without network access, supply the weights yourself, for example:\n"
        f"  - a checkpoint file: load_clip({model.split(':')[-1]!r}, pretrained='/path/to/open_clip_model.safetensors')\n"
        "  - an open_clip folder: load_clip('local-dir:/path/to/folder') with open_clip_config.json and the weights\n"
        "  - a filled Hugging Face cache: copy ~/.cache/huggingface from a machine that has it, then set HF_HUB_OFFLINE=1"
    )


def _is_local_file(pretrained: str | None) -> bool:
    return bool(pretrained) and os.path.isfile(pretrained)


def _missing_package(model: str, error: ImportError) -> ModelUnavailableError:
    package = getattr(error, "name", None) or "a package"
    return ModelUnavailableError(
        f"{model!r} needs the Python package {package!r}, which is not installed ({_first_line(error)}). "
        f"Install it (pip install {package}) or choose a model built from open_clip's own towers."
    )


def _check_text_tower_packages(model: str) -> None:
    """A Hugging Face text tower or tokenizer needs the ``transformers`` package; say so before building."""
    import importlib.util

    cfg = open_clip.get_model_config(model) or {}
    text = cfg.get("text_cfg", {})
    needs = text.get("hf_model_name") or text.get("hf_tokenizer_name")
    if needs and importlib.util.find_spec("transformers") is None:
        raise ModelUnavailableError(
            f"{model!r} uses the Hugging Face text model or tokenizer {needs!r}, which needs the Python package "
            "'transformers' (not installed here): pip install transformers. Offline, also copy the Hugging Face "
            "cache (~/.cache/huggingface) from a machine that has downloaded it, and set HF_HUB_OFFLINE=1."
        )


def load_clip(
    model: str, pretrained: str | None = None, device: str | torch.device | None = None, seed: int = 0
) -> ClipBundle:
    """Build a CLIP through open_clip and return a :class:`ClipBundle`.

    model: an open_clip name ("ViT-B-16", "RN50", "ueo-tiny-vit", ...), "hf-hub:org/repo" or
        "local-dir:/path" (for the last two, ``pretrained`` is ignored, as in open_clip).
    pretrained: a tag ("openai", "laion2b_s34b_b88k", ...), a checkpoint file, or None for random weights.
    device: where the model lives; default CUDA when available, else CPU.
    seed: the random initialisation (used when ``pretrained`` is None): the same seed gives the same
        weights, on every device and every rank.

    Raises WeightsUnavailableError with instructions when weights cannot be downloaded or read, and
    ModelUnavailableError when the model needs a package that is not installed.
    """
    device = (
        torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    schema, _ = open_clip.factory.parse_model_name(model)
    shipped = SHIPPED_WEIGHTS.get((model, pretrained))
    checkpoint = str(shipped) if shipped is not None else pretrained
    if (
        schema is None
        and checkpoint
        and not _is_local_file(checkpoint)
        and not open_clip.get_pretrained_cfg(model.replace("/", "-"), pretrained)
    ):
        known = open_clip.list_pretrained_tags_by_model(model.replace("/", "-"))
        raise WeightsUnavailableError(
            f"pretrained={pretrained!r} is neither a file nor a known tag for {model!r}. "
            f"Known tags: {', '.join(known) or 'none'}."
        )
    if schema is None and model.replace("/", "-") not in open_clip.list_models():
        raise ConfigError(
            f"Unknown model {model!r}. Use an open_clip name (see open_clip.list_models()), "
            "'hf-hub:org/repo' or 'local-dir:/path'."
        )
    if schema is None:  # (hf-hub: configurations are read, with a download, when the model is built)
        _check_text_tower_packages(model)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # random weights are a function of the seed alone
            clip_model = open_clip.create_model(model, pretrained=checkpoint if schema is None else None, device="cpu")
        tokenizer = open_clip.get_tokenizer(model)
    except ImportError as error:
        raise _missing_package(model, error) from error
    except (RuntimeError, OSError, ValueError) as error:
        if schema is None and not pretrained:
            raise
        if schema is None and _is_local_file(checkpoint):
            raise WeightsUnavailableError(
                f"Could not load the checkpoint file {checkpoint} into {model!r} ({_first_line(error)}). "
                "Is it a checkpoint of this architecture?"
            ) from error
        raise WeightsUnavailableError(_offline_message(model, pretrained, error)) from error
    if not hasattr(clip_model, "token_embedding"):
        raise ModelUnavailableError(
            f"{model!r} has a custom text tower (e.g. a Hugging Face text model); ueo needs "
            "open_clip's built-in CLIP text transformer for prompt learning."
        )
    clip_model.to(device).eval()
    return ClipBundle(model=clip_model, tokenizer=tokenizer, name=model, pretrained=pretrained)
