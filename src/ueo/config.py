"""What a run is: :class:`FitConfig` (every setting and its default, also for the command line) and
:class:`FitResult`. Light on purpose (no torch import), so that ``ueo --help`` is fast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import ConfigError

UNKNOWN = "unknown"  # what an image of no listed class is called (predictions, reports, the confusion matrix)
METHODS = ("ueo", "infomax", "entropy", "oracle", "zeroshot", "upl", "pouf", "tent", "tpt")
# the published baselines, each with its own recipe (METHOD_RECIPES); the others share UEO's
BASELINES = ("upl", "pouf", "tent", "tpt")
DEMO_METHODS = ("zeroshot", "entropy", "infomax", "upl", "pouf", "ueo")  # `ueo demo`'s; tent, tpt on request
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "inverse", "constant")
TUNE_CHOICES = ("prompt", "norm", "both")
PROMPT_CONTEXT = "prompt.ctx"  # the name of the learned prompt context among the tuned tensors (states, checkpoints)
RULES = ("auto", "bn-ln", "all-norms")
RULE_ALIASES = {"official": "bn-ln"}  # the rule's earlier name (whose rule it is, not what it selects), still accepted
# settings under their earlier names (in config.yaml files and checkpoints of earlier runs), still read
SETTING_ALIASES = {"weights": "weight_refresh"}


def canonical_rule(rule):
    """A tuning rule under its name (``RULE_ALIASES`` read as the rule they name)."""
    return RULE_ALIASES.get(rule, rule) if isinstance(rule, str) else rule


WEIGHT_MODES = ("fixed", "epoch")
SELECT_CHOICES = ("off", "auto")
# the label-free validators (ueo.validators): those of one model alone, then those that judge the candidates together
PER_MODEL_VALIDATORS = ("entropy", "im", "snd")
VALIDATORS = (*PER_MODEL_VALIDATORS, "ensv", "ensv-open", "consensus")
DEFAULT_VALIDATOR = "im"
FLOAT32_MAX = 3.4028234663852886e38  # settings are used in float32 arithmetic
DEFAULT_INIT = "a photo of a"  # the reference's context initialisation (m = 4 context vectors)

# Each baseline's published recipe (docs/method.md says where each value comes from): the settings a run of
# that method takes where the user did not set them (``FitConfig.for_method``; the command line alike).
METHOD_RECIPES: dict[str, dict[str, Any]] = {
    # UPL's rn50_ep50 config, with the optimiser defaults of the Dassl library it inherits (momentum 0.9, wd 5e-4)
    "upl": dict(
        tune="prompt",
        epochs=50,
        batch_size=32,
        lr_prompt=0.002,
        lr_norm=0.002,
        momentum=0.9,
        weight_decay=5e-4,
        warmup_epochs=1,
        warmup_lr=1e-5,
    ),
    # POUF's prompt-tuning variant: SGD nesterov, wd 1e-3, lr (1 + 0.0002 it)^-0.75, batch 96, 10 epochs
    "pouf": dict(
        tune="prompt",
        epochs=10,
        batch_size=96,
        lr_prompt=0.1,
        lr_norm=0.01,
        momentum=0.9,
        nesterov=True,
        weight_decay=1e-3,
        schedule="inverse",
    ),
    # Tent's ImageNet recipe: SGD momentum 0.9, lr 0.00025 at batch 64, constant, one pass, norm affines only
    "tent": dict(tune="norm", epochs=1, batch_size=64, lr_norm=0.00025, momentum=0.9, schedule="constant"),
    # TPT: one AdamW step (lr 5e-3, torch's default weight decay 0.01) on the context per test image; nothing
    # trains beforehand
    "tpt": dict(tune="prompt", epochs=0, lr_prompt=5e-3, optimizer="adamw", weight_decay=0.01, schedule="constant"),
}


def is_finite_number(value) -> bool:
    """An int or float that is neither NaN nor infinite (True and False are not numbers here)."""
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


@dataclass
class FitConfig:
    """Adaptation settings; the defaults are the reference recipe (docs/method.md).

    method: "ueo" | "infomax" | "entropy" | "oracle" (needs labels on the adaptation set) | "zeroshot".
    tune: what learns, "prompt" | "norm" | "both".
    rule: which norm affines: "auto" ("bn-ln" where it selects something, else "all-norms"), "bn-ln"
        (the reference's 'bn'/'ln' name rule) or "all-norms" (every normalisation module's affine).
    weight_refresh: when UEO's/the oracle's confidence weights are computed. "fixed": the zero-shot MCM, computed once over the adaptation
        set with the eval view (the reference); "epoch": recomputed with the current model every epoch.
    logit_scale: training logits are logit_scale * cos (a fixed 100, not CLIP's learned scale).
    trade: lambda, the weight of the marginal-entropy term.
    eval_every: evaluate every N epochs (epoch 0 = zero-shot and the last epoch always); 0 = only those.
    eval_train: also report metrics on the adaptation set (when it has labels).
    amp: bf16 autocast; None = on for CUDA, off on the CPU. Tuned parameters always keep fp32 copies.
    fast: decode the images once (image files into the decode cache, or per batch without one; other images into memory) and
        make the views of whole batches on the device (``ueo.fastpath``); None = on when the datasets yield
        images (measured faster than PIL in DataLoader workers on GPUs and on CPUs alike), off for tensors.
    select: "off" (one run at the given learning rates) or "auto": one trajectory per learning rate of
        ``select_lrs`` (None: the given ones ÷10, ×1 and ×10), snapshots at the ``select_snapshots`` fractions of
        the epochs, and zero-shot; the candidate ``validator`` scores best on the adaptation set is the result.
        Costs one training run per learning rate, plus a scoring pass of the adaptation set per snapshot.
    validator: the label-free validator that chooses (``ueo.validators``; VALIDATORS); also the end-of-run
        check's, when it judges one model alone (else IM).
    optimizer, momentum, nesterov, weight_decay: the optimiser ("sgd" or "adamw"); UEO's is plain SGD.
    schedule: the learning rate per step: "cosine" (to 0 over all steps), "inverse" (lr (1 + 0.0002 step)^-0.75,
        POUF's) or "constant"; after ``warmup_epochs`` epochs at the constant ``warmup_lr`` (UPL's warm-up).
    upl_per_class: UPL's pseudo-labels: the K most confident adaptation images predicted as each class.
    upl_prompts: UPL's ensemble: N contexts, each learned from its own seed (seed, seed + 1, ...), whose
        predictions are averaged. Costs N training runs; the paper's is 16.
    The baselines (BASELINES) take their published recipe (METHOD_RECIPES) where a setting is not given:
    ``FitConfig.for_method(method, **settings)``, as ``ueo.fit(..., method=...)`` and the command line do.
    """

    method: str = "ueo"
    tune: str = "both"
    rule: str = "auto"
    epochs: int = 50
    batch_size: int = 64
    lr_prompt: float = 1e-4
    lr_norm: float = 1e-4
    trade: float = 1.0
    logit_scale: float = 100.0
    weight_refresh: str = "fixed"
    init: str = DEFAULT_INIT
    seed: int = 2023
    eval_every: int = 10
    eval_train: bool = True
    eval_batch_size: int = 256
    num_workers: int = 0
    amp: bool | None = None
    fast: bool | None = None
    progress: bool = False
    select: str = "off"
    select_lrs: tuple[float, ...] | None = None
    select_snapshots: tuple[float, ...] = (0.25, 0.5, 1.0)
    validator: str = DEFAULT_VALIDATOR
    optimizer: str = "sgd"
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup_epochs: int = 0
    warmup_lr: float = 1e-5
    upl_per_class: int = 16
    upl_prompts: int = 1

    @classmethod
    def for_method(cls, method: str = "ueo", **settings) -> FitConfig:
        """The settings of a run of ``method``: its recipe (METHOD_RECIPES) where ``settings`` are silent."""
        return cls(method=method, **{**METHOD_RECIPES.get(method, {}), **settings})

    def validate(self) -> FitConfig:
        """Check every field's type and range; raises ConfigError naming the field."""
        self.rule = canonical_rule(self.rule)
        for name, choices in (
            ("method", METHODS),
            ("tune", TUNE_CHOICES),
            ("rule", RULES),
            ("weight_refresh", WEIGHT_MODES),
            ("select", SELECT_CHOICES),
            ("validator", VALIDATORS),
            ("optimizer", OPTIMIZERS),
            ("schedule", SCHEDULES),
        ):
            if getattr(self, name) not in choices:
                label = "tuning rule" if name == "rule" else name
                raise ConfigError(f"Unknown {label} {getattr(self, name)!r}; choose one of {choices}.")
        whole = ("epochs", "eval_every", "num_workers", "batch_size", "eval_batch_size", "seed", "warmup_epochs")
        for name in (*whole, "upl_per_class", "upl_prompts"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"{name} must be a whole number, got {value!r}.")
        for name in ("epochs", "eval_every", "num_workers", "warmup_epochs"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}.")
        for name in ("batch_size", "eval_batch_size", "upl_per_class", "upl_prompts"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"seed must be a whole number from 0 to 2**63 - 1, got {self.seed}.")
        for name in ("lr_prompt", "lr_norm", "logit_scale", "trade", "momentum", "weight_decay", "warmup_lr"):
            value = getattr(self, name)
            if not is_finite_number(value):
                raise ConfigError(f"{name} must be a finite number, got {value!r}.")
            if value < 0 and name != "trade":
                raise ConfigError(f"{name} must be >= 0, got {value!r}.")
            if abs(value) > FLOAT32_MAX:
                raise ConfigError(f"{name} must be at most {FLOAT32_MAX:.1e} (a float32), got {value!r}.")
        for name in ("eval_train", "progress", "nesterov"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}.")
        for name in ("amp", "fast"):
            if getattr(self, name) not in (None, True, False):
                raise ConfigError(f"{name} must be true, false or None (automatic), got {getattr(self, name)!r}.")
        if not isinstance(self.init, str) or not self.init.strip():
            raise ConfigError(f"init must be a non-empty text, got {self.init!r}.")
        if self.method == "tpt" and self.tune != "prompt":
            raise ConfigError(f"method tpt tunes the prompt context (tune prompt), not tune {self.tune!r}.")
        if self.upl_prompts > 1 and (self.method != "upl" or self.tune != "prompt"):
            raise ConfigError("upl_prompts > 1 (an ensemble of contexts) is for method upl with tune prompt.")
        if self.nesterov and self.momentum <= 0:
            raise ConfigError("nesterov needs a momentum > 0.")
        self.validate_selection()
        return self

    def validate_selection(self) -> None:
        if self.select_lrs is not None:
            self.select_lrs = numbers("select_lrs", self.select_lrs, "learning rates", lambda v: v > 0, "> 0")
            if len(set(self.select_lrs)) != len(self.select_lrs):
                raise ConfigError(f"select_lrs names a learning rate twice: {list(self.select_lrs)}.")
        self.select_snapshots = numbers(
            "select_snapshots", self.select_snapshots, "fractions of the epochs", lambda v: 0 < v <= 1, "in (0, 1]"
        )
        if self.select == "auto" and self.method in ("zeroshot", "tpt"):
            raise ConfigError(
                f"select auto chooses among adapted models and zero-shot; method {self.method} adapts nothing "
                "beforehand (tpt adapts per test image)."
            )
        if self.select == "auto" and self.epochs < 1:
            raise ConfigError("select auto needs at least one epoch to take snapshots of.")


def numbers(name: str, values, what: str, ok, rule: str) -> tuple[float, ...]:
    """A non-empty tuple of finite numbers each satisfying ``ok`` (a list, a tuple or 'a,b,c')."""
    if isinstance(values, str):
        values = [v for v in values.replace(" ", "").split(",") if v]
    if not isinstance(values, (list, tuple)) or not values:
        raise ConfigError(f"{name} must be one or more {what}, got {values!r}.")
    found = []
    for value in values:
        try:
            number = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number) or not ok(number):
            raise ConfigError(f"{name} takes {what} that are numbers {rule}, got {value!r}.")
        found.append(number)
    return tuple(found)


