"""fit / evaluate: the adaptation loop and the evaluation passes.

Datasets are any PyTorch ``Dataset`` whose items are ``(image, label)``: ``image`` a PIL image (the
bundle's train/eval transform is applied) or a float tensor [3, S, S] already normalised (used as
given); ``label`` an int, -1 (or None) when unknown or unlabeled.

The bundle's CLIP is never left modified: fit tunes it in place and restores the original values at
the end; the result's ``adapted`` state re-applies what was learned (``evaluate(..., adapted=...)``).
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from torch.utils.data import DataLoader, Dataset

from . import __version__
from .metrics import compute_metrics
from .objectives import entropy_loss, infomax_loss, mcm_scores, oracle_weights, ueo_loss
from .prompts import DEFAULT_INIT, PromptLearner
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
    fast: decode the images once into a uint8 cache and augment whole batches on the device
        (``ueo.fastpath``); None = on for CUDA when the datasets yield PIL images.
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
    init: str = DEFAULT_INIT
    seed: int = 2023
    eval_every: int = 10
    eval_train: bool = True
    eval_batch_size: int = 256
    num_workers: int = 0
    amp: Optional[bool] = None
    fast: Optional[bool] = None
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


class TrainingInterrupted(Exception):
    """fit stopped on request (SIGINT/SIGTERM in the CLI) after saving a checkpoint."""


class NonFiniteLoss(FloatingPointError):
    """The loss became NaN/inf. ``last_good`` is the adapted state at the start of the failing epoch."""

    def __init__(self, message: str, last_good: AdaptedState):
        super().__init__(message)
        self.last_good = last_good


class _Views(Dataset):
    """(image, label) items -> (tensor, label, index), applying ``transform`` to non-tensor images.

    With ``seed`` set, the random transform of sample i in epoch e draws from its own seed (seed, e, i):
    a view does not depend on the order, the worker or the process that loads it, so runs are identical
    whatever the number of workers or processes, and a resumed run sees the same views.
    """

    def __init__(self, dataset: Dataset, transform, seed: Optional[int] = None):
        self.dataset, self.transform, self.seed, self.epoch = dataset, transform, seed, 0

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        item = self.dataset[index]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise TypeError(f"Dataset items must be (image, label) pairs; item {index} is {type(item).__name__}.")
        image, label = item[0], item[1]
        if not torch.is_tensor(image):
            if self.seed is None:
                image = self.transform(image)
            else:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(view_seed(self.seed, self.epoch, index))
                    image = self.transform(image)
        label = -1 if label is None else int(label)
        return image, label, index


def view_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


def epoch_batches(num_samples: int, batch_size: int, seed: int, epoch: int) -> List[List[int]]:
    """The global batches of one epoch: a permutation seeded by (seed, epoch), cut into batches of
    ``batch_size`` (the last partial batch is kept)."""
    order = np.random.default_rng([seed, epoch]).permutation(num_samples).tolist()
    return [order[i:i + batch_size] for i in range(0, num_samples, batch_size)]


def cosine_lr(base: float, step: int, total: int) -> float:
    """Cosine annealing from ``base`` to 0 over ``total`` steps, no warm-up (step counts from 0)."""
    return base * 0.5 * (1.0 + math.cos(math.pi * step / total))


def _dist() -> tuple:
    """(rank, world size) of torch.distributed, (0, 1) when not initialised."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _gather_rows(local: torch.Tensor, counts: List[int], differentiable: bool) -> torch.Tensor:
    """Concatenate every rank's rows (rank order). Ranks may hold different row counts (``counts``)."""
    rank, world = _dist()
    if world == 1:
        return local
    width = max(counts)
    padded = torch.cat([local, local.new_zeros((width - len(local),) + tuple(local.shape[1:]))])
    if differentiable:
        parts = torch.distributed.nn.functional.all_gather(padded)
    else:
        parts = [torch.empty_like(padded) for _ in range(world)]
        torch.distributed.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, counts)])


def _average_gradients(params: List[torch.Tensor]) -> None:
    """Mean of each gradient over the ranks (each rank's gradient holds world x its rows' share)."""
    _, world = _dist()
    if world == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= world
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


def _autocast(device: torch.device, amp: Optional[bool]):
    use = device.type == "cuda" if amp is None else amp
    if not use:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _image_features(model, images: torch.Tensor) -> torch.Tensor:
    return F.normalize(model.encode_image(images).float(), dim=-1)


