"""Choosing without labels (``select="auto"``): one training trajectory per candidate learning rate,
snapshots along each, and zero-shot itself; every candidate judged on the adaptation set by the label-free
validators (``ueo.validators``); the best by the chosen validator becomes the run's result.

What each candidate keeps is small and grows only with the adaptation set, never with the number of classes
times the candidates: its tuned tensors, its class and MCM score per image, its validators' values and, when the
test images are labeled, its test metrics. The candidates' averaged probabilities [N, K] are summed as they
come (EnsV's reference).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import cast

import numpy as np
import torch

from ..config import PER_MODEL_VALIDATORS as PER_MODEL
from ..config import VALIDATORS, FitConfig
from ..errors import DivergedError
from ..model import adapted_state, otsu_threshold
from .inference import Outputs
from .loop import Run, train_loop
from .validators import PER_MODEL_SCORES, across_scores, open_decisions, per_model_scores

LR_FACTORS = (0.1, 1.0, 10.0)  # the default candidates: the given learning rates ÷10, ×1, ×10
CHECK_VALIDATOR = "im"  # the end-of-run check's validator when the chosen one needs several candidates


def candidate_lrs(config: FitConfig) -> list[tuple[float, float]]:
    """(lr_prompt, lr_norm) of each trajectory: each of ``select_lrs`` for both groups, else the given ones
    ÷10, ×1 and ×10."""
    if config.select_lrs:
        return [(float(lr), float(lr)) for lr in config.select_lrs]
    return [(config.lr_prompt * f, config.lr_norm * f) for f in LR_FACTORS]


def snapshot_epochs(epochs: int, fractions) -> list[int]:
    """The epochs at which a trajectory's snapshots are taken: ceil(fraction × epochs), at least 1, once each."""
    return sorted({min(epochs, max(1, math.ceil(f * epochs - 1e-9))) for f in fractions})


def probabilities(outputs: Outputs, logit_scale: float) -> np.ndarray:
    """The training softmax of each adaptation image, softmax(logit_scale * cos) [N, K], in float64."""
    return torch.softmax(logit_scale * outputs.cosines.float(), dim=-1).double().numpy()


def validator_score(name: str, outputs: Outputs, logit_scale: float) -> float | None:
    """A per-model validator's score of one model's outputs (None when they are not finite)."""
    probs = probabilities(outputs, logit_scale)
    return PER_MODEL_SCORES[name](probs) if np.isfinite(probs).all() else None


def check_validator(name: str) -> str:
    """The validator of the end-of-run check: ``name`` when it judges one model alone, else IM."""
    return name if name in PER_MODEL else CHECK_VALIDATOR


@dataclass
class Candidate:
    """One candidate: a snapshot of a trajectory (or zero-shot) and what it gave on the adaptation set."""

    lr_prompt: float | None
    lr_norm: float | None
    epoch: int
    zeroshot: bool = False
    diverged: bool = False
    scores: dict[str, float] = field(default_factory=dict)
    test: dict | None = None
    threshold: float | None = None  # Otsu's cut of its MCM scores (its own accept/reject decisions)
    tensors: dict[str, torch.Tensor] | None = None  # its tuned tensors (None: zero-shot's, the model's own)
    predictions: np.ndarray | None = None  # [N] its class per adaptation image
    mcm: np.ndarray | None = None  # [N] its MCM score per adaptation image

    def record(self) -> dict:
        """As metrics.json's ``selection.candidates`` keeps it (``test`` only when the test set is labeled)."""
        kept = {
            "lr_prompt": self.lr_prompt,
            "lr_norm": self.lr_norm,
            "epoch": self.epoch,
            "zeroshot": self.zeroshot,
            "diverged": self.diverged,
            "scores": {k: (None if not math.isfinite(v) else v) for k, v in self.scores.items()},
        }
        return kept | ({"test": self.test} if self.test is not None else {})

    def describe(self) -> str:
        if self.zeroshot:
            return "zero-shot"
        return f"lr {self.lr_prompt:g}/{self.lr_norm:g}, epoch {self.epoch}"


def outputs_summary(outputs: Outputs, logit_scale: float) -> dict:
    """What a candidate keeps of its adaptation-set outputs, and its per-model validators."""
    probs = probabilities(outputs, logit_scale)
    mcm = outputs.scores.numpy().astype(np.float32)
    predictions = outputs.predictions.numpy().astype(np.int32)
    finite = bool(np.isfinite(probs).all() and np.isfinite(mcm).all())
    return {
        "probs": probs,
        "mcm": mcm,
        "predictions": predictions,
        "threshold": otsu_threshold(mcm) if finite else None,
        "scores": per_model_scores(probs) if finite else {},
        "finite": finite,
    }


