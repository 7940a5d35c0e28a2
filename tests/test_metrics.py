import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from ueo.method.metrics import auroc, average_precision, compute_metrics, fpr_at_tpr, harmonic_mean, open_set_metrics

# Hand-computed case: K = 2 known classes; label 2 and -1 are unknown.
LABELS = [0, 0, 1, 1, 1, 2, -1, 2]
PREDS = [0, 1, 1, 1, 0, 0, 1, 1]
SCORES = [0.9, 0.4, 0.8, 0.7, 0.6, 0.5, 0.3, 0.8]


def test_compute_metrics_hand_computed():
    m = compute_metrics(LABELS, PREDS, SCORES, num_known=2)
    assert m["gacc"] == pytest.approx(3 / 5)
    assert m["pacc"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    # known scores .9 .4 .8 .7 .6 vs unknown .5 .3 .8: pairs won = 3+1+2.5+2+2 = 10.5 of 15
    assert m["auroc"] == pytest.approx(10.5 / 15)
    # TPR >= .95 needs all knowns: threshold .4 accepts unknowns .8 and .5 -> 2/3
    assert m["fpr95"] == pytest.approx(2 / 3)
    # known positive, thresholds .9 .8 .7 .6 .5 .4: (tp, fp) = (1,0) (2,1) (3,1) (4,1) (4,2) (5,2)
    assert m["aupr_in"] == pytest.approx(0.2 * 1 + 0.2 * 2 / 3 + 0.2 * 3 / 4 + 0.2 * 4 / 5 + 0.2 * 5 / 7)
    # unknown positive on -score: thresholds -.3 -.4 -.5 -.6 -.7 -.8 -.9:
    # (tp, fp) = (1,0) (1,1) (2,1) (2,2) (2,3) (3,4) (3,5)
    assert m["aupr_out"] == pytest.approx(1 / 3 * 1 + 1 / 3 * 2 / 3 + 1 / 3 * 3 / 7)
    assert m["hm"] == pytest.approx(2 * m["pacc"] * m["auroc"] / (m["pacc"] + m["auroc"]))
    assert (m["num_known_samples"], m["num_unknown_samples"]) == (5, 3)


def test_open_set_metrics_hand_computed():
    m = open_set_metrics(LABELS, PREDS, SCORES, num_known=2, threshold=0.65)
    # accepted & correct: class 0 -> sample 0 (0.9) yes, sample 1 wrong: 1/2; class 1 -> .8 yes, .7 yes, .6 rejected: 2/3
    assert m["known_acc"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert m["unknown_recall"] == pytest.approx(2 / 3)  # .5 and .3 rejected, .8 accepted
    assert m["h_score"] == pytest.approx(28 / 45)  # 2 (7/12)(2/3) / (7/12 + 2/3), by hand


def test_degenerate_cases_give_none_not_crash():
    no_unknown = compute_metrics([0, 1, 1], [0, 1, 0], [0.5, 0.6, 0.7], num_known=2)
    assert no_unknown["auroc"] is None and no_unknown["fpr95"] is None and no_unknown["hm"] is None
    assert no_unknown["aupr_in"] is None and no_unknown["aupr_out"] is None
    assert no_unknown["pacc"] == pytest.approx((1 + 0.5) / 2)
    only_unknown = compute_metrics([-1, 5], [0, 1], [0.5, 0.6], num_known=2)
    assert only_unknown["gacc"] is None and only_unknown["pacc"] is None and only_unknown["auroc"] is None
    # a known class absent from the labels is left out of PACC
    assert compute_metrics([0, 0, 3], [0, 1, 0], [0.9, 0.8, 0.1], num_known=3)["pacc"] == pytest.approx(0.5)
    assert harmonic_mean(0.0, 0.0) == 0.0 and harmonic_mean(None, 0.3) is None
    assert open_set_metrics([0, 1], [0, 1], [0.1, 0.9], 2, 0.5)["unknown_recall"] is None


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="length"):
        compute_metrics([0, 1], [0], [0.1, 0.2], 2)
    with pytest.raises(ValueError, match="NaN"):
        compute_metrics([0, 1], [0, 1], [np.nan, 0.2], 2)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 20)), min_size=2, max_size=60))
def test_ranking_metrics_match_sklearn(pairs):
    y = np.array([p for p, _ in pairs])
    s = np.array([v / 20 for _, v in pairs])  # coarse grid: many ties
    if y.all() or not y.any():
        assert auroc(y, s) is None and average_precision(y, s) is None and fpr_at_tpr(y, s) is None
        return
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    assert fpr_at_tpr(y, s, 0.95) == pytest.approx(fpr[np.searchsorted(tpr, 0.95)], abs=1e-12)
    assert fpr_at_tpr(y, s, 0.5) == pytest.approx(fpr[np.searchsorted(tpr, 0.5)], abs=1e-12)
