"""fit / evaluate: the adaptation loop and the evaluation passes.

Datasets are any PyTorch ``Dataset`` whose items are ``(image, label)``: ``image`` a PIL image (the
bundle's train/eval transform is applied) or a float tensor [3, S, S] already normalised (used as
given); ``label`` an int, -1 (or None) when unknown or unlabeled.

The bundle's CLIP is never left modified: fit tunes it in place and restores the original values at
the end; the result's ``adapted`` state re-applies what was learned (``evaluate(..., adapted=...)``).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Dict, List, Optional, Sequence

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from torch.utils.data import DataLoader, Dataset

from . import __version__
from .metrics import compute_metrics
from .objectives import entropy_loss, infomax_loss, mcm_scores, oracle_weights, ueo_loss
from .prompts import PromptLearner
from .tuning import AdaptedState, adapted_state, applied, apply_adapted_state, configure_tuning

METHODS = ("ueo", "infomax", "entropy", "oracle", "zeroshot")
WEIGHT_MODES = ("fixed", "epoch")


@dataclass
class FitConfig:
    """Adaptation settings; defaults are the reference recipe (SPEC §4).

    method: "ueo" | "infomax" | "entropy" | "oracle" (needs train labels) | "zeroshot" (no training).
    tune: "prompt" | "norm" | "both".  rule: norm selection rule ("official" | "all-norms").
    weights: UEO/oracle confidence weights — "fixed": zero-shot MCM computed once over the adaptation set
        with the eval transform (the reference); "epoch": recomputed with the current model each epoch.
    logit_scale: training logits are logit_scale * cos (fixed 100, not CLIP's learned scale).
    trade: lambda, the weight of the marginal-entropy term.
    eval_every: evaluate every N epochs (epoch 0 = zero-shot and the last epoch always); 0 = only those.
    eval_train: also report metrics on the adaptation set (when it has labels).
    amp: bf16 autocast; None = on for CUDA, off on CPU. Tuned parameters are always fp32.
    """

    method: str = "ueo"
    tune: str = "both"
    rule: str = "official"
    epochs: int = 50
    batch_size: int = 64
    lr_prompt: float = 1e-4
    lr_norm: float = 1e-4
    trade: float = 1.0
    logit_scale: float = 100.0
    weights: str = "fixed"
    init: str = "a photo of a"
    seed: int = 2023
    eval_every: int = 10
    eval_train: bool = True
    eval_batch_size: int = 256
    num_workers: int = 0
    amp: Optional[bool] = None
    progress: bool = False

    def validate(self) -> "FitConfig":
        if self.method not in METHODS:
            raise ValueError(f"Unknown method {self.method!r}; choose one of {METHODS}.")
        if self.weights not in WEIGHT_MODES:
            raise ValueError(f"Unknown weights={self.weights!r}; choose one of {WEIGHT_MODES}.")
        for name in ("epochs", "eval_every", "num_workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")
        for name in ("batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        for name in ("lr_prompt", "lr_norm", "logit_scale"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)}.")
        return self


@dataclass
class Outputs:
    """Raw outputs of one evaluation pass, in dataset order. cosines: [N, K] raw cosine similarities."""

    cosines: torch.Tensor
    labels: torch.Tensor

    @property
    def predictions(self) -> torch.Tensor:
        return self.cosines.argmax(dim=-1)

    @property
    def scores(self) -> torch.Tensor:
        """MCM: max softmax of raw cosines (temperature 1); higher = more likely known."""
        return mcm_scores(self.cosines)

    def metrics(self, num_known: int) -> Dict[str, Optional[float]]:
        return compute_metrics(self.labels.numpy(), self.predictions.numpy(), self.scores.numpy(), num_known)


@dataclass
class FitResult:
    """evaluations: one dict per evaluation {"epoch", "split" ("test" | "train"), metric: value}.
    history: one dict per step {"step", "epoch", "loss", "lr_prompt", "lr_norm"}.
    adapted: the learned state (apply with ``evaluate(..., adapted=result.adapted)``).
    weights: the confidence weights used at the last epoch ([N], None for infomax / entropy).
    outputs: the last evaluation's raw outputs per split ("test"; "train" when the adaptation set was scored).
    """

    config: FitConfig
    evaluations: List[Dict] = field(default_factory=list)
    history: List[Dict] = field(default_factory=list)
    adapted: Optional[AdaptedState] = None
    tuned_parameters: Dict[str, int] = field(default_factory=dict)
    weights: Optional[torch.Tensor] = None
    outputs: Dict[str, Outputs] = field(default_factory=dict)

    @property
    def metrics(self) -> Dict[str, Dict]:
        """{"zeroshot": metrics at epoch 0, "adapted": metrics at the last evaluation} on the test set
        (on the adaptation set when no test set was given)."""
        split = "test" if any(e["split"] == "test" for e in self.evaluations) else "train"
        rows = [e for e in self.evaluations if e["split"] == split]
        if not rows:
            return {}
        return {"zeroshot": rows[0], "adapted": rows[-1]}


class _Views(Dataset):
    """(image, label) items -> (tensor, label, index), applying ``transform`` to non-tensor images."""

    def __init__(self, dataset: Dataset, transform):
        self.dataset, self.transform = dataset, transform

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        item = self.dataset[index]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise TypeError(f"Dataset items must be (image, label) pairs; item {index} is {type(item).__name__}.")
        image, label = item[0], item[1]
        if not torch.is_tensor(image):
            image = self.transform(image)
        label = -1 if label is None else int(label)
        return image, label, index


def _autocast(device: torch.device, amp: Optional[bool]):
    use = device.type == "cuda" if amp is None else amp
    if not use:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _image_features(model, images: torch.Tensor) -> torch.Tensor:
    return F.normalize(model.encode_image(images).float(), dim=-1)


@torch.no_grad()
def _infer(model, text_features: torch.Tensor, loader: DataLoader, device, amp, progress: bool = False) -> Outputs:
    cosines, labels = [], []
    for images, batch_labels, _ in tqdm(loader, desc="evaluate", unit="batch", disable=not progress, leave=False):
        with _autocast(device, amp):
            feats = _image_features(model, images.to(device, non_blocking=True))
        cosines.append((feats @ text_features.float().T).cpu())
        labels.append(batch_labels)
    return Outputs(torch.cat(cosines), torch.cat(labels))


def _eval_loader(dataset: Dataset, transform, cfg: FitConfig) -> DataLoader:
    return DataLoader(_Views(dataset, transform), batch_size=cfg.eval_batch_size, shuffle=False,
                      num_workers=cfg.num_workers, pin_memory=torch.cuda.is_available())


def _objective(cfg: FitConfig, probs: torch.Tensor, weights: Optional[torch.Tensor]) -> torch.Tensor:
    if cfg.method in ("ueo", "oracle"):
        return ueo_loss(probs, weights, cfg.trade)
    if cfg.method == "infomax":
        return infomax_loss(probs, cfg.trade)
    return entropy_loss(probs)


def _provenance(cfg: FitConfig) -> Dict[str, str]:
    return {"ueo_version": __version__, "open_clip_version": open_clip.__version__, "method": cfg.method,
            "torch_version": torch.__version__}


def fit(bundle, class_names: Sequence[str], train: Dataset, test: Optional[Dataset] = None,
        config: Optional[FitConfig] = None, **overrides) -> FitResult:
    """Adapt ``bundle``'s CLIP to the unlabeled ``train`` set for the known ``class_names``.

    Any FitConfig field may be given as a keyword (``method="ueo", epochs=50, ...``), overriding ``config``.
    Evaluates at epoch 0 (zero-shot), every ``eval_every`` epochs and at the end, on ``test`` and (when
    it has labels and ``eval_train``) on the adaptation set itself. Returns a :class:`FitResult`.
    """
    unknown = set(overrides) - {f.name for f in fields(FitConfig)}
    if unknown:
        raise TypeError(f"Unknown fit option(s): {sorted(unknown)}. Valid: {[f.name for f in fields(FitConfig)]}.")
    cfg = replace(config or FitConfig(), **overrides).validate()
    if len(train) == 0:
        raise ValueError("The adaptation set is empty.")
    num_known = len(class_names)
    model, device = bundle.model, bundle.device
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)

    learner = PromptLearner(bundle, class_names, init=cfg.init).to(device)
    tuned = configure_tuning(model, learner, cfg.tune, cfg.rule)
    originals = adapted_state(tuned)
    result = FitResult(config=cfg, tuned_parameters={n: p.numel() for n, p in tuned.items()})
    training = cfg.method != "zeroshot" and cfg.epochs > 0
    tune_prompt, tune_norm = "prompt.ctx" in tuned, len(tuned) > int("prompt.ctx" in tuned)

    eval_train = _eval_loader(train, bundle.eval_transform, cfg)
    eval_test = _eval_loader(test, bundle.eval_transform, cfg) if test is not None else None

    def text_features(grad: bool) -> torch.Tensor:
        with torch.set_grad_enabled(grad), _autocast(device, cfg.amp):
            return learner.text_features().float()

    def evaluate_now(epoch: int, need_train: bool) -> Optional[Outputs]:
        text = text_features(False)
        train_out = None
        if need_train or cfg.eval_train:
            train_out = _infer(model, text, eval_train, device, cfg.amp, cfg.progress)
            result.outputs["train"] = train_out
            if cfg.eval_train and bool((train_out.labels >= 0).any()):
                result.evaluations.append({"epoch": epoch, "split": "train", **train_out.metrics(num_known)})
        if eval_test is not None:
            out = _infer(model, text, eval_test, device, cfg.amp, cfg.progress)
            result.evaluations.append({"epoch": epoch, "split": "test", **out.metrics(num_known)})
            result.outputs["test"] = out
        return train_out

    try:
        needs_weights = cfg.method in ("ueo", "oracle") and training
        zero_shot_train = evaluate_now(0, need_train=needs_weights)
        weights = None
        if needs_weights:
            weights = _confidence_weights(cfg, zero_shot_train, num_known)
        if training:
            _train(cfg, bundle, learner, tuned, train, weights, result, evaluate_now, text_features,
                   tune_prompt, tune_norm, num_known)
        result.weights = result.weights if result.weights is not None else weights
        result.adapted = AdaptedState(tensors=adapted_state(tuned), class_names=list(class_names),
                                      model=bundle.name, pretrained=bundle.pretrained, tune=cfg.tune,
                                      rule=cfg.rule, init=cfg.init, info=_provenance(cfg))
    finally:
        apply_adapted_state(model, learner, originals)
        model.requires_grad_(False)
    return result


def _confidence_weights(cfg: FitConfig, outputs: Outputs, num_known: int) -> torch.Tensor:
    if cfg.method == "oracle":
        if bool((outputs.labels < 0).any()):
            raise ValueError("method 'oracle' needs a label for every adaptation image (found label -1); "
                             "it is an upper bound for experiments with labeled data.")
        return oracle_weights(outputs.labels, num_known)
    return outputs.scores


def _train(cfg, bundle, learner, tuned, train, weights, result, evaluate_now, text_features,
           tune_prompt, tune_norm, num_known):
    model, device = bundle.model, bundle.device
    generator = torch.Generator().manual_seed(cfg.seed)
    loader = DataLoader(_Views(train, bundle.train_transform), batch_size=cfg.batch_size, shuffle=True,
                        drop_last=False, generator=generator, num_workers=cfg.num_workers,
                        pin_memory=torch.cuda.is_available())
    groups = []
    if tune_prompt:
        groups.append({"params": [learner.ctx], "lr": cfg.lr_prompt, "name": "prompt"})
    if tune_norm:
        groups.append({"params": [p for n, p in tuned.items() if n != "prompt.ctx"], "lr": cfg.lr_norm,
                       "name": "norm"})
    optimizer = torch.optim.SGD(groups, lr=cfg.lr_prompt, momentum=0.0, weight_decay=0.0)
    total = cfg.epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1.0 + math.cos(math.pi * step / total)))
    fixed_text = None if tune_prompt else text_features(False)
    device_weights = weights.to(device) if weights is not None else None
    step = 0
    for epoch in range(1, cfg.epochs + 1):
        if epoch > 1 and cfg.weights == "epoch" and cfg.method == "ueo":
            device_weights = _current_weights(model, text_features, bundle, train, cfg).to(device)
        losses, lrs = [], []
        bar = tqdm(total=len(loader.dataset), desc=f"epoch {epoch}/{cfg.epochs}", unit="img", unit_scale=True,
                   disable=not cfg.progress, leave=False)
        for images, _, index in loader:
            images = images.to(device, non_blocking=True)
            text = fixed_text if fixed_text is not None else text_features(True)
            with torch.set_grad_enabled(tune_norm), _autocast(device, cfg.amp):
                feats = _image_features(model, images)
            probs = torch.softmax(cfg.logit_scale * feats @ text.T, dim=-1)
            batch_weights = device_weights[index.to(device)] if device_weights is not None else None
            loss = _objective(cfg, probs, batch_weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            lrs.append({g["name"]: g["lr"] for g in optimizer.param_groups})
            scheduler.step()
            losses.append(loss.detach())
            bar.update(len(images))
            if cfg.progress and len(losses) % 10 == 1:  # an occasional host sync, only when showing progress
                bar.set_postfix(loss=f"{loss.item():.4f}")
        bar.close()
        values = torch.stack(losses).float().cpu().tolist()  # one host sync per epoch
        for value, lr in zip(values, lrs):
            step += 1
            if not math.isfinite(value):
                raise FloatingPointError(f"The loss became {value} at step {step} (epoch {epoch}).")
            result.history.append({"step": step, "epoch": epoch, "loss": value,
                                   "lr_prompt": lr.get("prompt"), "lr_norm": lr.get("norm")})
        if epoch == cfg.epochs or (cfg.eval_every and epoch % cfg.eval_every == 0):
            evaluate_now(epoch, need_train=False)
    if device_weights is not None:
        result.weights = device_weights.cpu()


def _current_weights(model, text_features, bundle, train, cfg) -> torch.Tensor:
    """MCM scores of the current model over the adaptation set with the eval transform."""
    out = _infer(model, text_features(False), _eval_loader(train, bundle.eval_transform, cfg),
                 bundle.device, cfg.amp)
    return out.scores


def evaluate(bundle, class_names: Optional[Sequence[str]], test: Dataset, adapted: Optional[AdaptedState] = None,
             batch_size: int = 256, num_workers: int = 0, amp: Optional[bool] = None, progress: bool = False) -> tuple:
    """Evaluate zero-shot CLIP, or CLIP with an adapted state applied, on ``test``.

    class_names default to the adapted state's. Returns (metrics dict, Outputs).
    The bundle's model is left unchanged.
    """
    if adapted is not None:
        adapted.check_compatible(bundle.name, bundle.pretrained)
        class_names = class_names or adapted.class_names
        init = adapted.init
    else:
        init = "a photo of a"
    if not class_names:
        raise ValueError("class_names are needed when no adapted state is given.")
    cfg = FitConfig(eval_batch_size=batch_size, num_workers=num_workers, amp=amp)
    learner = PromptLearner(bundle, class_names, init=init).to(bundle.device)
    bundle.model.eval()
    with applied(bundle.model, learner, adapted.tensors if adapted is not None else {}):
        with torch.no_grad(), _autocast(bundle.device, amp):
            text = learner.text_features().float()
        out = _infer(bundle.model, text, _eval_loader(test, bundle.eval_transform, cfg), bundle.device, amp, progress)
    return out.metrics(len(class_names)), out