class Selection:
    """The candidates of a ``select="auto"`` run, the trajectory under way, and the running ensemble."""

    def __init__(self, config: FitConfig, num_known: int):
        self.config, self.num_known = config, num_known
        self.lrs = candidate_lrs(config)
        self.epochs = snapshot_epochs(config.epochs, config.select_snapshots)
        self.candidates: list[Candidate] = []
        self.trajectory = 0  # the trajectory under way (== len(lrs): all done)
        self.histories: list[list[dict]] = []  # each finished trajectory's steps
        self.ensemble: np.ndarray | None = None  # [N, K] the sum of the candidates' probabilities
        self.ensemble_mcm: np.ndarray | None = None  # [N] the sum of their MCM scores
        self.weights0: torch.Tensor | None = None  # the confidence weights every trajectory starts from
        self.rng: torch.Tensor | None = None  # the random state every trajectory starts from
        self.chosen: int | None = None

    # -- candidates --------------------------------------------------------------------------------------

    def add(self, run: Run, epoch: int, *, zeroshot: bool = False, train_out: Outputs | None = None, test=None):
        """Take a candidate: the model as it is now in ``run`` (scored here unless its outputs are given)."""
        if train_out is None:
            test_out = run.outputs_for("test") if "test" in run.sources else None
            train_out = run.train_outputs(test_out)
            test = test_out
        summary = outputs_summary(train_out, self.config.logit_scale)
        lr_prompt, lr_norm = (None, None) if zeroshot else self.lrs[self.trajectory]
        labeled = test is not None and bool((test.labels >= 0).any())
        candidate = Candidate(
            lr_prompt,
            lr_norm,
            epoch,
            zeroshot=zeroshot,
            diverged=not summary["finite"],
            scores=summary["scores"],
            test=test.metrics(self.num_known) if labeled else None,
            threshold=summary["threshold"],
            tensors=None if zeroshot else adapted_state(run.tuned),
            predictions=summary["predictions"],
            mcm=summary["mcm"],
        )
        if summary["finite"]:
            self.ensemble = summary["probs"].astype(np.float32) + (self.ensemble if self.ensemble is not None else 0)
            self.ensemble_mcm = summary["mcm"] + (self.ensemble_mcm if self.ensemble_mcm is not None else 0)
        self.candidates.append(candidate)

    def diverged(self) -> None:
        """The snapshots that the trajectory under way did not reach: recorded as diverged."""
        lrs = self.lrs[self.trajectory]
        taken = {c.epoch for c in self.candidates if not c.zeroshot and (c.lr_prompt, c.lr_norm) == lrs}
        self.candidates += [Candidate(*lrs, epoch, diverged=True) for epoch in self.epochs if epoch not in taken]

    def scored(self) -> dict[str, np.ndarray]:
        """Every validator's score of every candidate [C] (NaN for the diverged, which are never chosen)."""
        valid = [i for i, c in enumerate(self.candidates) if not c.diverged]
        count = len(self.candidates)
        found = {name: np.full(count, np.nan) for name in VALIDATORS}
        if not valid:
            return found
        per_model = {name: np.array([self.candidates[i].scores[name] for i in valid]) for name in PER_MODEL}
        predictions = np.stack([np.asarray(self.candidates[i].predictions) for i in valid])
        mean_mcm = self.ensemble_mcm / len(valid)
        reference = open_decisions(self.ensemble.argmax(axis=1), mean_mcm, otsu_threshold(mean_mcm), self.num_known)
        decisions = np.stack(
            [
                open_decisions(c.predictions, c.mcm, cast(float, c.threshold), self.num_known)
                for c in (self.candidates[i] for i in valid)
            ]
        )
        values = across_scores(per_model, predictions, decisions, self.ensemble / len(valid), reference)
        for name, scores in values.items():
            found[name][valid] = scores
        return found

    def choose(self) -> int:
        """The index of the candidate the validator scores best (the first of equals: zero-shot comes first)."""
        scores = self.scored()
        for name, values in scores.items():
            for candidate, value in zip(self.candidates, values):
                candidate.scores[name] = float(value)
        values = scores[self.config.validator]
        self.chosen = int(np.nanargmax(values))  # zero-shot is never diverged: there is always one
        return self.chosen

    def record(self) -> dict:
        """metrics.json's ``selection``."""
        return {
            "validator": self.config.validator,
            "chosen": self.chosen,
            "candidates": [c.record() for c in self.candidates],
        }

    # -- the trajectories ----------------------------------------------------------------------------------

    def train(self, run: Run, start: tuple[int, int], originals: dict[str, torch.Tensor]) -> None:
        """Each learning rate's trajectory from the one under way (resumed at ``start``), snapshots taken at
        ``self.epochs``; then the chosen candidate's tensors, history and evaluations are left in ``run``."""
        for index in range(self.trajectory, len(self.lrs)):
            self.trajectory = index
            run.learning_rates = self.lrs[index]
            if start == (1, 0):  # a fresh trajectory: from the zero-shot model, as a fit of its own
                load_tensors(run, originals)
                run.result.history = []
                run.weights = self.weights0.clone() if self.weights0 is not None else None
                if self.rng is not None:
                    torch.set_rng_state(self.rng)
            try:
                train_loop(run, *start)
            except DivergedError:  # the run goes on: the snapshots it did not reach are never chosen
                self.diverged()
            self.histories.append(list(run.result.history))
            start = (1, 0)
        self.trajectory = len(self.lrs)
        self.finish(run, originals)

    def finish(self, run: Run, originals: dict[str, torch.Tensor]) -> None:
        chosen = self.candidates[self.choose()]
        load_tensors(run, chosen.tensors if chosen.tensors is not None else originals)
        rates = cast(tuple[float, float], (chosen.lr_prompt, chosen.lr_norm))  # (an adapted candidate's: numbers)
        run.learning_rates = None if chosen.zeroshot else rates
        if chosen.zeroshot:
            run.result.history = []
        else:
            steps = self.histories[self.lrs.index(rates)]
            run.result.history = [row for row in steps if row["epoch"] <= chosen.epoch]
        zeroshot_rows = [row for row in run.result.evaluations if row["epoch"] == 0]
        run.result.evaluations = [] if chosen.zeroshot else zeroshot_rows
        run.measure(chosen.epoch)
        run.result.selection = self.record()

    # -- checkpoints ---------------------------------------------------------------------------------------

    def checkpoint_parts(self) -> tuple[dict, dict[str, torch.Tensor]]:
        """(metadata, tensors) of the selection so far, for the run's checkpoint."""
        tensors: dict[str, torch.Tensor] = {}
        for i, c in enumerate(self.candidates):
            if c.predictions is not None:
                tensors[f"selection/{i}/predictions"] = torch.from_numpy(c.predictions)
                tensors[f"selection/{i}/mcm"] = torch.from_numpy(c.mcm)
            for name, value in (c.tensors or {}).items():
                tensors[f"selection/{i}/param/{name}"] = value
        if self.ensemble is not None:
            tensors["selection/ensemble"] = torch.from_numpy(self.ensemble)
            tensors["selection/ensemble_mcm"] = torch.from_numpy(self.ensemble_mcm)
        if self.weights0 is not None:
            tensors["selection/weights0"] = self.weights0.cpu()
        if self.rng is not None:
            tensors["selection/rng"] = self.rng
        meta = {
            "trajectory": self.trajectory,
            "histories": self.histories,
            "candidates": [{**c.record(), "threshold": c.threshold} for c in self.candidates],
        }
        return meta, tensors

    def restore(self, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
        """The selection of a checkpoint (``checkpoint_parts``'s)."""
        self.trajectory, self.histories = int(meta["trajectory"]), list(meta["histories"])
        self.candidates = []
        for i, row in enumerate(meta["candidates"]):
            prefix = f"selection/{i}/param/"
            params = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            kept = tensors.get(f"selection/{i}/predictions")
            self.candidates.append(
                Candidate(
                    row["lr_prompt"],
                    row["lr_norm"],
                    row["epoch"],
                    zeroshot=row["zeroshot"],
                    diverged=row["diverged"],
                    scores={k: (math.nan if v is None else v) for k, v in row["scores"].items()},
                    test=row.get("test"),
                    threshold=row.get("threshold"),
                    tensors=params or None,
                    predictions=kept.numpy() if kept is not None else None,
                    mcm=tensors[f"selection/{i}/mcm"].numpy() if kept is not None else None,
                )
            )
        self.ensemble = tensors["selection/ensemble"].numpy() if "selection/ensemble" in tensors else None
        self.ensemble_mcm = tensors["selection/ensemble_mcm"].numpy() if "selection/ensemble_mcm" in tensors else None
        self.weights0 = tensors.get("selection/weights0")
        self.rng = tensors.get("selection/rng")


def load_tensors(run: Run, values: dict[str, torch.Tensor]) -> None:
    """Copy ``values`` into the run's tuned parameters."""
    with torch.no_grad():
        for name, param in run.tuned.items():
            param.copy_(values[name].to(param.device, param.dtype))