def config_fields() -> list[str]:
    return [f.name for f in fields(FitConfig)]


# Settings that define the training trajectory: they must not change between an interrupted run and its
# resumption.
TRAJECTORY_KEYS = (
    "method",
    "tune",
    "rule",
    "epochs",
    "batch_size",
    "lr_prompt",
    "lr_norm",
    "trade",
    "logit_scale",
    "weight_refresh",
    "init",
    "seed",
    "select",
    "select_lrs",
    "select_snapshots",
    "optimizer",
    "momentum",
    "nesterov",
    "weight_decay",
    "schedule",
    "warmup_epochs",
    "warmup_lr",
    "upl_per_class",
    "upl_prompts",
)


@dataclass
class FitResult:
    """What :func:`ueo.fit` returns.

    evaluations: one dict per evaluation {"epoch", "split" ("test" | "train"), metric: value}.
    history: one dict per step {"step", "epoch", "loss", "lr_prompt", "lr_norm"}.
    adapted: the learned state (apply it with ``evaluate(..., adapted=result.adapted)``).
    tuned_parameters: {name: number of values} of what learned.
    rule: the norm rule that was applied ("bn-ln" or "all-norms"; what "auto" chose).
    weights: the confidence weights used at the last epoch ([N]; None for infomax / entropy).
    outputs: the last evaluation's raw outputs per split ("test"; "train" when the adaptation set was scored).
    zeroshot_outputs: the zero-shot evaluation's raw outputs per split (empty for a resumed run).
    zeroshot_threshold: Otsu's rule on the zero-shot scores (of the adaptation set when they were computed,
        else of the test set): what the zero-shot model's decisions are compared with.
    threshold: the "unknown" threshold chosen at the end (a ``thresholds.Threshold``; the adapted state's).
    check: did adapting help, by a label-free validator on the adaptation set: {"validator", "adapted",
        "zeroshot", "helped"} (None for method zeroshot).
    selection: with select="auto", {"validator", "chosen", "candidates": [...]} (docs/metrics.md).
    bundle: the CLIP it was fitted on (what ``ueo.discover(result, images)`` and later evaluations use).
    """

    config: FitConfig
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    adapted: Any = None
    tuned_parameters: dict[str, int] = field(default_factory=dict)
    rule: str | None = None
    weights: Any = None
    outputs: dict[str, Any] = field(default_factory=dict)
    zeroshot_outputs: dict[str, Any] = field(default_factory=dict)
    bundle: Any = None
    zeroshot_threshold: float | None = None  # Otsu's cut of the zero-shot scores (adaptation set, else test)
    threshold: Any = None
    check: dict | None = None
    selection: dict | None = None
    zeroshot_check: float | None = None  # the check validator's score of the zero-shot model

    @property
    def metrics(self) -> dict[str, dict]:
        """{"zeroshot": metrics at epoch 0, "adapted": metrics at the last evaluation} on the test set
        (on the adaptation set when no test set was given)."""
        split = "test" if any(e["split"] == "test" for e in self.evaluations) else "train"
        rows = [e for e in self.evaluations if e["split"] == split]
        if not rows:
            return {}
        return {"zeroshot": rows[0], "adapted": rows[-1]}