def _chunks(items: List[int], size: int) -> List[List[int]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _cache_geometry(bundle):
    cfg = bundle.model.visual.preprocess_cfg
    return bundle.image_size, cfg["mean"], cfg["std"]


@torch.no_grad()
def _infer(model, text_features: torch.Tensor, dataset: Dataset, transform, batch_size: int, device, amp,
           num_workers: int = 0, progress: bool = False, cache=None, geometry=None) -> Outputs:
    """Raw cosines [N, K] and labels of a whole dataset, in dataset order. Under torch.distributed each
    rank scores every world-th sample and the results are gathered: every sample counted exactly once.
    With ``cache`` (an ImageCache of the dataset) the eval views are made on the device."""
    rank, world = _dist()
    mine = list(range(rank, len(dataset), world))
    if cache is not None:
        from .fastpath import center_views

        batches = ((center_views(cache, chunk, *geometry, device), torch.tensor([cache.labels[i] for i in chunk]), chunk)
                   for chunk in _chunks(mine, batch_size))
    else:
        batches = DataLoader(torch.utils.data.Subset(_Views(dataset, transform), mine), batch_size=batch_size,
                             shuffle=False, num_workers=num_workers, pin_memory=device.type == "cuda")
    cosines, labels = [], []
    for images, batch_labels, _ in tqdm(batches, desc="evaluate", unit="batch", total=math.ceil(len(mine) / batch_size),
                                        disable=not progress or rank > 0, leave=False):
        with _autocast(device, amp):
            feats = _image_features(model, images.to(device, non_blocking=True))
        cosines.append((feats @ text_features.float().T).float())
        labels.append(batch_labels.to(device))
    k = text_features.shape[0]
    cos = torch.cat(cosines) if cosines else torch.zeros(0, k, device=device)
    lab = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long, device=device)
    if world > 1:
        counts = [len(range(r, len(dataset), world)) for r in range(world)]
        cos, lab = _gather_rows(cos, counts, False), _gather_rows(lab, counts, False)
        order = torch.tensor([i for r in range(world) for i in range(r, len(dataset), world)], device=cos.device)
        cos, lab = cos[torch.argsort(order)], lab[torch.argsort(order)]
    return Outputs(cos.cpu(), lab.cpu())


def _objective(cfg: FitConfig, probs: torch.Tensor, weights: Optional[torch.Tensor]) -> torch.Tensor:
    if cfg.method in ("ueo", "oracle"):
        return ueo_loss(probs, weights, cfg.trade)
    if cfg.method == "infomax":
        return infomax_loss(probs, cfg.trade)
    return entropy_loss(probs)


def _provenance(cfg: FitConfig) -> Dict[str, str]:
    return {"ueo_version": __version__, "open_clip_version": open_clip.__version__, "method": cfg.method,
            "torch_version": torch.__version__}


# Settings that must not change between an interrupted run and its resumption.
RESUME_KEYS = ("method", "tune", "rule", "epochs", "batch_size", "lr_prompt", "lr_norm", "trade", "logit_scale",
               "weights", "init", "seed")


