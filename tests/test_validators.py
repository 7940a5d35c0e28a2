"""The label-free validators against hand computations and independent references (scipy, scikit-learn)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import softmax
from scipy.stats import entropy
from sklearn.metrics.pairwise import cosine_similarity

from ueo.method import validators as v


def test_entropy_and_im_by_hand():
    probs = [[1.0, 0.0], [0.5, 0.5]]
    # H rows: 0 and ln 2; the mean prediction (0.75, 0.25)
    assert v.entropy_score(probs) == pytest.approx(-math.log(2) / 2)
    marginal = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert v.im_score(probs) == pytest.approx(marginal - math.log(2) / 2)


def test_im_against_scipy_entropy():
    rng = np.random.default_rng(0)
    probs = softmax(rng.normal(size=(50, 7)) * 3, axis=1)
    expected = entropy(probs.mean(axis=0)) - np.mean([entropy(row) for row in probs])
    assert v.im_score(probs) == pytest.approx(expected, rel=1e-12)
    assert v.entropy_score(probs) == pytest.approx(-np.mean([entropy(row) for row in probs]), rel=1e-12)


def test_snd_by_hand_on_three_images():
    probs = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]  # rows 1 and 2 already unit length; row 3 too (0.36 + 0.64)

    # cosines: (1,2) 0, (1,3) 0.6, (2,3) 0.8; each row's softmax over the two others at temperature 0.05
    def two_way_entropy(a, b):
        pa = math.exp(a / 0.05) / (math.exp(a / 0.05) + math.exp(b / 0.05))
        return -(pa * math.log(pa) + (1 - pa) * math.log(1 - pa))

    expected = (two_way_entropy(0.0, 0.6) + two_way_entropy(0.0, 0.8) + two_way_entropy(0.6, 0.8)) / 3
    assert v.snd_score(probs) == pytest.approx(expected, rel=1e-9)


def test_snd_against_scikit_learn_and_scipy():
    rng = np.random.default_rng(1)
    probs = softmax(rng.normal(size=(40, 5)) * 2, axis=1)
    similarity = cosine_similarity(probs) / 0.05
    rows = [softmax(np.delete(similarity[i], i)) for i in range(len(probs))]
    expected = np.mean([entropy(row) for row in rows])
    assert v.snd_score(probs) == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="at least two"):
        v.snd_score(probs[:1])


def test_snd_sample_bounds_the_pairs():
    assert len(v.snd_sample(10)) == 10
    sample = v.snd_sample(4001)  # every third image: 1334 of them
    assert len(sample) <= v.SND_MAX_IMAGES and sample[1] - sample[0] == 3


def test_ensv_agreement_with_the_ensemble_argmax():
    predictions = [[0, 1, 1, 2], [0, 0, 1, 2], [1, 1, 1, 1]]
    ensemble = [[0.6, 0.4, 0.0], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.1, 0.2, 0.7]]  # argmax 0, 1, 1, 2
    assert v.ensv_scores(predictions, ensemble).tolist() == [1.0, 0.75, 0.5]


def test_open_decisions_and_ensv_open_judge_rejection_too():
    decided = v.open_decisions([0, 1, 1, 2], [0.9, 0.2, 0.5, 0.4], 0.45, num_known=3)
    assert decided.tolist() == [0, 3, 1, 3]  # 3 stands for unknown
    reference = np.array([0, 3, 1, 2])
    # same classes as the reference on every image, but one rejection more: 3 of 4 agree
    assert v.ensv_open_scores([decided], reference).tolist() == [0.75]
    assert v.ensv_scores([[0, 1, 1, 2]], np.eye(4)[[0, 1, 1, 2]])[0] == 1.0  # the closed-set view sees no difference


def test_consensus_is_the_mean_scaled_rank():
    assert v.consensus_scores([1, 2, 3], [3, 1, 2]).tolist() == pytest.approx([0.5, 0.25, 0.75])
    assert v.consensus_scores([5, 5, 1]).tolist() == pytest.approx([0.75, 0.75, 0.0])  # ties share their rank
    with pytest.raises(ValueError):
        v.consensus_scores()


def test_every_validator_prefers_the_confident_diverse_candidate_on_clear_data():
    """A sanity check of orientation (higher is better): sharp, balanced predictions against uniform ones."""
    sharp = np.eye(4)[np.arange(40) % 4] * 0.97 + 0.01
    flat = np.full((40, 4), 0.25)
    for name in ("entropy", "im"):
        assert v.PER_MODEL_SCORES[name](sharp) > v.PER_MODEL_SCORES[name](flat)
