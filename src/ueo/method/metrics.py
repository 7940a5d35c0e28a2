"""Evaluation metrics (docs/metrics.md). Pure numpy; one convention throughout.

Convention:
  * labels 0..num_known-1 are known classes; any other label (>= num_known, or -1) is unknown.
  * predictions are known-class indices (argmax over the K known classes, no rejection).
  * scores are higher for "more known" (e.g. MCM); for ranking metrics KNOWN is the positive class.
  * every value is a fraction in [0, 1]; a metric that is undefined for the data (no unknown samples
    for AUROC, no known samples for accuracy) is None, never a crash.

  gacc      accuracy over known-class samples.
  pacc      mean over the known classes present in the labels of the per-class accuracy ("ACC" in the paper).
  auroc     area under the ROC curve, known vs unknown, ties count one half (Mann-Whitney).
  fpr95     fraction of unknowns accepted at the highest threshold that accepts >= 95% of knowns.
  aupr_in   average precision with known as positive (score); aupr_out: unknown as positive (-score).
            Average precision = sum_n (R_n - R_{n-1}) P_n over the distinct thresholds (as sklearn).
  hm        harmonic mean of pacc and auroc.
At a threshold t (accept as known when score >= t), as in open-set domain adaptation:
  known_acc       OS*: mean over present known classes of the fraction accepted AND correctly classified.
  unknown_recall  UNK: fraction of unknown samples rejected.
  h_score         harmonic mean of known_acc and unknown_recall.
"""

from __future__ import annotations

import numpy as np


def _arrays(labels, predictions, scores):
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    predictions = np.asarray(predictions, dtype=np.int64).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not (len(labels) == len(predictions) == len(scores)):
        raise ValueError(
            f"labels, predictions and scores differ in length: {len(labels)}, {len(predictions)}, {len(scores)}."
        )
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or infinite values.")
    return labels, predictions, scores


def known_mask(labels, num_known: int) -> np.ndarray:
    labels = np.asarray(labels)
    return (labels >= 0) & (labels < num_known)


def harmonic_mean(a: float | None, b: float | None) -> float | None:
    """2ab / (a + b); None when either is None; 0 when both are 0."""
    if a is None or b is None:
        return None
    return 0.0 if a + b == 0 else 2.0 * a * b / (a + b)


def auroc(is_positive, scores) -> float | None:
    """Area under the ROC curve (rank statistic, ties = 1/2). None when a class is missing."""
    is_positive = np.asarray(is_positive, dtype=bool).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    n_pos = int(is_positive.sum())
    n_neg = len(is_positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    mean_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based average rank of each distinct value
    rank_sum = mean_rank[inverse][is_positive].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def cumulative_counts(is_positive, scores):
    """Cumulative true/false positives at each distinct threshold, thresholds descending."""
    is_positive = np.asarray(is_positive, dtype=bool).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, sorted_pos = scores[order], is_positive[order]
    last_of_group = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(scores) - 1]
    tps = np.cumsum(sorted_pos)[last_of_group]
    fps = last_of_group + 1 - tps
    return tps, fps


def average_precision(is_positive, scores) -> float | None:
    """sum_n (R_n - R_{n-1}) P_n over distinct thresholds. None without positives or negatives."""
    is_positive = np.asarray(is_positive, dtype=bool).reshape(-1)
    if is_positive.all() or not is_positive.any():
        return None
    tps, fps = cumulative_counts(is_positive, scores)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def fpr_at_tpr(is_positive, scores, tpr: float = 0.95) -> float | None:
    """False-positive rate at the highest threshold whose true-positive rate reaches ``tpr``."""
    is_positive = np.asarray(is_positive, dtype=bool).reshape(-1)
    if is_positive.all() or not is_positive.any():
        return None
    tps, fps = cumulative_counts(is_positive, scores)
    reached = np.flatnonzero(tps / tps[-1] >= tpr)[0]
    return float(fps[reached] / fps[-1])


def _per_class_mean(correct: np.ndarray, labels: np.ndarray) -> float | None:
    if len(labels) == 0:
        return None
    classes = np.unique(labels)
    return float(np.mean([correct[labels == c].mean() for c in classes]))


def compute_metrics(labels, predictions, scores, num_known: int) -> dict[str, float | None]:
    """gacc, pacc, auroc, fpr95, aupr_in, aupr_out, hm (fractions; None when undefined) + sample counts."""
    labels, predictions, scores = _arrays(labels, predictions, scores)
    known = known_mask(labels, num_known)
    correct = predictions[known] == labels[known]
    result = {
        "gacc": float(correct.mean()) if known.any() else None,
        "pacc": _per_class_mean(correct, labels[known]),
        "auroc": auroc(known, scores),
        "fpr95": fpr_at_tpr(known, scores, 0.95),
        "aupr_in": average_precision(known, scores),
        "aupr_out": average_precision(~known, -scores),
    }
    result["hm"] = harmonic_mean(result["pacc"], result["auroc"])
    result["num_known_samples"] = int(known.sum())
    result["num_unknown_samples"] = int((~known).sum())
    return result


def open_set_metrics(labels, predictions, scores, num_known: int, threshold: float) -> dict[str, float | None]:
    """known_acc (OS*), unknown_recall (UNK) and h_score when accepting samples with score >= threshold."""
    labels, predictions, scores = _arrays(labels, predictions, scores)
    known = known_mask(labels, num_known)
    accepted = scores >= threshold
    known_acc = _per_class_mean(accepted[known] & (predictions[known] == labels[known]), labels[known])
    unknown_recall = float((~accepted[~known]).mean()) if (~known).any() else None
    return {
        "threshold": float(threshold),
        "known_acc": known_acc,
        "unknown_recall": unknown_recall,
        "h_score": harmonic_mean(known_acc, unknown_recall),
    }