def fit(bundle, class_names: Sequence[str], train: Dataset, test: Optional[Dataset] = None,
        config: Optional[FitConfig] = None, *, checkpoint: Optional[Callable[[Dict], None]] = None,
        resume: Optional[Dict] = None, should_stop: Optional[Callable[[], bool]] = None, **overrides) -> FitResult:
    """Adapt ``bundle``'s CLIP to the unlabeled ``train`` set for the known ``class_names``.

    Any FitConfig field may be given as a keyword (``method="ueo", epochs=50, ...``), overriding ``config``.
    Evaluates at epoch 0 (zero-shot), every ``eval_every`` epochs and at the end, on ``test`` and (when
    it has labels and ``eval_train``) on the adaptation set itself. Returns a :class:`FitResult`.

    checkpoint: called with a checkpoint (see :func:`save_checkpoint`) after every epoch and when stopping.
    resume: a checkpoint from :func:`load_checkpoint`; training continues where it stopped.
    should_stop: polled after every step; when it returns True a checkpoint is made and
        :class:`TrainingInterrupted` is raised.
    Raises :class:`NonFiniteLoss` (holding the last good state) when the loss becomes NaN or infinite.
    Under torch.distributed (torchrun) every rank calls fit with the same data: each global batch is split
    across the ranks and the loss is computed over the whole global batch, as on one process.
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

    learner = PromptLearner(bundle, class_names, init=cfg.init).to(device)
    tuned = configure_tuning(model, learner, cfg.tune, cfg.rule)
    originals = adapted_state(tuned)
    result = FitResult(config=cfg, tuned_parameters={n: p.numel() for n, p in tuned.items()})
    training = cfg.method != "zeroshot" and cfg.epochs > 0
    caches = _build_caches(cfg, bundle, {"train": train, "test": test})
    geometry = _cache_geometry(bundle)

    def text_features(grad: bool) -> torch.Tensor:
        with torch.set_grad_enabled(grad), _autocast(device, cfg.amp):
            return learner.text_features().float()

    def infer(dataset) -> Outputs:
        cache = caches.get("train" if dataset is train else "test")
        return _infer(model, text_features(False), dataset, bundle.eval_transform, cfg.eval_batch_size, device,
                      cfg.amp, cfg.num_workers, cfg.progress, cache, geometry)

    def evaluate_now(epoch: int, need_train: bool) -> Optional[Outputs]:
        result.outputs.clear()  # outputs always belong to the latest evaluation
        train_out = None
        if need_train or cfg.eval_train:
            train_out = infer(train)
            result.outputs["train"] = train_out
            if cfg.eval_train and bool((train_out.labels >= 0).any()):
                result.evaluations.append({"epoch": epoch, "split": "train", **train_out.metrics(num_known)})
        if test is not None:
            out = infer(test)
            result.evaluations.append({"epoch": epoch, "split": "test", **out.metrics(num_known)})
            result.outputs["test"] = out
        return train_out

    def state() -> AdaptedState:
        return AdaptedState(tensors=adapted_state(tuned), class_names=list(class_names), model=bundle.name,
                            pretrained=bundle.pretrained, tune=cfg.tune, rule=cfg.rule, init=cfg.init,
                            info=_provenance(cfg))

    try:
        needs_weights = cfg.method in ("ueo", "oracle") and training
        if resume is not None:
            start = _restore(resume, cfg, tuned, result, list(class_names), bundle)
            weights = resume["tensors"].get("weights")
        else:
            start = (1, 0)
            zero_shot_train = evaluate_now(0, need_train=needs_weights)
            weights = _confidence_weights(cfg, zero_shot_train, num_known) if needs_weights else None
        if training:
            _train(cfg, model, learner, tuned, train, weights, result, evaluate_now, text_features, infer,
                   bundle.train_transform, start, state, checkpoint, should_stop, caches.get("train"), geometry,
                   bundle.name)
        result.weights = result.weights if result.weights is not None else weights
        result.adapted = state()
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


def _build_caches(cfg: FitConfig, bundle, datasets: Dict[str, Optional[Dataset]]) -> Dict:
    """Decoded uint8 caches of the datasets for the fast path (empty when the plain path is used)."""
    if cfg.fast is False or (cfg.fast is None and bundle.device.type != "cuda"):
        return {}
    first = datasets["train"][0][0]
    if torch.is_tensor(first):
        if cfg.fast:
            raise ValueError("fast=True needs datasets of PIL images (the fast path decodes and augments them).")
        return {}
    from .fastpath import build_cache

    max_side = 2 * bundle.image_size
    return {name: build_cache(data, max_side, bundle.device, progress=cfg.progress)
            for name, data in datasets.items() if data is not None}


def _cached_batch(cache, indices, seed, epoch, geometry, device):
    from .fastpath import augment, crop_boxes

    if not indices:
        return torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    images = augment(cache, indices, crop_boxes(cache, indices, seed, epoch), *geometry, device)
    return images, torch.tensor([cache.labels[i] for i in indices]), torch.tensor(indices)


def _train(cfg, model, learner, tuned, train, weights, result, evaluate_now, text_features, infer, transform,
           start, state, checkpoint, should_stop, cache=None, geometry=None, model_name=None):
    device = learner.ctx.device
    rank, world = _dist()
    tune_prompt = "prompt.ctx" in tuned
    tune_norm = len(tuned) > int(tune_prompt)
    groups = []
    if tune_prompt:
        groups.append({"params": [learner.ctx], "lr": cfg.lr_prompt, "base_lr": cfg.lr_prompt, "name": "prompt"})
    if tune_norm:
        groups.append({"params": [p for n, p in tuned.items() if n != "prompt.ctx"], "lr": cfg.lr_norm,
                       "base_lr": cfg.lr_norm, "name": "norm"})
    optimizer = torch.optim.SGD(groups, lr=cfg.lr_prompt, momentum=0.0, weight_decay=0.0)
    params = [p for g in groups for p in g["params"]]
    views = _Views(train, transform, seed=cfg.seed)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    fixed_text = None if tune_prompt else text_features(False)
    device_weights = weights.to(device) if weights is not None else None
    first_epoch, skip = start

    def make_checkpoint(epoch: int, done_in_epoch: int) -> Dict:
        return {"tensors": {**{f"param/{k}": v for k, v in adapted_state(tuned).items()},
                            **({"weights": device_weights.cpu()} if device_weights is not None else {}),
                            "torch_rng": torch.get_rng_state()},
                "meta": {"epoch": epoch, "done_in_epoch": done_in_epoch, "config": asdict(cfg), "model": model_name,
                         "class_names": learner.class_names, "history": result.history,
                         "evaluations": result.evaluations,
                         "lr": [g["lr"] for g in optimizer.param_groups]}}

    for epoch in range(first_epoch, cfg.epochs + 1):
        if cfg.weights == "epoch" and cfg.method == "ueo" and epoch > 1 and not (epoch == first_epoch and skip):
            device_weights = infer(train).scores.to(device)
        last_good = state()
        views.epoch = epoch
        if hasattr(train, "set_epoch"):  # the usual PyTorch hook for datasets whose items depend on the epoch
            train.set_epoch(epoch)
        batches = epoch_batches(len(train), cfg.batch_size, cfg.seed, epoch)
        local = [b[rank::world] for b in batches]
        pending = []
        bar = tqdm(total=len(train), initial=min(skip * cfg.batch_size, len(train)), desc=f"epoch {epoch}/{cfg.epochs}",
                   unit="img", unit_scale=True, disable=not cfg.progress or rank > 0, leave=False)
        if cache is not None:
            iterator = (_cached_batch(cache, b, cfg.seed, epoch, geometry, device) for b in local[skip:])
        else:
            iterator = iter(DataLoader(views, batch_sampler=local[skip:], collate_fn=_collate,
                                       num_workers=cfg.num_workers, pin_memory=device.type == "cuda"))
        for position in range(skip, len(batches)):
            images, _, index = next(iterator)
            step = (epoch - 1) * steps_per_epoch + position
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(group["base_lr"], step, total)
            text = fixed_text if fixed_text is not None else text_features(True)
            images = images.to(device, non_blocking=True)
            if len(images):
                with torch.set_grad_enabled(tune_norm), _autocast(device, cfg.amp):
                    feats = _image_features(model, images)
                probs = torch.softmax(cfg.logit_scale * feats @ text.T, dim=-1)
            else:  # a rank without a share of a small last batch still joins the collectives
                probs = text.sum() * 0 + torch.zeros(0, text.shape[0], device=device)
            batch_weights = device_weights[index.to(device)] if device_weights is not None else None
            if world > 1:
                counts = [len(batches[position][r::world]) for r in range(world)]
                probs = _gather_rows(probs, counts, differentiable=True)
                if batch_weights is not None:
                    batch_weights = _gather_rows(batch_weights, counts, differentiable=False)
            loss = _objective(cfg, probs, batch_weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            _average_gradients(params)
            optimizer.step()
            pending.append((step + 1, epoch, loss.detach(), {g["name"]: g["lr"] for g in optimizer.param_groups}))
            bar.update(len(batches[position]))
            if cfg.progress and rank == 0 and len(pending) % 10 == 1:  # an occasional host sync, for the bar only
                bar.set_postfix(loss=f"{loss.item():.4f}")
            # ranks agree on stopping every 10 steps (one tiny collective), a single process at every step
            poll = world == 1 or position % 10 == 9
            if should_stop is not None and poll and position + 1 < len(batches) and _agree(should_stop()):
                _flush(pending, result, last_good)
                if checkpoint is not None:
                    checkpoint(make_checkpoint(epoch, position + 1))
                bar.close()
                raise TrainingInterrupted(f"stopped at step {step + 1} (epoch {epoch}); a checkpoint was saved")
        bar.close()
        skip = 0
        _flush(pending, result, last_good)
        if epoch == cfg.epochs or (cfg.eval_every and epoch % cfg.eval_every == 0):
            evaluate_now(epoch, need_train=False)
        if checkpoint is not None:
            checkpoint(make_checkpoint(epoch + 1, 0))
        if should_stop is not None and epoch < cfg.epochs and _agree(should_stop()):
            raise TrainingInterrupted(f"stopped after epoch {epoch}; a checkpoint was saved")
    if device_weights is not None:
        result.weights = device_weights.cpu()


def _agree(flag: bool) -> bool:
    """True on every rank when any rank's flag is True (so all ranks stop at the same step)."""
    _, world = _dist()
    if world == 1:
        return bool(flag)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.distributed.get_backend() == "nccl" else "cpu"
    value = torch.tensor([1.0 if flag else 0.0], device=device)  # NCCL reduces CUDA tensors only
    torch.distributed.all_reduce(value)
    return bool(value.item() > 0)


