"""Use what was learned: a classifier object, and an export that plain open_clip loads.

``load_adapted(path)`` gives a :class:`Classifier`: the CLIP with the adapted state applied, the known
classes' text features (computed once) and the fitted threshold. It decides exactly as ``ueo predict``
does (same loading, views and arithmetic), for each image on its own.

``Classifier.export(folder)`` writes what is needed to run the adapted model with open_clip alone:
``open_clip_model.safetensors`` (the whole CLIP with the adapted normalisation affines merged in) and
``open_clip_config.json`` (open_clip's "local-dir:" layout), ``classifier.safetensors`` (the text features
of the learned prompts, the class names, the threshold and the score rule) and a README with the lines of
plain PyTorch + open_clip that reproduce the decisions.
"""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import is_finite_number
from .errors import ConfigError, DataError, IncompatibleError
from .files import write_tagged, write_text
from .images import as_dataset
from .method import autocast, mcm_scores, outputs_of
from .model import AdaptedState, PromptLearner, apply_adapted_state, decide, load_clip, threshold_warning
from .version import __version__
from .views import checked_item, image_source

CLASSIFIER_FORMAT = "ueo-classifier/1"
EXPORT_FILES = ("open_clip_model.safetensors", "open_clip_config.json", "classifier.safetensors", "README.md")
SCORE_RULE = (
    "mcm: the score is the largest softmax of the raw cosines (temperature 1) to the known classes' "
    "text features; an image is its top-1 class when score >= threshold, else 'unknown'"
)


@dataclass
class Prediction:
    """label: a class name or "unknown"; score: the MCM score; top1: the most similar known class."""

    label: str
    score: float
    top1: str


@dataclass
class Similarities:
    """cosines [N, K]: raw cosine similarities to the known classes; probabilities [N, K]: their softmax
    at temperature 1 (the MCM score is the row maximum)."""

    cosines: torch.Tensor
    probabilities: torch.Tensor


