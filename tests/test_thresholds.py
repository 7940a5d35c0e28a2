import itertools
import json
import os
import shutil

import numpy as np
import pytest

from helpers import quick_fit_args, read_csv, run_cli
from ueo import AdaptedState
from ueo.cli import main
from ueo.errors import ConfigError, DataError
from ueo.model.thresholds import decide, otsu_threshold, parse_threshold, threshold_at_tpr


def brute_force_otsu(values):
    values = np.sort(np.asarray(values, dtype=float))
    best, best_t = -1, None
    for cut in range(1, len(values)):
        if values[cut] == values[cut - 1]:
            continue
        low, high = values[:cut], values[cut:]
        w0, w1 = len(low) / len(values), len(high) / len(values)
        between = w0 * w1 * (low.mean() - high.mean()) ** 2
        if between > best:
            best, best_t = between, (values[cut - 1] + values[cut]) / 2
    return best_t


def test_otsu_hand_computed():
    assert otsu_threshold([0.1, 0.1, 0.9, 0.9]) == pytest.approx(0.5)
    # {0,1,2} vs {10}: between-variance 3/16*100 = 18.75 beats {0,1} vs {2,10}: 1/4*(0.5-6)^2 = 7.56
    assert otsu_threshold([0, 1, 2, 10]) == pytest.approx(6.0)
    assert otsu_threshold([0.3, 0.3]) == pytest.approx(0.3)
    with pytest.raises(DataError, match="No scores"):
        otsu_threshold([])


def test_otsu_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(50):
        values = np.round(
            np.r_[rng.normal(0.2, 0.05, rng.integers(1, 30)), rng.normal(0.6, 0.1, rng.integers(1, 30))], 2
        )
        if len(np.unique(values)) > 1:
            assert otsu_threshold(values) == pytest.approx(brute_force_otsu(values))


def test_threshold_at_tpr():
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05]
    assert threshold_at_tpr(scores, 0.95) == pytest.approx(0.05)  # needs all 10
    assert threshold_at_tpr(scores, 0.9) == pytest.approx(0.1)  # 9 of 10
    assert threshold_at_tpr(scores, 0.5) == pytest.approx(0.5)
    for tpr, k in itertools.product([0.1, 0.33, 0.95], [3, 7]):
        t = threshold_at_tpr(scores[:k], tpr)
        assert np.mean(np.array(scores[:k]) >= t) >= tpr


def test_parse_and_decide():
    assert parse_threshold("auto") == "auto" and parse_threshold("FITTED") == "fitted"
    assert parse_threshold("0.25") == 0.25
    with pytest.raises(ConfigError, match="auto"):
        parse_threshold("high")
    assert decide([0, 1, 1], [0.9, 0.2, 0.5], ["cat", "dog"], 0.5) == ["cat", "unknown", "dog"]


def test_one_policy_chooses_every_threshold():
    """choose_threshold is the one place a threshold is decided; its record is what states and metrics keep."""
    from ueo.model.thresholds import Threshold, choose_threshold

    scores = [0.1, 0.1, 0.9, 0.9]
    auto = choose_threshold("auto", scores=scores, source="four images")
    assert auto == Threshold(0.5, "otsu", "four images")  # Otsu by hand: the midpoint of 0.1 and 0.9
    assert auto.record() == {"threshold": 0.5, "rule": "otsu", "source": "four images"}
    assert Threshold.from_record(auto.record()) == auto and Threshold.from_record(None) is None
    fitted = choose_threshold("fitted", scores=[0.7, 0.8], fitted=auto)
    assert (fitted.value, fitted.rule) == (0.5, "otsu") and "stored in the adapted state" in fitted.source
    said = []
    older = choose_threshold("fitted", scores=scores, warn=said.append)  # a state without one: Otsu, and a warning
    assert older.value == 0.5 and "no fitted threshold" in said[0]
    given = choose_threshold("0.3", num_known=4, warn=said.append)
    assert given == Threshold(0.3, "given", "--threshold") and len(said) == 1
    choose_threshold(0.2, num_known=5, warn=said.append)  # at 1/K: accepts everything, said
    assert "1/K" in said[-1]
    tpr = choose_threshold(known_scores=[0.9, 0.8, 0.7, 0.6], tpr=0.75, source="4 known images")
    assert tpr == Threshold(0.7, "tpr", "accepts 0.75 of 4 known images")  # 3 of 4 accepted at >= 0.7


