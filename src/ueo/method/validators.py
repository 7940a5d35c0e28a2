"""Label-free validators: how good a candidate model seems on the unlabeled adaptation set, from its outputs
alone (docs/method.md states each formula). Pure functions on numpy arrays; every score is oriented so that
higher is better.

Inputs: ``probs`` [N, K], each row a probability vector over the K known classes (the training softmax,
``softmax(100 * cos)``); ``predictions`` [C, N] the class each of C candidates gives each image;
``decisions`` [C, N] the same with K standing for "unknown"; ``ensemble`` [N, K] the candidates' averaged
probabilities.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

SND_TEMPERATURE = 0.05
SND_MAX_IMAGES = 2000  # SND compares every pair of images: on more, every n-th image is taken


def row_entropy(probs) -> np.ndarray:
    """H(p) = -sum_k p_k ln p_k of each row (0 ln 0 = 0). [..., K] -> [...]."""
    p = np.asarray(probs, dtype=np.float64)
    return -np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0).sum(axis=-1)


def entropy_score(probs) -> float:
    """Entropy: -mean_i H(p_i). Confident predictions score high, right or wrong."""
    return float(-row_entropy(probs).mean())


def im_score(probs) -> float:
    """Information maximisation: H(mean_i p_i) - mean_i H(p_i): confident and diverse predictions."""
    p = np.asarray(probs, dtype=np.float64)
    return float(row_entropy(p.mean(axis=0)) - row_entropy(p).mean())


def snd_score(probs, *, temperature: float = SND_TEMPERATURE) -> float:
    """Soft neighbourhood density (Saito et al., 2021): the rows L2-normalised, their pairwise cosine
    similarities (self-pairs left out) softmaxed per row at ``temperature``; the mean entropy of those rows.
    Dense neighbourhoods of similar predictions score high."""
    p = np.asarray(probs, dtype=np.float64)
    if len(p) < 2:
        raise ValueError("SND compares pairs of images: it needs at least two.")
    q = p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)
    logits = q @ q.T / temperature
    np.fill_diagonal(logits, -np.inf)
    logits -= logits.max(axis=1, keepdims=True)
    neighbours = np.exp(logits)
    neighbours /= neighbours.sum(axis=1, keepdims=True)
    return float(row_entropy(neighbours).mean())


def snd_sample(num_images: int) -> np.ndarray:
    """The images SND is computed on: all of them, or every n-th one for at most ``SND_MAX_IMAGES``."""
    step = max(1, -(-num_images // SND_MAX_IMAGES))
    return np.arange(0, num_images, step)


def agreement(labels, reference) -> np.ndarray:
    """The fraction of images on which each row of ``labels`` [C, N] equals ``reference`` [N]. -> [C]."""
    labels, reference = np.atleast_2d(np.asarray(labels)), np.asarray(reference)
    if labels.shape[1] != len(reference):
        raise ValueError(f"{labels.shape[1]} decisions per candidate against {len(reference)} reference ones.")
    return (labels == reference[None, :]).mean(axis=1)


def ensv_scores(predictions, ensemble) -> np.ndarray:
    """EnsV (2024): each candidate's agreement with the argmax of the candidates' averaged probabilities.
    predictions [C, N], ensemble [N, K] -> [C]."""
    return agreement(predictions, np.asarray(ensemble).argmax(axis=1))


def open_decisions(predictions, scores, threshold: float, num_known: int) -> np.ndarray:
    """Each image's class, or ``num_known`` ("unknown") where its MCM score is below ``threshold``."""
    predictions, scores = np.asarray(predictions), np.asarray(scores)
    return np.where(scores >= threshold, predictions, num_known)


def ensv_open_scores(decisions, reference) -> np.ndarray:
    """EnsV on the open-set decisions (ours): each candidate's agreement with the ensemble on the class *and*
    on accepting or rejecting each image. decisions [C, N] (K = unknown), reference [N] -> [C]."""
    return agreement(decisions, reference)


def consensus_scores(*scores) -> np.ndarray:
    """Ours: the mean over validators of each candidate's rank, scaled to [0, 1] (1: the best of every
    validator; ties share their mean rank). Each argument: one validator's scores [C]."""
    if not scores:
        raise ValueError("consensus needs at least one validator's scores.")
    ranks = [(rankdata(np.asarray(s, dtype=np.float64)) - 1) / max(len(s) - 1, 1) for s in scores]
    return np.mean(ranks, axis=0)


def sampled_snd_score(probs) -> float:
    """SND on ``snd_sample``'s images (0 for a single image: no pair to compare)."""
    sample = np.asarray(probs)[snd_sample(len(probs))]
    return snd_score(sample) if len(sample) > 1 else 0.0


PER_MODEL_SCORES = {"entropy": entropy_score, "im": im_score, "snd": sampled_snd_score}


def per_model_scores(probs) -> dict[str, float]:
    """The per-model validators of one candidate's probabilities [N, K] (SND on ``snd_sample``)."""
    p = np.asarray(probs, dtype=np.float64)
    return {name: score(p) for name, score in PER_MODEL_SCORES.items()}


def across_scores(scores: dict[str, np.ndarray], predictions, decisions, ensemble, reference) -> dict[str, np.ndarray]:
    """The validators that judge the candidates together, beside the per-model ones already in ``scores``
    ({name: [C]}): EnsV, EnsV on the open-set decisions (``reference``: the ensemble's), and the consensus of
    IM's and the open EnsV's ranks."""
    found = dict(scores)
    found["ensv"] = ensv_scores(predictions, ensemble)
    found["ensv-open"] = ensv_open_scores(decisions, reference)
    found["consensus"] = consensus_scores(found["im"], found["ensv-open"])
    return found
