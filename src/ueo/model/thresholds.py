"""Deciding "unknown": the one threshold policy on the OOD score (MCM; higher = more likely known).

A sample is accepted as its top-1 known class when score >= threshold, else predicted "unknown".
  auto   Otsu's rule on the (unlabeled) scores: the cut that maximises the between-group variance
         w0 * w1 * (mean0 - mean1)^2, computed exactly over the sorted scores; the threshold is the
         midpoint between the two scores that the cut separates. Needs no label.
  FLOAT  a number given by the user. Scores lie in [1/K, 1] and, for CLIP cosines, sit just above 1/K.
  tpr    the highest threshold that accepts at least a fraction ``tpr`` of labeled KNOWN validation samples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..config import UNKNOWN
from ..errors import ConfigError, DataError


def otsu_threshold(scores) -> float:
    """Exact Otsu threshold of 1-D scores (midpoint of the best split between distinct values)."""
    values = np.sort(np.asarray(scores, dtype=np.float64).reshape(-1))
    if len(values) == 0:
        raise DataError("No scores to choose a threshold from.")
    if values[0] == values[-1]:
        return float(values[0])
    n = len(values)
    cumulative = np.cumsum(values)
    k = np.arange(1, n)  # size of the lower group
    valid = values[1:] > values[:-1]  # cut only between distinct values
    w0, w1 = k / n, (n - k) / n
    mean0 = cumulative[:-1] / k
    mean1 = (cumulative[-1] - cumulative[:-1]) / (n - k)
    between = np.where(valid, w0 * w1 * (mean0 - mean1) ** 2, -np.inf)
    best = int(np.argmax(between))
    return float((values[best] + values[best + 1]) / 2)


def threshold_at_tpr(known_scores, tpr: float = 0.95) -> float:
    """Highest threshold accepting at least ``tpr`` of the known samples (score >= threshold)."""
    values = np.sort(np.asarray(known_scores, dtype=np.float64).reshape(-1))[::-1]
    if len(values) == 0:
        raise DataError("A threshold at a TPR needs labeled known-class samples.")
    if not 0 < tpr <= 1:
        raise ConfigError(f"tpr must be in (0, 1], got {tpr}.")
    needed = int(np.ceil(tpr * len(values) - 1e-9))
    return float(values[max(needed, 1) - 1])


THRESHOLD_WORDS = ("auto", "fitted")


def parse_threshold(spec) -> float | str:
    """'auto' (Otsu on the scores at hand), 'fitted' (the one stored when the state was fitted), or a
    finite number."""
    if str(spec).lower() in THRESHOLD_WORDS:
        return str(spec).lower()
    try:
        value = float(spec)
    except (TypeError, ValueError):
        raise ConfigError(f"A threshold must be 'auto', 'fitted' or a number, got {spec!r}.") from None
    if not np.isfinite(value):
        raise ConfigError(f"A threshold must be a finite number, got {spec!r}.")
    return value


def threshold_warning(value: float, num_known: int) -> str | None:
    """Why a given threshold decides nothing useful, or None. MCM scores lie in [1/K, 1] and, for CLIP
    cosines, sit just above 1/K."""
    low = 1.0 / num_known
    if value <= low:
        return (
            f"threshold {value:g} is at or below 1/K = {low:.4g}, the lowest score there is: every image is "
            "accepted as a known class."
        )
    if value > 1:
        return f"threshold {value:g} is above 1, the highest score there is: every image is 'unknown'."
    return None


def decide(predictions, scores, class_names: Sequence[str], threshold: float) -> list[str]:
    """Class name of the top-1 known class, or "unknown" when score < threshold."""
    return [class_names[int(p)] if s >= threshold else UNKNOWN for p, s in zip(predictions, scores)]


@dataclass(frozen=True)
class Threshold:
    """The unknown threshold and why: ``value``, the ``rule`` that chose it ("otsu", "given" or "tpr"), the
    ``source`` it was chosen on (which scores, or the flag that gave it), and ``zeroshot``: the cut of the
    zero-shot model's scores by Otsu's rule (on the adaptation set when the state was fitted), what the
    zero-shot model's decisions are compared at (None when unknown). The one form a threshold takes in
    ueo; ``record()`` is how adapted states and metrics.json keep it."""

    value: float
    rule: str
    source: str
    zeroshot: float | None = None

    def record(self) -> dict:
        """As metrics.json and adapted states keep it: {"threshold", "rule", "source"[, "zeroshot"]}."""
        kept = {"threshold": self.value, "rule": self.rule, "source": self.source}
        return kept | ({"zeroshot": self.zeroshot} if self.zeroshot is not None else {})

    def __getitem__(self, key: str):
        """A threshold reads as its record too (``state.threshold["threshold"]``: code written when states
        kept the record itself)."""
        return self.record()[key]

    def get(self, key: str, default=None):
        return self.record().get(key, default)

    def keys(self):
        """With ``__getitem__``, what lets ``{**threshold}`` and ``dict(threshold)`` give the record."""
        return self.record().keys()

    @classmethod
    def from_record(cls, record) -> Threshold | None:
        """A threshold from its record (a Threshold is returned as it is); None for none."""
        if isinstance(record, Threshold) or record is None:
            return record
        if not isinstance(record, dict) or record.get("threshold") is None:
            return None
        zeroshot = record.get("zeroshot")
        try:
            return cls(
                float(record["threshold"]),
                str(record.get("rule", "given")),
                str(record.get("source", "")),
                float(zeroshot) if zeroshot is not None else None,
            )
        except (TypeError, ValueError):  # a damaged record
            return None

    def describe(self) -> str:
        """The threshold and how it was chosen, in words."""
        rule = {"otsu": "Otsu's rule on", "given": "given with", "tpr": "the threshold that"}.get(self.rule, self.rule)
        return f"threshold {self.value:.4f}: {rule} {self.source}"


def known_of(labels, scores, num_known: int) -> np.ndarray:
    """The scores of the labeled known images (labels 0..K-1)."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    return scores[(labels >= 0) & (labels < num_known)]