@pytest.mark.slow
def test_the_fitted_threshold_is_stored_and_used_for_every_image(labeled_run, labeled_data, tmp_path, capsys):
    state = AdaptedState.load(labeled_run / "adapted.safetensors")
    metrics = json.loads((labeled_run / "metrics.json").read_text())
    stored = state.threshold.record()  # one record: the state's is metrics.json's, the zero-shot cut included
    assert stored == metrics["threshold"] and stored["rule"] == "otsu"
    adapted = str(labeled_run / "adapted.safetensors")
    code, out, _ = run_cli(
        capsys,
        [
            "predict",
            "--adapted",
            adapted,
            "--data",
            str(labeled_data),
            "--out",
            str(tmp_path / "all"),
            "--device",
            "cpu",
            "--quiet",
        ],
    )
    assert code == 0 and "stored in the adapted state" in out
    together = {r["path"]: r["prediction"] for r in read_csv(tmp_path / "all" / "predictions.csv")}
    for path in list(together)[:3]:  # each image alone gets the decision it gets among all the others
        single = tmp_path / f"one{len(os.listdir(tmp_path))}"
        (single / "in").mkdir(parents=True)
        shutil.copy(path, single / "in" / os.path.basename(path))
        assert (
            main(
                [
                    "predict",
                    "--adapted",
                    adapted,
                    "--data",
                    str(single / "in"),
                    "--out",
                    str(single / "out"),
                    "--device",
                    "cpu",
                    "--quiet",
                ]
            )
            == 0
        )
        assert read_csv(single / "out" / "predictions.csv")[0]["prediction"] == together[path]
    # eval on the fit's own test set flags exactly what fit flagged
    code, _, _ = run_cli(
        capsys,
        [
            "eval",
            "--adapted",
            adapted,
            "--test",
            str(labeled_data),
            "--out",
            str(tmp_path / "e"),
            "--device",
            "cpu",
            "--quiet",
        ],
    )
    evaluated = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert code == 0 and evaluated["threshold"]["threshold"] == metrics["threshold"]["threshold"]
    assert evaluated["predictions"]["num_predicted_unknown"] == metrics["predictions"]["num_predicted_unknown"]


@pytest.mark.parametrize("value, expected", [("0.2", "at or below 1/K"), ("1.5", "above 1")])
def test_a_threshold_that_decides_nothing_is_warned_about(labeled_run, labeled_data, tmp_path, capsys, value, expected):
    code, _, err = run_cli(
        capsys,
        [
            "predict",
            "--adapted",
            str(labeled_run / "adapted.safetensors"),
            "--data",
            str(labeled_data),
            "--threshold",
            value,
            "--out",
            str(tmp_path / "p"),
            "--device",
            "cpu",
            "--quiet",
        ],
    )
    assert code == 0 and expected in err


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "high"])
def test_non_numbers_as_thresholds_are_refused(labeled_run, labeled_data, tiny_vit_weights, tmp_path, capsys, value):
    code, _, err = run_cli(
        capsys,
        [
            "predict",
            "--adapted",
            str(labeled_run / "adapted.safetensors"),
            "--data",
            str(labeled_data),
            f"--threshold={value}",
            "--out",
            str(tmp_path / "p"),
            "--device",
            "cpu",
        ],
    )
    assert code == 2 and "--threshold" in err and not (tmp_path / "p").exists()
    code, _, err = run_cli(
        capsys, quick_fit_args(tiny_vit_weights, labeled_data, tmp_path / "f", f"--threshold={value}")
    )
    assert code == 2 and not (tmp_path / "f").exists()
