"""Checkpoints of a training run: written after every epoch and when a stop is requested, read to resume.

A checkpoint is a safetensors file: the tuned parameters ("param/<name>"), the confidence weights
("weights") and the CPU RNG state ("torch_rng") as tensors, and JSON metadata (format, epoch, steps
done in that epoch, the settings, model, class names, history, evaluations, learning rates). Nothing
is pickled. Because every view and every batch order is drawn from its own seed, a resumed run ends
with the same parameters as an uninterrupted one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict

import torch

from ..config import SETTING_ALIASES, TRAJECTORY_KEYS, FitConfig, is_finite_number
from ..errors import IncompatibleError
from ..files import read_tagged, write_tagged
from ..model import adapted_state, damaged_tensors

CHECKPOINT_FORMAT = "ueo-checkpoint/1"


def make_checkpoint(run, *, epoch: int, done_in_epoch: int) -> dict:
    """The checkpoint of ``run`` (``loop.Run``: its tuned parameters, confidence weights, settings, model,
    class names, results so far, optimiser and identity, the data the run is made of) that is to continue at
    step ``done_in_epoch`` of ``epoch``: a dict of tensors and a dict of metadata, as nanoGPT's."""
    tensors = {f"param/{k}": v for k, v in adapted_state(run.tuned).items()}
    if run.weights is not None:
        tensors["weights"] = run.weights.detach().cpu()
    if run.targets is not None:
        tensors["targets"] = run.targets.detach().cpu()
    if run.optimizer is not None:  # SGD's momentum, per tuned parameter
        state = run.optimizer.state
        for name, param in run.tuned.items():
            for key, value in state.get(param, {}).items():
                if torch.is_tensor(value):
                    tensors[f"optim/{name}/{key}"] = value.detach().cpu().clone()
    for member, context in enumerate(run.contexts):  # UPL's ensemble: the contexts already learned
        tensors[f"ensemble/{member}"] = context
    tensors["torch_rng"] = torch.get_rng_state()
    meta = {
        "epoch": epoch,
        "done_in_epoch": done_in_epoch,
        "config": asdict(run.config),
        "model": run.bundle.name,
        "class_names": list(run.class_names),
        "identity": run.identity,
        "history": run.result.history,
        "evaluations": run.result.evaluations,
        "zeroshot_threshold": run.result.zeroshot_threshold,
        "lr": [g["lr"] for g in run.optimizer.param_groups] if run.optimizer is not None else [],
        "zeroshot_check": run.result.zeroshot_check,
        "member": run.member,
    }
    if run.selection is not None:  # the candidates so far and the trajectory under way
        meta["selection"], kept = run.selection.checkpoint_parts()
        tensors.update(kept)
    return {"tensors": tensors, "meta": meta}


def save_checkpoint(path, checkpoint: dict) -> None:
    """Write a checkpoint as safetensors (tensors) + JSON metadata, atomically; nothing is pickled."""
    write_tagged(path, checkpoint["tensors"], {"meta": json.dumps(checkpoint["meta"])}, CHECKPOINT_FORMAT)


def load_checkpoint(path) -> dict:
    """{"tensors": {...}, "meta": {...}} of a checkpoint file, checked for damage (IncompatibleError)."""
    meta, tensors = read_tagged(path, CHECKPOINT_FORMAT, "ueo checkpoint")
    try:
        checkpoint = {"tensors": tensors, "meta": json.loads(meta["meta"])}
    except (KeyError, json.JSONDecodeError) as error:
        raise IncompatibleError(f"{path}: damaged checkpoint (metadata {error}).") from None
    problem = damage(checkpoint)
    if problem:
        raise IncompatibleError(f"{path}: damaged checkpoint ({problem}); it cannot be resumed.")
    return checkpoint


_META_TYPES = {
    "epoch": int,
    "done_in_epoch": int,
    "config": dict,
    "class_names": list,
    "history": list,
    "evaluations": list,
    "lr": list,
}


def damage(checkpoint: dict) -> str | None:
    """What is wrong with a checkpoint's contents, or None: missing or mistyped metadata, non-finite or
    out-of-range tensors."""
    meta, tensors = checkpoint.get("meta"), checkpoint.get("tensors", {})
    if not isinstance(meta, dict):
        return "no metadata"
    for key, kind in _META_TYPES.items():
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            return f"{key!r} is missing or not a {kind.__name__}"
    if meta["epoch"] < 1 or meta["done_in_epoch"] < 0:
        return f"epoch {meta['epoch']}, step {meta['done_in_epoch']} is not a position in a run"
    if not all(isinstance(row, dict) and isinstance(row.get("loss"), (int, float)) for row in meta["history"]):
        return "the history is not a list of steps with losses"
    if not all(isinstance(row, dict) and "epoch" in row and "split" in row for row in meta["evaluations"]):
        return "the evaluations are not a list of metric rows"
    if not all(isinstance(n, str) for n in meta["class_names"]):
        return "class_names are not texts"
    selection = meta.get("selection")
    if selection is not None and not (
        isinstance(selection, dict)
        and isinstance(selection.get("trajectory"), int)
        and isinstance(selection.get("histories"), list)
        and isinstance(selection.get("candidates"), list)
        and all(
            isinstance(c, dict) and {"lr_prompt", "epoch", "zeroshot", "scores"} <= set(c)
            for c in selection["candidates"]
        )
    ):
        return "the selection's candidates are not a list of candidates"
    if selection is not None and any(
        not torch.isfinite(v.float()).all()
        for k, v in tensors.items()
        if k.startswith("selection/") and k != "selection/rng"
    ):
        return "the selection's tensors hold values that are not finite"
    cut = meta.get("zeroshot_threshold")
    if cut is not None and (not is_finite_number(cut)):
        return "the zero-shot threshold is not a number"
    params = {k: v for k, v in tensors.items() if k.startswith("param/")}
    if not params:
        return "no tuned parameters"
    problem = damaged_tensors(params)
    if problem:
        return problem
    rng = tensors.get("torch_rng")
    if rng is not None and (rng.dtype != torch.uint8 or rng.numel() != torch.get_rng_state().numel()):
        return "the random-number state is not one"
    weights = tensors.get("weights")
    if weights is not None and (weights.dim() != 1 or not torch.isfinite(weights).all() or (weights <= 0).any()):
        return "the confidence weights are not positive finite numbers"
    return None