class Classifier:
    """A CLIP with an adapted state applied, its known classes and its threshold.

    classes: the known class names (label order). threshold: accept the top-1 class when score >= it
    (settable). model / preprocess: the open_clip model (adapted) and its eval transform (PIL -> tensor).
    """

    def __init__(self, bundle, state: AdaptedState, threshold: float | None = None, batch_size: int = 256):
        state.check_compatible(bundle)
        state.check_fits(bundle.model)
        self.bundle, self.state, self.batch_size = bundle, state, batch_size
        self.classes = list(state.class_names)
        learner = PromptLearner(bundle, self.classes, init=state.init).to(bundle.device)
        apply_adapted_state(bundle.model, learner, state.tensors)  # the classifier owns its bundle
        bundle.model.eval()
        with torch.no_grad(), autocast(bundle.device, None):
            self.text_features = learner.text_features().float()
        if not torch.isfinite(self.text_features).all():
            raise IncompatibleError("This adapted state gives non-finite text features on this model: it is damaged.")
        fitted = state.threshold
        if threshold is None and fitted is None:
            warnings.warn(
                "The adapted state holds no fitted threshold (saved by an older ueo): every image is "
                "accepted as a known class until you set classifier.threshold.",
                stacklevel=2,
            )
            self._threshold = 1.0 / len(self.classes)
        else:  # (the setter warns about a value that decides nothing, e.g. an edited state's)
            self.threshold = threshold if threshold is not None else fitted.value

    @property
    def threshold(self) -> float:
        return self._threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        if not is_finite_number(value):
            raise ConfigError(f"threshold must be a finite number, got {value!r}.")
        problem = threshold_warning(float(value), len(self.classes))
        if problem:
            warnings.warn(problem, stacklevel=2)
        self._threshold = float(value)

    @property
    def model(self) -> torch.nn.Module:
        return self.bundle.model

    @property
    def preprocess(self):
        return self.bundle.eval_transform

    def similarities(self, images) -> Similarities:
        """Raw cosines and their softmax for ``images``: PIL images or file paths (one or a list), or a
        normalised tensor batch [B, 3, S, S] (or one image [3, S, S]). Each image is scored on its own."""
        if torch.is_tensor(images):
            if images.dim() not in (3, 4):
                raise DataError(f"a tensor of images is [B, 3, S, S] or [3, S, S]; got {list(images.shape)}.")
            batch = images[None] if images.dim() == 3 else images
            dataset: Any = [checked_item((image, -1), i, self.bundle.image_size) for i, image in enumerate(batch)]
        else:
            dataset, _ = as_dataset(images)
        if len(dataset) == 0:
            empty = torch.zeros(0, len(self.classes))
            return Similarities(empty, empty)
        source = image_source(self.bundle, dataset)
        cosines = outputs_of(self.model, self.text_features, source, batch_size=self.batch_size, amp=None).cosines
        return Similarities(cosines, torch.softmax(cosines, dim=-1))

    def predict(self, images) -> list[Prediction]:
        """For each image: its class or "unknown", its score and its top-1 known class (as `ueo predict`)."""
        cosines = self.similarities(images).cosines
        values, top = mcm_scores(cosines).tolist(), cosines.argmax(dim=-1).tolist()
        decided = decide(top, values, self.classes, self.threshold)
        return [Prediction(label, s, self.classes[k]) for label, s, k in zip(decided, values, top)]

    def export(self, folder, *, overwrite: bool = False) -> Path:
        """Write the open_clip-loadable model, the classifier and a README into ``folder`` (``EXPORT_FILES``);
        returns it. A folder that already holds one of these files is refused unless ``overwrite`` (which
        replaces those files, and only those)."""
        folder = Path(folder)
        there = [name for name in EXPORT_FILES if (folder / name).exists()]
        if there and not overwrite:
            raise ConfigError(
                f"{folder} already holds {', '.join(there)}: export into an empty folder, or pass overwrite=True "
                "(--overwrite) to replace these files."
            )
        folder.mkdir(parents=True, exist_ok=True)
        state_dict = {
            k: v.detach().float().cpu() if v.is_floating_point() else v.detach().cpu()
            for k, v in self.model.state_dict().items()
        }
        write_tagged(folder / "open_clip_model.safetensors", state_dict, {"exported_by": f"ueo {__version__}"}, "pt")
        config = {
            "model_cfg": model_config(self.bundle),
            "preprocess_cfg": {
                k: list(v) if isinstance(v, tuple) else v for k, v in self.model.visual.preprocess_cfg.items()
            },
        }
        write_text(folder / "open_clip_config.json", json.dumps(config, indent=2) + "\n")
        meta = {
            "class_names": json.dumps(self.classes),
            "threshold": repr(self.threshold),
            "threshold_rule": json.dumps(self.state.threshold.record() if self.state.threshold is not None else None),
            "score": SCORE_RULE,
            "model": self.bundle.name,
            "pretrained": json.dumps(self.bundle.pretrained),
            "weights_identity": json.dumps(self.bundle.identity),
            "ueo_version": __version__,
        }
        write_tagged(
            folder / "classifier.safetensors", {"text_features": self.text_features.cpu()}, meta, CLASSIFIER_FORMAT
        )
        write_text(
            folder / "README.md",
            EXPORT_README.format(
                model=self.bundle.name, k=len(self.classes), threshold=self.threshold, agreement=EXPORT_AGREEMENT
            ),
        )
        return folder


def model_config(bundle) -> dict:
    """open_clip's configuration of the bundle's architecture (what "local-dir:" needs to rebuild it)."""
    import open_clip

    name = bundle.name
    if name.startswith("local-dir:"):
        return json.loads((Path(name[len("local-dir:") :]) / "open_clip_config.json").read_text())["model_cfg"]
    if name.startswith("hf-hub:"):
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(name[len("hf-hub:") :], "open_clip_config.json")
        return json.loads(Path(path).read_text())["model_cfg"]
    config = open_clip.get_model_config(name)
    if config is None:
        raise IncompatibleError(f"open_clip has no configuration for {name!r}.")
    return copy.deepcopy(config)


