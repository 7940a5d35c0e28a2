"""Which parameters learn: the CoOp context and/or the image encoder's normalisation affines.

Rules for the image encoder (names are full model names, e.g. "visual.transformer.resblocks.0.ln_1.weight"):
  "bn-ln":     every visual parameter whose name contains "bn" or "ln" (the reference's rule; "official",
               its earlier name, is still accepted).
               ViT: ln_pre, ln_1/ln_2 of each block, ln_post. ModifiedResNet: bn1/bn2/bn3 of the stem and
               of each bottleneck; NOT the downsample BatchNorms ("downsample.1") nor the attention pool.
  "all-norms": the affine weight/bias of every normalisation module (LayerNorm, BatchNorm, GroupNorm,
               RMSNorm and the like of timm towers), which adds the ResNet downsample BatchNorms.
  "auto":      "bn-ln" where it selects something, else "all-norms" (timm towers — ConvNeXt, Swin, EVA,
               SigLIP, ... — name their norms "norm", which the bn-ln rule misses). The default.
Everything else is frozen, and the model stays in eval mode: BatchNorm keeps using its running statistics.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..config import PROMPT_CONTEXT, RULES, TUNE_CHOICES, canonical_rule
from ..errors import ConfigError, IncompatibleError

_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase, nn.RMSNorm)


def is_norm(module: nn.Module) -> bool:
    """A normalisation layer: torch's own, or a library's whose class is named like one (timm's RmsNorm,
    LayerNorm2d, BatchNormAct2d, ...)."""
    return isinstance(module, _NORM_TYPES) or "norm" in type(module).__name__.lower()


def resolve_rule(model: nn.Module, rule: str) -> str:
    """The rule that "auto" stands for on this model ("bn-ln" when it selects something); others as given."""
    if rule == "auto":
        return "bn-ln" if tunable_parameters(model, "bn-ln") else "all-norms"
    return canonical_rule(rule)


def tunable_parameters(model: nn.Module, rule: str = "auto") -> dict[str, nn.Parameter]:
    """{full name: parameter} of the image encoder's normalisation affines selected by ``rule``."""
    if rule == "auto":
        rule = resolve_rule(model, rule)
    rule = canonical_rule(rule)
    if rule == "bn-ln":
        return {f"visual.{name}": p for name, p in model.visual.named_parameters() if "bn" in name or "ln" in name}
    if rule == "all-norms":
        selected = {}
        for module_name, module in model.visual.named_modules():
            if is_norm(module):
                for param_name, p in module.named_parameters(recurse=False):
                    selected[f"visual.{module_name}.{param_name}"] = p
        return selected
    raise ConfigError(f"Unknown tuning rule {rule!r}; choose one of {RULES}.")


def configure_tuning(
    model: nn.Module, prompt_learner: nn.Module | None, tune: str = "both", rule: str = "auto"
) -> dict[str, nn.Parameter]:
    """Freeze everything, then enable gradients on what ``tune`` selects; returns {name: parameter}.

    tune: "prompt" (context only), "norm" (norm affines only) or "both". The context is named PROMPT_CONTEXT.
    The CLIP model is put in eval mode (BatchNorm uses running statistics; dropout off).
    """
    if tune not in TUNE_CHOICES:
        raise ConfigError(f"Unknown tune={tune!r}; choose one of {TUNE_CHOICES}.")
    model.eval()
    model.requires_grad_(False)
    selected: dict[str, nn.Parameter] = {}
    if tune in ("prompt", "both"):
        if prompt_learner is None:
            raise ValueError("tune includes the prompt but no prompt learner was given.")  # a caller's bug
        selected[PROMPT_CONTEXT] = prompt_learner.ctx
    elif prompt_learner is not None:
        prompt_learner.ctx.requires_grad_(False)
    if tune in ("norm", "both"):
        norms = tunable_parameters(model, rule)
        if not norms:
            others = {r: sum(p.numel() for p in tunable_parameters(model, r).values()) for r in RULES if r != rule}
            working = ", ".join(f"rule {r!r} selects {n:,}" for r, n in others.items() if n)
            raise ConfigError(
                f"Rule {rule!r} selects no parameter in this image encoder (its normalisation layers "
                f"are not named 'bn'/'ln'); {working or 'no rule selects any: use tune prompt'}."
            )
        selected.update(norms)
    for p in selected.values():
        p.requires_grad_(True)
    return selected