def check_resumable(
    checkpoint: dict, config: FitConfig, class_names: Sequence[str], model_name: str, identity: dict
) -> None:
    """Refuse a checkpoint of another run: other trajectory settings, classes, model or data."""
    meta = checkpoint["meta"]
    saved = {SETTING_ALIASES.get(k, k): v for k, v in meta["config"].items()}  # (earlier names of settings)
    defaults = FitConfig()  # (settings added since a checkpoint was written had their defaults then)
    saved = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()}  # (JSON keeps tuples as lists)
    changed = [k for k in TRAJECTORY_KEYS if saved.get(k, getattr(defaults, k)) != getattr(config, k)]
    if changed:
        raise IncompatibleError(
            "The checkpoint was made with different settings: "
            + ", ".join(f"{k}={saved.get(k)!r} (now {getattr(config, k)!r})" for k in changed)
        )
    if meta["class_names"] != list(class_names):
        raise IncompatibleError("The checkpoint was made for other class names.")
    if meta.get("model") not in (None, model_name):
        raise IncompatibleError(f"The checkpoint was made for model {meta['model']!r}, not {model_name!r}.")
    saved_identity = meta.get("identity") or {}
    different = sorted(k for k in set(saved_identity) | set(identity) if saved_identity.get(k) != identity.get(k))
    if different:
        raise IncompatibleError(
            "The checkpoint was made for other data: "
            + ", ".join(f"{k} {saved_identity.get(k)!r} (now {identity.get(k)!r})" for k in different)
        )


def restore(run, checkpoint: dict, *, steps_per_epoch: int) -> tuple:
    """Copy a checkpoint's parameters, RNG state, history and evaluations into ``run`` (``loop.Run``) after
    checking that it belongs to this run. Returns (epoch, steps already done in it)."""
    config, tuned, result, identity = run.config, run.tuned, run.result, run.identity
    check_resumable(checkpoint, config, run.class_names, run.bundle.name, identity)
    meta, tensors = checkpoint["meta"], checkpoint["tensors"]
    epoch, done = meta["epoch"], meta["done_in_epoch"]
    if epoch > config.epochs + 1 or done > steps_per_epoch or (epoch == config.epochs + 1 and done):
        raise IncompatibleError(
            f"The checkpoint's position (epoch {epoch}, step {done}) is not in this run "
            f"({config.epochs} epochs of {steps_per_epoch} steps)."
        )
    params = {k[len("param/") :]: v for k, v in tensors.items() if k.startswith("param/")}
    if set(params) != set(tuned) or any(tuple(v.shape) != tuple(tuned[k].shape) for k, v in params.items()):
        raise IncompatibleError("The checkpoint's tuned parameters do not match this model and tuning rule.")
    weights = tensors.get("weights")
    if weights is not None and len(weights) != identity.get("adaptation_images", len(weights)):
        raise IncompatibleError("The checkpoint's confidence weights do not match the adaptation set.")
    with torch.no_grad():
        for name, value in params.items():
            tuned[name].copy_(value.to(tuned[name].device, tuned[name].dtype))
    if "torch_rng" in tensors:
        torch.set_rng_state(tensors["torch_rng"])
    kept: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            name, _, part = key[len("optim/") :].rpartition("/")
            kept.setdefault(name, {})[part] = value
    if set(kept) - set(tuned):
        raise IncompatibleError("The checkpoint's optimiser state names parameters this run does not tune.")
    run.optimizer_state = kept or None
    run.member = int(meta.get("member", 0))
    try:
        run.contexts = [tensors[f"ensemble/{member}"] for member in range(run.member)]
    except KeyError:
        raise IncompatibleError("The checkpoint lacks contexts of UPL's ensemble that it says were learned.") from None
    result.history[:] = meta["history"]
    result.evaluations[:] = meta["evaluations"]
    result.zeroshot_threshold = meta.get("zeroshot_threshold")
    result.zeroshot_check = meta.get("zeroshot_check")
    if run.selection is not None and "selection" in meta:
        run.selection.restore(meta["selection"], tensors)
    return epoch, done