def load_adapted(
    path, device=None, pretrained: str | None = None, model: str | None = None, threshold: float | None = None
) -> Classifier:
    """A :class:`Classifier` from an adapted state file. The CLIP is the one the state records (found as
    ``ueo predict`` finds it); ``pretrained=`` / ``model=`` override it (e.g. a local weights file offline).
    ``threshold``: instead of the fitted one."""

    state = AdaptedState.load(path)
    name = model or state.model
    weights = pretrained if pretrained is not None else state.pretrained
    state.check_model(name)
    bundle = load_clip(name, pretrained=weights, device=device, seed=state.seed)  # the weights it was learned on
    return Classifier(bundle, state, threshold=threshold)


# Measured by benchmarks/agreement.py (textured photos of 150-2000 px, JPEG and PNG; the toy CLIP and a random
# 224-px ViT) and bounded by tests/test_classifier.py.
EXPORT_AGREEMENT = (
    "within 4e-5 for images whose shorter side is at most twice the model's input size (ueo keeps those whole); "
    "larger ones ueo resamples from a copy whose shorter side is twice the input, and their scores were measured "
    "up to 6e-4 apart on textured photos of up to 2000 px. A decision differs only for a score that close to the "
    "threshold (1 of 144 measured). Against `ueo predict`, which reads ueo's decode cache, add what its JPEG "
    "entries lose (up to 5e-4 measured); with raw entries (--cache-format raw) predict agrees with "
    "ueo.load_adapted to 5e-7"
)

EXPORT_README = """# An adapted CLIP, for open_clip alone

Exported by ueo from an adapted state of `{model}` ({k} known classes, threshold {threshold:.6f}).

| file | what |
|---|---|
| `open_clip_model.safetensors` | the whole CLIP, with the adapted normalisation affines merged in |
| `open_clip_config.json` | the architecture and preprocessing, for open_clip's `local-dir:` loading |
| `classifier.safetensors` | `text_features` [K, D] (the learned prompts, encoded and L2-normalised) and, as metadata, `class_names`, `threshold` and the score rule |

These lines reproduce ueo's decisions with PyTorch and open_clip only:

```python
import json

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from safetensors import safe_open

folder = "path/to/this/folder"
model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{{folder}}")
model.eval()
with safe_open(f"{{folder}}/classifier.safetensors", "pt") as f:
    text_features, meta = f.get_tensor("text_features"), f.metadata()
classes, threshold = json.loads(meta["class_names"]), float(meta["threshold"])


def load(path):  # the image as ueo reads it: EXIF orientation, transparency over white, deep integers to 8 bits
    image = ImageOps.exif_transpose(Image.open(path))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGB", rgba.size, (255, 255, 255))
        white.paste(rgba, mask=rgba.split()[-1])
        return white
    if image.mode.startswith("I;16") or image.mode == "I":  # by the data's own depth: 8, 10, 12, 14, 16 bits or more
        values = np.asarray(image, dtype=np.float64)
        bits = max(8, int(np.ceil(np.log2(max(values.max(initial=0), 0) + 1))))
        bits += bits % 2 if bits <= 16 else 0
        image = Image.fromarray((values / 2 ** (bits - 8)).clip(0, 255).astype(np.uint8))
    return image.convert("RGB")


def classify(path):
    image = preprocess(load(path)).unsqueeze(0)
    with torch.no_grad():
        cosines = F.normalize(model.encode_image(image), dim=-1) @ text_features.T  # raw cosines
    score, top1 = cosines.softmax(dim=-1).max(dim=-1)  # the MCM score and the top-1 class
    label = classes[top1] if score >= threshold else "unknown"
    return label, score.item(), classes[top1]
```

With an open_clip model name, `open_clip.create_model_and_transforms(NAME, pretrained=f"{{folder}}/open_clip_model.safetensors")`
loads the same weights. `load` reads an image as ueo does (float images ueo also scales by their range: `ueo.pixels.as_rgb`). ueo makes its views with PIL's resampling rule in float
arithmetic where PIL rounds to 8 bits, so scores differ from these lines by rounding: {agreement}. On a
GPU ueo computes in bf16 autocast: scores then differ from fp32 in the third decimal.
"""
