"""Which parameters learn: the CoOp context and/or the image encoder's normalisation affines.

Rules for the image encoder (names are full model names, e.g. "visual.transformer.resblocks.0.ln_1.weight"):
  "official":  every visual parameter whose name contains "bn" or "ln" (the reference's rule, SPEC §2).
               ViT: ln_pre, ln_1/ln_2 of each block, ln_post. ModifiedResNet: bn1/bn2/bn3 of the stem and
               of each bottleneck; NOT the downsample BatchNorms ("downsample.1") nor the attention pool.
  "all-norms": the affine weight/bias of every normalisation module (LayerNorm, BatchNorm, GroupNorm, ...),
               which adds the ResNet downsample BatchNorms.
Everything else is frozen, and the model stays in eval mode: BatchNorm keeps using its running statistics.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .files import atomic_path
from .prompts import DEFAULT_INIT

RULES = ("official", "all-norms")
TUNE_CHOICES = ("prompt", "norm", "both")
_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)


def tunable_parameters(model: nn.Module, rule: str = "official") -> Dict[str, nn.Parameter]:
    """{full name: parameter} of the image encoder's normalisation affines selected by ``rule``."""
    if rule == "official":
        return {f"visual.{name}": p for name, p in model.visual.named_parameters()
                if "bn" in name or "ln" in name}
    if rule == "all-norms":
        selected = {}
        for module_name, module in model.visual.named_modules():
            if isinstance(module, _NORM_TYPES):
                for param_name, p in module.named_parameters(recurse=False):
                    selected[f"visual.{module_name}.{param_name}"] = p
        return selected
    raise ValueError(f"Unknown tuning rule {rule!r}; choose one of {RULES}.")


def configure_tuning(model: nn.Module, prompt_learner: nn.Module | None, tune: str = "both",
                     rule: str = "official") -> Dict[str, nn.Parameter]:
    """Freeze everything, then enable gradients on what ``tune`` selects; returns {name: parameter}.

    tune: "prompt" (context only), "norm" (norm affines only) or "both". The context is named "prompt.ctx".
    The CLIP model is put in eval mode (BatchNorm uses running statistics; dropout off).
    """
    if tune not in TUNE_CHOICES:
        raise ValueError(f"Unknown tune={tune!r}; choose one of {TUNE_CHOICES}.")
    model.eval()
    model.requires_grad_(False)
    selected: Dict[str, nn.Parameter] = {}
    if tune in ("prompt", "both"):
        if prompt_learner is None:
            raise ValueError("tune includes the prompt but no prompt learner was given.")
        selected["prompt.ctx"] = prompt_learner.ctx
    elif prompt_learner is not None:
        prompt_learner.ctx.requires_grad_(False)
    if tune in ("norm", "both"):
        norms = tunable_parameters(model, rule)
        if not norms:
            raise ValueError(f"Rule {rule!r} selects no parameter in this image encoder.")
        selected.update(norms)
    for p in selected.values():
        p.requires_grad_(True)
    return selected


def count_parameters(params: Dict[str, nn.Parameter]) -> int:
    return sum(p.numel() for p in params.values())


def adapted_state(params: Dict[str, nn.Parameter]) -> Dict[str, torch.Tensor]:
    """Detached fp32 CPU copies of the tuned parameters, keyed by name ("prompt.ctx", "visual....")."""
    return {name: p.detach().float().cpu().clone() for name, p in params.items()}


def apply_adapted_state(model: nn.Module, prompt_learner: nn.Module | None, state: Dict[str, torch.Tensor]) -> None:
    """Copy an adapted state back into a model (and prompt learner); refuses names or shapes that do not fit."""
    own = dict(model.named_parameters())
    for name, value in state.items():
        if name == "prompt.ctx":
            if prompt_learner is None:
                raise ValueError("The adapted state holds a prompt context but no prompt learner was given.")
            target = prompt_learner.ctx
        elif name in own:
            target = own[name]
        else:
            raise ValueError(f"The adapted state holds {name!r}, which this model does not have: "
                             "it was made for a different model.")
        if tuple(target.shape) != tuple(value.shape):
            raise ValueError(f"Shape mismatch for {name!r}: state {tuple(value.shape)} vs model "
                             f"{tuple(target.shape)}: the state was made for a different model.")
        with torch.no_grad():
            target.copy_(value.to(target.device, target.dtype))


