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

from .config import TRAJECTORY_KEYS, FitConfig, FitResult
from .errors import IncompatibleError
from .files import read_tagged, write_tagged
from .tuning import adapted_state

CHECKPOINT_FORMAT = "ueo-checkpoint/1"


def make_checkpoint(
    tuned: dict[str, torch.nn.Parameter],
    weights: torch.Tensor | None,
    config: FitConfig,
    model_name: str,
    class_names: Sequence[str],
    result: FitResult,
    learning_rates: list[float],
    epoch: int,
    done_in_epoch: int,
) -> dict:
    """The checkpoint of a run that is to continue at step ``done_in_epoch`` of ``epoch``."""
    tensors = {f"param/{k}": v for k, v in adapted_state(tuned).items()}
    if weights is not None:
        tensors["weights"] = weights.detach().cpu()
    tensors["torch_rng"] = torch.get_rng_state()
    meta = {
        "epoch": epoch,
        "done_in_epoch": done_in_epoch,
        "config": asdict(config),
        "model": model_name,
        "class_names": list(class_names),
        "history": result.history,
        "evaluations": result.evaluations,
        "lr": learning_rates,
    }
    return {"tensors": tensors, "meta": meta}


def save_checkpoint(path, checkpoint: dict) -> None:
    """Write a checkpoint as safetensors (tensors) + JSON metadata, atomically; nothing is pickled."""
    write_tagged(path, checkpoint["tensors"], {"meta": json.dumps(checkpoint["meta"])}, CHECKPOINT_FORMAT)


def load_checkpoint(path) -> dict:
    """{"tensors": {...}, "meta": {...}} of a checkpoint file."""
    meta, tensors = read_tagged(path, CHECKPOINT_FORMAT, "ueo checkpoint")
    return {"tensors": tensors, "meta": json.loads(meta["meta"])}


def restore(
    checkpoint: dict,
    config: FitConfig,
    tuned: dict[str, torch.nn.Parameter],
    result: FitResult,
    class_names: Sequence[str],
    model_name: str,
) -> tuple:
    """Copy a checkpoint's parameters, RNG state, history and evaluations into a run after checking that it
    belongs to this run. Returns (epoch, steps already done in it)."""
    meta, tensors = checkpoint["meta"], checkpoint["tensors"]
    saved = meta["config"]
    changed = [k for k in TRAJECTORY_KEYS if saved.get(k) != getattr(config, k)]
    if changed:
        raise IncompatibleError(
            "The checkpoint was made with different settings: "
            + ", ".join(f"{k}={saved.get(k)!r} (now {getattr(config, k)!r})" for k in changed)
        )
    if meta["class_names"] != list(class_names):
        raise IncompatibleError("The checkpoint was made for other class names.")
    params = {k[len("param/") :]: v for k, v in tensors.items() if k.startswith("param/")}
    if meta.get("model") not in (None, model_name):
        raise IncompatibleError(f"The checkpoint was made for model {meta['model']!r}, not {model_name!r}.")
    if set(params) != set(tuned) or any(tuple(v.shape) != tuple(tuned[k].shape) for k, v in params.items()):
        raise IncompatibleError("The checkpoint's tuned parameters do not match this model and tuning rule.")
    with torch.no_grad():
        for name, value in params.items():
            tuned[name].copy_(value.to(tuned[name].device, tuned[name].dtype))
    if "torch_rng" in tensors:
        torch.set_rng_state(tensors["torch_rng"])
    result.history[:] = meta["history"]
    result.evaluations[:] = meta["evaluations"]
    return meta["epoch"], meta["done_in_epoch"]
