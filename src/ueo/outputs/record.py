"""metrics.json: the one room that builds a run's record (``ueo fit``, the demo's runs; ``ueo eval``,
``predict`` and ``discover``) and checks one read back (``ueo report``, the pages). Keys in docs/metrics.md."""

from __future__ import annotations

import math

from ..config import PROMPT_CONTEXT, TRAJECTORY_KEYS
from ..model import Threshold
from ..version import __version__

RUN_KEYS = ("benchmark", "domain", "scenario", "method")  # what tells runs of a table apart, with model and settings
TABLE_METRICS = ("pacc", "auroc", "hm", "gacc", "fpr95", "aupr_in", "aupr_out")


# the settings a fit record keeps: what shaped the trajectory, but for what the record says elsewhere (method,
# seed) or never changes (logit_scale, init), and the validator that checked and chose
FIT_SETTINGS = (
    *(k for k in TRAJECTORY_KEYS if k not in ("method", "logit_scale", "init", "seed")),
    "validator",
)


def fit_record(
    *,
    run: dict,
    settings: dict,
    class_names,
    result,
    num_adaptation_images: int,
    num_test_images: int,
    num_skipped: int = 0,
    requested_rule: str | None = None,
) -> dict:
    """metrics.json of a fit (``ueo fit``, the demo's runs): the one record, its keys in docs/metrics.md.
    ``run``: benchmark, domain, scenario, method, seed, model, pretrained, weights, data, data_fingerprint;
    ``settings``: the fit's settings (those of FIT_SETTINGS are kept); ``result``: the FitResult (its
    threshold is the run's)."""

    tuned = result.tuned_parameters
    return {
        "run": {**run, "settings": {k: settings[k] for k in FIT_SETTINGS if k in settings}},
        "class_names": list(class_names),
        "zeroshot": result.metrics.get("zeroshot"),
        "adapted": result.metrics.get("adapted"),
        "evaluations": result.evaluations,
        "threshold": result.threshold.record(),
        "check": result.check,
        **({"selection": result.selection} if result.selection is not None else {}),
        "num_adaptation_images": num_adaptation_images,
        "num_test_images": num_test_images,
        "num_skipped": num_skipped,
        "tuned_parameters": sum(tuned.values()),
        "tuning": {
            "tune": settings.get("tune"),
            "rule": result.rule,
            "requested_rule": requested_rule or settings.get("rule"),
            "parameters": {
                "prompt": tuned.get(PROMPT_CONTEXT, 0),
                "norm": sum(n for k, n in tuned.items() if k != PROMPT_CONTEXT),
            },
        },
        "ueo_version": __version__,
    }


def apply_record(
    *,
    class_names,
    predictions: dict,
    threshold: Threshold,
    num_skipped: int,
    source: str,
    state,
    adapted: dict | None = None,
    zeroshot: dict | None = None,
    discovery: dict | None = None,
    seconds: float,
) -> dict:
    """metrics.json of ``ueo eval``, ``predict`` or ``discover``: the state applied (``source``: its file),
    the predictions' summary and threshold, the metrics when the images are labeled."""
    record = {
        "class_names": list(class_names),
        "predictions": predictions,
        "threshold": threshold.record(),
        "num_skipped": num_skipped,
        "source": source,
        "run": {"model": state.model, "pretrained": state.pretrained, "method": state.info.get("method", "-")},
    }
    if discovery is not None:
        record["discovery"] = discovery
    if adapted is not None:
        record["adapted"] = adapted
        if zeroshot is not None:
            record["zeroshot"] = zeroshot
    record["seconds"] = round(seconds, 1)
    return record


def record_problem(data) -> str | None:
    """What makes a metrics.json unusable (None: nothing): not a mapping, or a field of the wrong type."""
    if not isinstance(data, dict):
        return f"damaged: a metrics.json holds a mapping, not a {type(data).__name__}"

    def number(value, integer=False):
        kinds = (int,) if integer else (int, float)
        return not isinstance(value, bool) and isinstance(value, kinds) and math.isfinite(value)

    for key in ("adapted", "zeroshot"):
        row = data.get(key)
        if row is None:
            continue
        if not isinstance(row, dict):
            return f"damaged: {key!r} is not a mapping"
        for metric in TABLE_METRICS:
            value = row.get(metric)
            if value is not None and not number(value):
                return f"damaged: {key} {metric} is {value!r:.40}, not a number"
    for key in ("run", "tuning", "predictions"):
        if data.get(key) is not None and not isinstance(data[key], dict):
            return f"damaged: {key!r} is not a mapping"
    threshold = data.get("threshold")
    if threshold is not None and not (isinstance(threshold, dict) and number(threshold.get("threshold"))):
        return f"damaged: 'threshold' is {threshold!r:.60}, not a record with a number"
    names = data.get("class_names")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        return "damaged: 'class_names' is not a list of names"
    for key in ("num_adaptation_images", "num_test_images", "num_skipped", "tuned_parameters"):
        if data.get(key) is not None and not number(data[key], integer=True):
            return f"damaged: {key!r} is {data[key]!r:.40}, not a count"
    if data.get("seconds") is not None and not number(data["seconds"]):
        return f"damaged: 'seconds' is {data['seconds']!r:.40}, not a number"
    check = data.get("check")
    if check is not None and not (
        isinstance(check, dict)
        and isinstance(check.get("validator"), str)
        and check.get("helped") in (True, False, None)
    ):
        return "damaged: 'check' is not a record with a validator and whether adapting helped"
    selection = data.get("selection")
    if selection is not None and not (
        isinstance(selection, dict)
        and isinstance(selection.get("candidates"), list)
        and all(isinstance(c, dict) and isinstance(c.get("scores"), dict) for c in selection["candidates"])
        and number(selection.get("chosen"), integer=True)
        and 0 <= selection["chosen"] < len(selection["candidates"])
    ):
        return "damaged: 'selection' is not a record of candidates with the chosen one"
    found = data.get("discovery")
    if found is not None and not (
        isinstance(found, dict)
        and isinstance(found.get("summary"), str)
        and isinstance(found.get("groups"), list)
        and all(isinstance(g, dict) and number(g.get("size"), integer=True) for g in found["groups"])
    ):
        return "damaged: 'discovery' is not a record with a summary and groups"
    return None


def check_lines(metrics: dict) -> list[str]:
    """What the label-free check and the selection found: the chosen candidate, and a warning when adapting
    did not help by the validator (docs/method.md)."""
    lines, check, selection = [], metrics.get("check"), metrics.get("selection")
    if selection:
        candidates = selection["candidates"]
        chosen = candidates[selection["chosen"]]
        what = (
            "zero-shot"
            if chosen["zeroshot"]
            else f"lr {chosen['lr_prompt']:g}/{chosen['lr_norm']:g}, epoch {chosen['epoch']}"
        )
        diverged = sum(c["diverged"] for c in candidates)
        lines.append(
            f"chosen without labels by {selection['validator']}: {what}, among {len(candidates)} candidates"
            + (f" ({diverged} diverged, never chosen)" if diverged else "")
        )
    if check and check.get("helped") is False:
        advice = (
            "the zero-shot model was kept (adapted.safetensors holds it)"
            if selection
            else "consider --select auto or the zero-shot model"
        )
        lines.append(f"warning: by {check['validator']}, adaptation did not help on this collection: {advice}")
    return lines