@contextlib.contextmanager
def applied(model: nn.Module, prompt_learner: nn.Module | None, state: Dict[str, torch.Tensor]):
    """Apply ``state`` for the duration of a ``with`` block, then restore the previous values."""
    own = dict(model.named_parameters())
    previous = {name: (prompt_learner.ctx if name == "prompt.ctx" else own[name]).detach().clone()
                for name in state if name == "prompt.ctx" or name in own}
    apply_adapted_state(model, prompt_learner, state)
    try:
        yield
    finally:
        apply_adapted_state(model, prompt_learner, previous)


@dataclass
class AdaptedState:
    """What adaptation changed, and what is needed to re-apply it.

    tensors: {"prompt.ctx": [m, W], "visual.<norm>.weight"/"bias": ...} in fp32.
    class_names, init: to rebuild the prompt learner. model, pretrained: the CLIP it belongs to.
    tune, rule: what was tuned. info: free-form provenance (versions, method, ...).
    """

    tensors: Dict[str, torch.Tensor]
    class_names: List[str]
    model: str
    pretrained: Optional[str]
    tune: str = "both"
    rule: str = "official"
    init: str = DEFAULT_INIT
    info: Dict[str, str] = field(default_factory=dict)

    def metadata(self) -> Dict[str, str]:
        return {"format": "ueo-adapted-state/1", "class_names": json.dumps(self.class_names),
                "model": self.model, "pretrained": json.dumps(self.pretrained), "tune": self.tune,
                "rule": self.rule, "init": self.init, "info": json.dumps(self.info)}

    def save(self, path) -> None:
        """Write a safetensors file (tensors + metadata; nothing pickled), atomically."""
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in self.tensors.items()}, str(tmp), metadata=self.metadata())

    @classmethod
    def load(cls, path) -> "AdaptedState":
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != "ueo-adapted-state/1":
                raise ValueError(f"{path} is not a ueo adapted state (no 'ueo-adapted-state/1' metadata).")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        return cls(tensors=tensors, class_names=json.loads(meta["class_names"]), model=meta["model"],
                   pretrained=json.loads(meta["pretrained"]), tune=meta["tune"], rule=meta["rule"],
                   init=meta["init"], info=json.loads(meta.get("info", "{}")))

    def check_fits(self, model: nn.Module) -> None:
        """Refuse a state whose tensors are not exactly what its tuning rule selects in ``model``."""
        expected = set(tunable_parameters(model, self.rule)) if self.tune in ("norm", "both") else set()
        if self.tune in ("prompt", "both"):
            expected.add("prompt.ctx")
        if set(self.tensors) != expected:
            extra, missing = sorted(set(self.tensors) - expected), sorted(expected - set(self.tensors))
            raise ValueError(f"This adapted state does not fit tune={self.tune!r}, rule={self.rule!r} on this model "
                             f"(unexpected: {extra[:3]}, missing: {missing[:3]}).")

    def check_compatible(self, model_name: str, pretrained: Optional[str]) -> None:
        """Refuse to apply a state to a CLIP other than the one it was adapted from."""
        def same(a, b):  # a checkpoint file may live in another folder on another machine
            return (a is None and b is None) or (a is not None and b is not None
                                                 and os.path.basename(str(a)) == os.path.basename(str(b)))
        if self.model != model_name or not same(self.pretrained, pretrained):
            raise ValueError(f"This adapted state was made for model {self.model!r} (pretrained={self.pretrained!r}), "
                             f"not {model_name!r} (pretrained={pretrained!r}). Load that model to use it.")
