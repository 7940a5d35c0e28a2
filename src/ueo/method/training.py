"""fit: adapt a CLIP to an unlabeled image collection (the loop itself: ``ueo.loop``).

The bundle's CLIP is never left modified: fit tunes it in place and restores the original values at
the end; the result's ``adapted`` state re-applies what was learned (``evaluate(..., adapted=...)``).
Under torch.distributed (torchrun) every rank calls fit with the same data.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch

from ..config import PROMPT_CONTEXT, FitConfig, FitResult, config_fields, is_finite_number
from ..data import ImageList
from ..errors import ConfigError, DataError, DivergedError
from ..images import DecodeCache, as_dataset
from ..model import (
    AdaptedState,
    PromptLearner,
    Threshold,
    adapted_state,
    applied,
    apply_adapted_state,
    choose_threshold,
    configure_tuning,
    parse_threshold,
    resolve_rule,
)
from ..views import image_source
from .checkpoint import restore
from .inference import Outputs, TestTimePrompt, positions_in
from .loop import Run, train_loop
from .objectives import oracle_weights, upl_pseudo_labels
from .selection import Selection, check_validator, load_tensors, validator_score


def fit(
    bundle,
    class_names: Sequence[str],
    train,
    test=None,
    config: FitConfig | None = None,
    *,
    checkpoint: Callable[[dict], None] | None = None,
    resume: dict | None = None,
    should_stop: Callable[[], bool] | None = None,
    identity: dict | None = None,
    cache=True,
    threshold="auto",
    tpr: float | None = None,
    val=None,
    **overrides,
) -> FitResult:
    """Adapt ``bundle``'s CLIP to the unlabeled ``train`` for the known ``class_names``. ``train`` and ``test``
    are datasets of (image, label) items, or what ``ueo.read_images`` gives.

    Any FitConfig field may be given as a keyword (``method="ueo", epochs=50, ...``), overriding ``config``.
    Evaluates at epoch 0 (zero-shot), every ``eval_every`` epochs and at the end, on ``test`` and (when
    it has labels and ``eval_train``) on the adaptation set itself. Returns a :class:`FitResult`.

    checkpoint: called with a checkpoint (``ueo.checkpoint``) after every epoch and when stopping.
    resume: a checkpoint from ``load_checkpoint``; training continues where it stopped.
    should_stop: polled during training and evaluations; when it returns True a checkpoint is made (once
        training has begun) and :class:`Interrupted` is raised.
    identity: what the data is (e.g. a fingerprint of the files), recorded in checkpoints and checked on
        resume, beside the number of images of each set.
    threshold, tpr, val: the "unknown" threshold, decided once at the end (``thresholds.choose_threshold``):
        "auto" (Otsu's rule on the adaptation set's final scores), a number, or with ``tpr`` the threshold that
        accepts that fraction of the known images of the labeled ``val`` images. ``result.threshold`` (also the
        adapted state's) carries it, with Otsu's cut of the zero-shot scores to compare decisions with.
    Raises :class:`DivergedError` (holding the last good state) when the loss becomes NaN or infinite.
    """
    unknown = set(overrides) - set(config_fields())
    if unknown:
        raise TypeError(f"Unknown fit option(s): {sorted(unknown)}. Valid: {config_fields()}.")
    if config is None:  # a baseline's recipe where the options are silent
        cfg = FitConfig.for_method(**overrides).validate()
    else:
        cfg = replace(config, **overrides).validate()
    check_threshold_rule(threshold, tpr, val)
    if cfg.method == "tpt" and test is None:
        raise ConfigError(
            "method tpt tunes the prompt for each test image and uses no adaptation set: give the images to "
            "predict as test images (test=, --test)."
        )
    train, test, val = (as_dataset(d)[0] if isinstance(d, ImageList) else d for d in (train, test, val))
    if len(train) == 0:
        raise DataError("The adaptation set is empty.")
    model, device = bundle.model, bundle.device
    torch.manual_seed(cfg.seed)
    learner = PromptLearner(bundle, class_names, init=cfg.init).to(device)
    rule = resolve_rule(model, cfg.rule)  # what "auto" stands for on this model
    tuned = configure_tuning(model, learner, cfg.tune, rule)
    originals = adapted_state(tuned)
    result = FitResult(config=cfg, tuned_parameters={n: p.numel() for n, p in tuned.items()}, rule=rule, bundle=bundle)
    cache = DecodeCache() if cache is None or cache is True else cache  # (the same one for every set)
    sources = {
        name: image_source(
            bundle, data, fast=cfg.fast, cache=cache, seed=cfg.seed, num_workers=cfg.num_workers, progress=cfg.progress
        )
        for name, data in (("train", train), ("test", test), ("val", val if tpr is not None else None))
        if data is not None
    }
    identity = run_identity(bundle, train, test, identity)
    run = Run(
        cfg,
        bundle,
        list(class_names),
        learner,
        tuned,
        sources,
        result,
        save=checkpoint,
        should_stop=should_stop,
        identity=identity,
        train_in_test=positions_in(train, test) if test is not None else None,
    )
    training = cfg.method not in ("zeroshot", "tpt") and cfg.epochs > 0
    run.selection = Selection(cfg, len(class_names)) if cfg.select == "auto" else None
    try:
        start, weights = resumed(run, resume) if resume is not None else from_zeroshot(run, training)
        run.weights = weights.to(device) if weights is not None else None
        run.batch_stats = cfg.method == "tent"  # Tent adapts and predicts with each batch's statistics
        if cfg.method == "tpt":
            test_time_pass(run)
        if training and run.selection is not None:
            run.selection.train(run, start, originals)
        elif training and cfg.method == "upl" and cfg.upl_prompts > 1:
            train_ensemble(run, start, originals)
        elif training:
            try:
                train_loop(run, *start)
            except DivergedError as error:
                error.last_good.threshold = last_good_threshold(run, error.last_good)
                raise
        result.weights = run.weights.cpu() if run.weights is not None else None
        result.adapted = run.state()
        train_out = final_outputs(run)
        result.threshold = result.adapted.threshold = final_threshold(run, train_out, threshold, tpr)
        result.check = end_of_run_check(run, train_out) if training else None  # (TPT: no adaptation set)
    finally:
        apply_adapted_state(model, learner, originals)
        model.requires_grad_(False)
        for param in model.parameters():  # (no gradient of the last step is left on the caller's model)
            param.grad = None
    return result


def resumed(run: Run, checkpoint: dict) -> tuple[tuple[int, int], torch.Tensor | None]:
    """(where training goes on, the confidence weights) of a run resumed from ``checkpoint``."""
    targets = checkpoint["tensors"].get("targets")  # (UPL's pseudo-labels: which images train)
    run.targets = targets.to(run.device) if targets is not None else None
    trained = len(run.members or run.sources["train"])
    start = restore(run, checkpoint, steps_per_epoch=math.ceil(trained / run.config.batch_size))
    return start, checkpoint["tensors"].get("weights")


def from_zeroshot(run: Run, training: bool) -> tuple[tuple[int, int], torch.Tensor | None]:
    """The zero-shot pass (the adaptation set always, the test set when given) and what the run takes from it:
    Otsu's cut and the check validator's score of the zero-shot model, UEO's confidence weights, UPL's
    pseudo-labels, the selection's first candidate. ((1, 0), the weights)."""
    cfg, result = run.config, run.result
    zero_shot_train = run.measure(0, need_train=True)
    assert zero_shot_train is not None  # (asked for: the adaptation set is always scored here)
    result.zeroshot_outputs = dict(result.outputs)
    zeroshot = result.zeroshot_outputs.get("train", result.zeroshot_outputs.get("test"))
    result.zeroshot_threshold = choose_threshold("auto", scores=zeroshot.scores.numpy()).value
    result.zeroshot_check = validator_score(check_validator(cfg.validator), zero_shot_train, cfg.logit_scale)
    needs_weights = cfg.method in ("ueo", "oracle") and training
    weights = confidence_weights(cfg, zero_shot_train, len(run.class_names)) if needs_weights else None
    if cfg.method == "upl" and training:
        run.targets = pseudo_labels(cfg, zero_shot_train, run.class_names).to(run.device)
    if run.selection is not None:  # zero-shot is always a candidate; every trajectory starts from it
        run.selection.add(run, 0, zeroshot=True, train_out=zero_shot_train, test=result.outputs.get("test"))
        run.selection.weights0, run.selection.rng = weights, torch.get_rng_state()
    return (1, 0), weights


def pseudo_labels(cfg: FitConfig, outputs: Outputs, class_names: list[str]) -> torch.Tensor:
    """UPL's pseudo-labels of the adaptation set from the zero-shot outputs (``objectives.upl_pseudo_labels``);
    a DataError when fewer than two classes get any (cross-entropy would have nothing to tell apart)."""
    probs = torch.softmax(cfg.logit_scale * outputs.cosines.float(), dim=-1)
    targets = upl_pseudo_labels(probs, cfg.upl_per_class)
    present = sorted(set(targets[targets >= 0].tolist()))
    if len(present) < 2:
        only = f"only {class_names[present[0]]!r} gets any" if present else "none gets any"
        raise DataError(
            f"UPL learns from the images the zero-shot model predicts as each class, and {only}: nothing to tell "
            "apart. Give a collection with images of several listed classes, or use another method."
        )
    missing = [class_names[k] for k in range(len(class_names)) if k not in present]
    if missing:
        warnings.warn(
            f"UPL: the zero-shot model predicts no adaptation image as {len(missing)} of the {len(class_names)} "
            f"classes ({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}); it learns the others.",
            stacklevel=4,
        )
    return targets


def train_ensemble(run: Run, start: tuple[int, int], originals: dict[str, torch.Tensor]) -> None:
    """UPL's ensemble: ``upl_prompts`` contexts, each learned from the zero-shot one as a fit of its own (its
    batches drawn from seed + member), then held together: the state's context is [N, m, W], whose
    predictions average the N contexts' (``PromptLearner.text_features``). Evaluated once, at the end."""
    cfg, result = run.config, run.result
    zero_rows = [row for row in result.evaluations if row["epoch"] == 0]
    for member in range(run.member, cfg.upl_prompts):
        run.member = member
        if start == (1, 0):  # a fresh member: from the zero-shot context
            load_tensors(run, originals)
        train_loop(run, *start)
        start = (1, 0)
        run.contexts.append(run.tuned[PROMPT_CONTEXT].detach().cpu().clone())
        result.evaluations = list(zero_rows)  # a member's evaluations are not the run's (its steps stay in the history)
    learner = run.learner
    learner.ctx = torch.nn.Parameter(torch.stack(run.contexts).to(run.device), requires_grad=False)
    run.tuned[PROMPT_CONTEXT] = learner.ctx
    result.tuned_parameters[PROMPT_CONTEXT] = learner.ctx.numel()
    run.measure(cfg.epochs)


def test_time_pass(run: Run) -> None:
    """TPT: the test set scored with a context tuned for each image; recorded as the adapted evaluation
    (epoch 1). The adaptation set is not scored: TPT has none."""
    run.test_time = TestTimePrompt(run.bundle.model, run.learner, run.config)
    test_out = run.result.outputs["test"] = run.outputs_for("test")
    run.result.outputs.pop("train", None)
    metrics = test_out.metrics(len(run.class_names))
    run.result.evaluations.append({"epoch": 1, "split": "test", **metrics})


def end_of_run_check(run: Run, train_out: Outputs) -> dict:
    """Did adapting help, by a label-free validator on the adaptation set: the chosen candidate against
    zero-shot by the selection's validator, else the adapted model against zero-shot by the per-model
    validator of ``check_validator``. {"validator", "adapted", "zeroshot", "helped"}."""
    selection, cfg = run.selection, run.config
    helped: bool | None
    if selection is not None:
        chosen, zeroshot = selection.candidates[selection.chosen], selection.candidates[0]
        adapted, before, name = chosen.scores[cfg.validator], zeroshot.scores[cfg.validator], cfg.validator
        helped = not chosen.zeroshot
    else:
        name = check_validator(cfg.validator)
        adapted = validator_score(name, train_out, cfg.logit_scale)
        before = run.result.zeroshot_check
        helped = None if before is None or adapted is None else adapted > before
    return {"validator": name, "adapted": adapted, "zeroshot": before, "helped": helped}


def check_threshold_rule(threshold, tpr, val) -> None:
    """Refuse a threshold rule fit cannot follow, before any work."""
    if parse_threshold(threshold) == "fitted":
        raise ConfigError("threshold 'fitted' is for states already fitted; fit chooses one: auto, a number, or tpr.")
    if tpr is not None and (not is_finite_number(tpr) or not 0 < tpr <= 1):
        raise ConfigError(f"tpr must be a fraction in (0, 1], got {tpr!r}.")
    if tpr is not None and val is None:
        raise ConfigError("A threshold at a TPR needs labeled validation images: give val.")


def final_outputs(run: Run) -> Outputs:
    """The adaptation set's outputs with the final parameters (scored unless the last evaluation did)."""
    train_out = run.result.outputs.get("train")
    if run.config.method == "tpt":  # TPT has no adaptation set: its threshold is of the test images' scores
        return run.result.outputs["test"]
    return train_out if train_out is not None else run.train_outputs(run.result.outputs.get("test"))


def final_threshold(run: Run, train_out: Outputs, spec, tpr: float | None) -> Threshold:
    """The threshold of the fitted state, decided once: by ``spec`` on the adaptation set's final scores, or
    at ``tpr`` of the validation set's known images; with the zero-shot model's cut beside it."""
    val = None
    if tpr is not None:
        val_out = run.outputs_for("val")
        val = (val_out.labels.numpy(), val_out.scores.numpy())
    chosen = choose_threshold(
        spec,
        scores=train_out.scores.numpy(),
        source=f"the adaptation set ({len(train_out.scores)} images)",
        num_known=len(run.class_names),
        tpr=tpr,
        val=val,
        warn=lambda message: warnings.warn(message.removeprefix("warning: "), stacklevel=4),
    )
    return replace(chosen, zeroshot=run.result.zeroshot_threshold)


def last_good_threshold(run: Run, state: AdaptedState) -> Threshold:
    """The threshold of a diverged run's last good state: Otsu's rule on the adaptation set scored with it
    (so that predictions with it decide each image alone, as with a finished run's state)."""
    with applied(run.bundle.model, run.learner, state.tensors):
        scores = run.outputs_for("train").scores.numpy()
    state.info["diverged"] = "training diverged; this is the state from the start of the epoch that failed"
    source = f"the adaptation set ({len(scores)} images), scored with this state"
    return replace(choose_threshold("auto", scores=scores, source=source), zeroshot=run.result.zeroshot_threshold)


def run_identity(bundle, train, test, extra: dict | None = None) -> dict:
    """What a run is made of, recorded in its checkpoints and checked on resume: the number of images of
    each set, the model's weights, and what the caller adds (e.g. a fingerprint of the files)."""
    return {
        "adaptation_images": len(train),
        "test_images": len(test) if test is not None else 0,
        "model_weights": bundle.identity,
        **(extra or {}),
    }


def confidence_weights(config: FitConfig, outputs: Outputs, num_known: int) -> torch.Tensor:
    """The per-sample weights of UEO (the zero-shot MCM scores) or of the oracle (from the labels)."""
    if config.method == "oracle":
        if bool((outputs.labels < 0).any()):
            raise DataError(
                "method 'oracle' needs a label for every adaptation image (found label -1); "
                "it is an upper bound for experiments with labeled data."
            )
        return oracle_weights(outputs.labels, num_known)
    return outputs.scores