def choose_threshold(
    spec="auto",
    *,
    scores=None,
    source: str = "",
    num_known: int | None = None,
    fitted: Threshold | None = None,
    tpr: float | None = None,
    known_scores=None,
    val=None,
    zeroshot_scores=None,
    warn: Callable[[str], None] | None = None,
) -> Threshold:
    """The threshold, by the one policy every caller uses. With ``tpr``: the highest threshold accepting that
    fraction of ``known_scores`` (labeled known images; ``source`` names them), or of the known images of
    ``val`` ((labels, scores) of a labeled validation set). Else ``spec``: a
    number (given; ``warn`` says when it decides nothing), "auto" (Otsu's rule on ``scores``, the images
    ``source`` names) or "fitted" (the ``fitted`` one stored when the state was fitted; without one, Otsu on
    ``scores``, with a warning; ``warn`` also says when a stored one decides nothing). Its ``zeroshot`` cut:
    the fitted one's when there is one, else Otsu's rule on ``zeroshot_scores`` when they are given."""
    fitted = Threshold.from_record(fitted)
    if tpr is not None and known_scores is None:
        if val is None:
            raise ConfigError("A threshold at a TPR needs labeled validation images.")
        known_scores = known_of(val[0], val[1], num_known or 0)
        source = f"the {len(known_scores)} known validation images"
    chosen = _chosen(spec, scores, source, num_known, fitted, tpr, known_scores, warn)
    if fitted is not None and fitted.zeroshot is not None:
        zeroshot: float | None = fitted.zeroshot
    elif zeroshot_scores is not None:
        zeroshot = otsu_threshold(zeroshot_scores)
    else:
        zeroshot = None
    return Threshold(chosen.value, chosen.rule, chosen.source, zeroshot)


def _chosen(spec, scores, source, num_known, fitted, tpr, known_scores, warn) -> Threshold:
    if tpr is not None:
        return Threshold(threshold_at_tpr(known_scores, tpr), "tpr", f"accepts {tpr:g} of {source}")
    choice = parse_threshold(spec)
    if choice == "fitted" and fitted is not None:
        problem = threshold_warning(fitted.value, num_known) if num_known else None
        if problem and warn is not None:
            warn(f"warning: the adapted state's stored threshold ({fitted.rule}, {fitted.source}): {problem}")
        return Threshold(fitted.value, fitted.rule, f"{fitted.source or 'the fit'}, stored in the adapted state")
    if choice in THRESHOLD_WORDS:
        if choice == "fitted" and warn is not None:
            warn(
                "warning: the adapted state holds no fitted threshold (saved by an older ueo); using Otsu's rule "
                "on these images' scores, so decisions depend on which images are scored together."
            )
        return Threshold(otsu_threshold(scores), "otsu", source)
    value = float(choice)  # (parse_threshold: a word, handled above, or a finite number)
    problem = threshold_warning(value, num_known) if num_known else None
    if problem and warn is not None:
        warn(f"warning: {problem}")
    return Threshold(value, "given", "--threshold")  # (``source`` names the scores of the other rules)