def _collate(items):
    """default_collate, except that a rank's empty share of a small last batch gives empty tensors."""
    if not items:
        return torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return torch.utils.data.default_collate(items)


def _flush(pending, result: FitResult, last_good: AdaptedState) -> None:
    """Move the steps' losses into the history (one host sync); stop on a non-finite loss."""
    if not pending:
        return
    values = torch.stack([p[2] for p in pending]).float().cpu().tolist()
    for (step, epoch, _, lrs), value in zip(pending, values):
        if not math.isfinite(value):
            raise NonFiniteLoss(f"The loss became {value} at step {step} (epoch {epoch}); the adapted state "
                                f"from the start of epoch {epoch} is kept.", last_good)
        result.history.append({"step": step, "epoch": epoch, "loss": value,
                               "lr_prompt": lrs.get("prompt"), "lr_norm": lrs.get("norm")})
    pending.clear()


def _restore(resume: Dict, cfg: FitConfig, tuned, result: FitResult, class_names, bundle) -> tuple:
    meta, tensors = resume["meta"], resume["tensors"]
    saved = meta["config"]
    changed = [k for k in RESUME_KEYS if saved.get(k) != getattr(cfg, k)]
    if changed:
        raise ValueError("The checkpoint was made with different settings: "
                         + ", ".join(f"{k}={saved.get(k)!r} (now {getattr(cfg, k)!r})" for k in changed))
    if meta["class_names"] != class_names:
        raise ValueError("The checkpoint was made for other class names.")
    params = {k[len("param/"):]: v for k, v in tensors.items() if k.startswith("param/")}
    if meta.get("model") not in (None, bundle.name):
        raise ValueError(f"The checkpoint was made for model {meta['model']!r}, not {bundle.name!r}.")
    if set(params) != set(tuned) or any(tuple(v.shape) != tuple(tuned[k].shape) for k, v in params.items()):
        raise ValueError("The checkpoint's tuned parameters do not match this model and tuning rule.")
    with torch.no_grad():
        for name, value in params.items():
            tuned[name].copy_(value.to(tuned[name].device, tuned[name].dtype))
    if "torch_rng" in tensors:
        torch.set_rng_state(tensors["torch_rng"])
    result.history[:] = meta["history"]
    result.evaluations[:] = meta["evaluations"]
    return meta["epoch"], meta["done_in_epoch"]