def adapted_state(params: dict[str, nn.Parameter]) -> dict[str, torch.Tensor]:
    """Detached fp32 CPU copies of the tuned parameters, keyed by name (PROMPT_CONTEXT, "visual....")."""
    return {name: p.detach().float().cpu().clone() for name, p in params.items()}


def apply_adapted_state(model: nn.Module, prompt_learner: nn.Module | None, state: dict[str, torch.Tensor]) -> None:
    """Copy an adapted state back into a model (and prompt learner); refuses names or shapes that do not fit."""
    own = dict(model.named_parameters())
    for name, value in state.items():
        if name == PROMPT_CONTEXT:
            if prompt_learner is None:
                raise IncompatibleError("The adapted state holds a prompt context but no prompt learner was given.")
            target = prompt_learner.ctx
            if value.dim() != target.dim() and tuple(value.shape[-2:]) == tuple(target.shape[-2:]):
                # one context <-> an ensemble of them ([N, m, W]): the learner takes the state's form
                target = prompt_learner.ctx = nn.Parameter(target.detach().new_empty(value.shape), target.requires_grad)
        elif name in own:
            target = own[name]
        else:
            raise IncompatibleError(
                f"The adapted state holds {name!r}, which this model does not have: it was made for a different model."
            )
        if tuple(target.shape) != tuple(value.shape):
            raise IncompatibleError(
                f"Shape mismatch for {name!r}: state {tuple(value.shape)} vs model "
                f"{tuple(target.shape)}: the state was made for a different model."
            )
        with torch.no_grad():
            target.copy_(value.to(target.device, target.dtype))


@contextlib.contextmanager
def applied(model: nn.Module, prompt_learner: nn.Module | None, state: dict[str, torch.Tensor]):
    """Apply ``state`` for the duration of a ``with`` block, then restore the previous values."""
    own = dict(model.named_parameters())
    previous = {
        name: (prompt_learner.ctx if name == PROMPT_CONTEXT else own[name]).detach().clone()
        for name in state
        if name == PROMPT_CONTEXT or name in own
    }
    apply_adapted_state(model, prompt_learner, state)
    try:
        yield
    finally:
        apply_adapted_state(model, prompt_learner, previous)


@contextlib.contextmanager
def batch_statistics(model: nn.Module, on: bool = True):
    """Within the block, every BatchNorm of ``model`` normalises with the current batch's statistics (Tent's
    protocol) and leaves its running statistics as they were. Nothing changes on a model without BatchNorm
    (LayerNorm always uses the sample's own) or when ``on`` is False."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] if on else []
    saved = [
        (m.training, m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
        for m in norms
    ]
    for m in norms:
        m.train()
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: unchanged
    try:
        yield
    finally:
        for m, (training, momentum, tracked) in zip(norms, saved):
            m.train(training)
            m.momentum = momentum
            if tracked is not None and m.num_batches_tracked is not None:
                m.num_batches_tracked.copy_(tracked)


# Tuned values are word embeddings (~1e-2) and norm scales and shifts (~1): far larger ones are damage (a
# flipped exponent bit gives 1e37), not learning. Refused in states and checkpoints.
MAX_TUNED_MAGNITUDE = 1e4


def damaged_tensors(tensors: dict[str, torch.Tensor]) -> str | None:
    """What is wrong with tuned tensors (non-finite, or implausibly large values), or None."""
    bad = [name for name, value in tensors.items() if not value.is_floating_point() or not torch.isfinite(value).all()]
    if bad:
        return f"non-finite values in {bad[:3]}"
    large = [name for name, value in tensors.items() if value.numel() and value.abs().max() > MAX_TUNED_MAGNITUDE]
    if large:
        worst = max(float(tensors[name].abs().max()) for name in large)
        return f"values up to {worst:.3g} in {large[:3]}, far beyond any tuned value (damaged, e.g. flipped bits)"
    return None
