"""The adapted state: what adaptation learned (the context vectors and the tuned norm affines), with
what is needed to re-apply it (class names, model, weights, tuning rule) and its provenance.

Stored as safetensors (tensors) + JSON metadata; nothing is pickled.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch
from torch import nn

from ..config import DEFAULT_INIT, PROMPT_CONTEXT, RULES, TUNE_CHOICES, canonical_rule, is_finite_number
from ..data import fold
from ..errors import IncompatibleError
from ..files import read_tagged, write_tagged
from .clip import describe_weights, same_weights
from .thresholds import Threshold
from .tuning import damaged_tensors, tunable_parameters

STATE_FORMAT = "ueo-adapted-state/1"


@dataclass
class AdaptedState:
    """What adaptation changed, and what is needed to re-apply it.

    tensors: {PROMPT_CONTEXT: [m, W] (or [N, m, W]: an ensemble of N contexts, UPL's), "visual.<norm>.weight"/"bias": ...} in fp32.
    class_names, init: to rebuild the prompt learner. model, pretrained: the CLIP it belongs to.
    tune, rule: what was tuned. info: free-form provenance (versions, method, ...); ``"zeroshot": "true"`` when
        a label-free selection kept the zero-shot model (``is_zeroshot``).
    threshold: the "unknown" threshold chosen when the state was fitted (a ``thresholds.Threshold``; a record
        of one is read as one; None for a state saved without one); predictions use it unless told otherwise.
    weights_identity: what the CLIP's weights were (``ueo.clip.weights_identity``: a seed, a tag, a file's
        size and digest), so that the state is applied to those weights and no others.
    """

    tensors: dict[str, torch.Tensor]
    class_names: list[str]
    model: str
    pretrained: str | None
    tune: str = "both"
    rule: str = "bn-ln"
    init: str = DEFAULT_INIT
    info: dict[str, str] = field(default_factory=dict)
    threshold: Threshold | None = None
    weights_identity: dict | None = None

    def __setattr__(self, name, value):
        if name == "threshold" and isinstance(value, dict):  # a record (a state's file, or one edited by hand)
            value = Threshold.from_record(value) or value  # (kept as it is when damaged: see problem)
        super().__setattr__(name, value)

    @property
    def is_zeroshot(self) -> bool:
        """The zero-shot model itself (a selection chose it): applied, it is scored with the zero-shot prompt."""
        return self.info.get("zeroshot") == "true"

    def metadata(self) -> dict[str, str]:
        return {
            "class_names": json.dumps(self.class_names),
            "model": self.model,
            "pretrained": json.dumps(self.pretrained),
            "tune": self.tune,
            "rule": self.rule,
            "init": self.init,
            "info": json.dumps(self.info),
            "threshold": json.dumps(
                self.threshold.record() if isinstance(self.threshold, Threshold) else self.threshold
            ),
            "weights_identity": json.dumps(self.weights_identity),
        }

    def save(self, path) -> None:
        """Write a safetensors file (tensors + metadata; nothing pickled), atomically."""
        write_tagged(path, self.tensors, self.metadata(), STATE_FORMAT)

    @classmethod
    def load(cls, path) -> AdaptedState:
        """Read and validate a state file; IncompatibleError names what is wrong with a damaged one."""
        meta, tensors = read_tagged(path, STATE_FORMAT, "ueo adapted state")
        try:
            state = cls(
                tensors=tensors,
                class_names=json.loads(meta["class_names"]),
                model=meta["model"],
                pretrained=json.loads(meta["pretrained"]),
                tune=meta["tune"],
                rule=canonical_rule(meta["rule"]),  # (states saved under the rule's earlier name load as it)
                init=meta["init"],
                info=json.loads(meta.get("info", "{}")),
                threshold=json.loads(meta.get("threshold", "null")),
                weights_identity=json.loads(meta.get("weights_identity", "null")),
            )
        except (KeyError, json.JSONDecodeError) as error:
            raise IncompatibleError(f"{path}: damaged adapted state (metadata {error}).") from None
        problem = state.problem()
        if problem:
            raise IncompatibleError(f"{path}: damaged adapted state ({problem}).")
        return state

    def problem(self) -> str | None:
        """What makes this state unusable, or None."""
        names = self.class_names
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
            return f"class_names must be a non-empty list of names, got {names!r:.80}"
        if len({fold(n) for n in names}) != len(names):
            return "class_names holds duplicates"
        if not isinstance(self.model, str) or not self.model:
            return f"model must be a name, got {self.model!r}"
        if self.pretrained is not None and not isinstance(self.pretrained, str):
            return f"pretrained must be a tag, a file or null, got {self.pretrained!r}"
        if self.tune not in TUNE_CHOICES or self.rule not in RULES:
            return f"unknown tune={self.tune!r} or rule={self.rule!r}"
        if not isinstance(self.init, str) or not self.init.strip():
            return f"init must be a text, got {self.init!r}"
        if not isinstance(self.info, dict):
            return f"info must be a mapping, got {self.info!r:.80}"
        if self.weights_identity is not None and not isinstance(self.weights_identity, dict):
            return f"weights_identity must be a mapping, got {self.weights_identity!r:.80}"
        if self.threshold is not None:
            value = self.threshold.value if isinstance(self.threshold, Threshold) else None
            if not is_finite_number(value) or (
                self.threshold.zeroshot is not None and not is_finite_number(self.threshold.zeroshot)
            ):
                return f"threshold must be {{'threshold': a number, 'rule': ...}}, got {self.threshold!r:.80}"
        problem = damaged_tensors(self.tensors)
        if problem:
            return problem
        if self.tune in ("prompt", "both") and self.tensors.get(PROMPT_CONTEXT, torch.zeros(0)).dim() not in (2, 3):
            return "no prompt context [m, W]"
        return None

    def check_fits(self, model: nn.Module) -> None:
        """Refuse a state whose tensors are not exactly what its tuning rule selects in ``model``."""
        expected = set(tunable_parameters(model, self.rule)) if self.tune in ("norm", "both") else set()
        if self.tune in ("prompt", "both"):
            expected.add(PROMPT_CONTEXT)
        if set(self.tensors) != expected:
            extra, missing = sorted(set(self.tensors) - expected), sorted(expected - set(self.tensors))
            raise IncompatibleError(
                f"This adapted state does not fit tune={self.tune!r}, rule={self.rule!r} on this model "
                f"(unexpected: {extra[:3]}, missing: {missing[:3]})."
            )

    @property
    def seed(self) -> int:
        """The seed that rebuilds the random weights the state was learned on (0 when they were not random)."""
        return int((self.weights_identity or {}).get("random", 0))

    def check_model(self, name: str) -> None:
        """Refuse another architecture than the state's (checked before a model is built)."""
        both_folders = self.model.startswith("local-dir:") and name.startswith("local-dir:")
        if self.model != name and not both_folders:
            raise IncompatibleError(
                f"This adapted state was made for model {self.model!r}, not {name!r}. Load that model to use it."
            )

    def check_compatible(self, bundle) -> None:
        """Refuse to apply the state to a CLIP other than the one it was adapted from: another architecture,
        or other weights (compared by identity, so a weights file may have moved or been renamed; a state
        without a recorded identity, from an older ueo, is compared by the name of its weights)."""
        self.check_model(bundle.name)
        if self.weights_identity is not None and bundle.identity is not None:
            if not same_weights(self.weights_identity, bundle.identity):
                raise IncompatibleError(
                    f"This adapted state was learned on {describe_weights(self.weights_identity)} of {self.model!r}, "
                    f"not on {describe_weights(bundle.identity)}: that is another model. Load the weights it was "
                    "learned on to use it."
                )
            return

        def same(a, b):  # a checkpoint file may live in another folder on another machine
            return (a is None and b is None) or (
                a is not None and b is not None and os.path.basename(str(a)) == os.path.basename(str(b))
            )

        if not same(self.pretrained, bundle.pretrained):
            raise IncompatibleError(
                f"This adapted state was made for model {self.model!r} (pretrained={self.pretrained!r}), "
                f"not {bundle.name!r} (pretrained={bundle.pretrained!r}). Load that model to use it."
            )