CHECKPOINT_FORMAT = "ueo-checkpoint/1"


def save_checkpoint(path, checkpoint: Dict) -> None:
    """Write a checkpoint as safetensors (tensors) + JSON metadata, atomically; nothing is pickled."""
    from safetensors.torch import save_file

    from .files import atomic_path

    meta = {"format": CHECKPOINT_FORMAT, "meta": json.dumps(checkpoint["meta"])}
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in checkpoint["tensors"].items()}, str(tmp), metadata=meta)


def load_checkpoint(path) -> Dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path} is not a ueo checkpoint.")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return {"tensors": tensors, "meta": json.loads(meta["meta"])}


def evaluate(bundle, class_names: Optional[Sequence[str]], test: Dataset, adapted: Optional[AdaptedState] = None,
             batch_size: int = 256, num_workers: int = 0, amp: Optional[bool] = None, progress: bool = False,
             fast: Optional[bool] = None) -> tuple:
    """Evaluate zero-shot CLIP, or CLIP with an adapted state applied, on ``test``.

    class_names default to the adapted state's. Returns (metrics dict, Outputs).
    fast: decode once and make the eval views on the device (None: on CUDA with PIL images).
    The bundle's model is left unchanged.
    """
    if adapted is not None:
        adapted.check_compatible(bundle.name, bundle.pretrained)
        adapted.check_fits(bundle.model)
        class_names = class_names or adapted.class_names
        init = adapted.init
    else:
        init = DEFAULT_INIT
    if not class_names:
        raise ValueError("class_names are needed when no adapted state is given.")
    learner = PromptLearner(bundle, class_names, init=init).to(bundle.device)
    bundle.model.eval()
    with applied(bundle.model, learner, adapted.tensors if adapted is not None else {}):
        with torch.no_grad(), _autocast(bundle.device, amp):
            text = learner.text_features().float()
        cache = _build_caches(FitConfig(fast=fast, progress=progress), bundle, {"train": test}).get("train")
        out = _infer(bundle.model, text, test, bundle.eval_transform, batch_size, bundle.device, amp, num_workers,
                     progress, cache, _cache_geometry(bundle))
    return out.metrics(len(class_names)), out
