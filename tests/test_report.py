import json

import numpy as np
import pytest

from ueo import report, tables


def write_run(folder, method, seed, pacc, auroc):
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(
        json.dumps(
            {
                "run": {
                    "benchmark": "office31",
                    "domain": "amazon",
                    "scenario": "opda",
                    "method": method,
                    "seed": seed,
                },
                "adapted": {
                    "pacc": pacc,
                    "auroc": auroc,
                    "hm": 2 * pacc * auroc / (pacc + auroc),
                    "gacc": pacc,
                    "fpr95": None,
                    "aupr_in": 0.5,
                    "aupr_out": 0.5,
                },
            }
        )
    )


def test_table_mean_and_std_over_seeds(tmp_path):
    write_run(tmp_path / "a", "ueo", 1, 0.60, 0.80)
    write_run(tmp_path / "b", "ueo", 2, 0.70, 0.90)
    write_run(tmp_path / "c", "zeroshot", 1, 0.50, 0.70)
    rows, left_out = tables.collect([tmp_path])
    assert left_out == []
    table = tables.summarise(rows)
    ueo_row = next(r for r in table if r["method"] == "ueo")
    assert ueo_row["runs"] == 2
    assert ueo_row["pacc"] == pytest.approx(65.0) and ueo_row["pacc_std"] == pytest.approx(5.0)
    assert ueo_row["auroc"] == pytest.approx(85.0) and ueo_row["fpr95"] is None
    markdown = tables.to_markdown(table)
    assert "| office31 | amazon | opda | ueo | 2 | 65.0 ± 5.0 | 85.0 ± 5.0 |" in markdown
    header, _, *lines = markdown.splitlines()
    columns = [c.strip() for c in header.strip("|").split("|")]
    row = next(line for line in lines if "| ueo |" in line)
    cells = dict(zip(columns, (c.strip() for c in row.strip("|").split("|"))))
    assert cells["FPR95"] == "-" and cells["PACC"] == "65.0 ± 5.0"  # fpr95 undefined in both runs -> "-"


def test_plots_are_written(tmp_path):
    labels = np.array([0, 1, 2, 2, 0, 1])
    scores = np.array([0.9, 0.8, 0.3, 0.5, 0.7, 0.4])
    report.plot_roc(labels, scores, 2, tmp_path / "roc.png")
    report.plot_scores(labels, scores, 2, 0.45, tmp_path / "scores.png")
    report.plot_confusion(labels, np.array([0, 1, 0, 1, 1, 1]), ["a", "b"], tmp_path / "confusion.png")
    from PIL import Image

    for name, aspect in (("roc.png", 1.0), ("scores.png", 6 / 3.5), ("confusion.png", 1.0)):
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG" and image.width >= 300
            assert abs(image.width / image.height - aspect) < 0.35, name  # the figure's shape, labels included
            assert len(image.convert("RGB").getcolors(maxcolors=1 << 20)) > 20, name  # drawn, not blank


def test_paired_difference_by_hand():
    from ueo.tables import paired_difference

    # differences 0.1, 0.2, 0.0: mean 0.1, sample std 0.1, standard error 0.1 / sqrt(3) = 0.0577
    gap = paired_difference([0.5, 0.7, 0.6], [0.4, 0.5, 0.6])
    assert gap["mean"] == pytest.approx(0.1) and gap["se"] == pytest.approx(0.1 / 3**0.5) and gap["n"] == 3
    assert gap["differs"] is False  # 0.1 < 2 x 0.0577
    gap = paired_difference([2.0, 2.1, 1.9], [1.0, 1.0, 1.0])  # differences 1.0, 1.1, 0.9: se 0.0577
    assert gap["mean"] == pytest.approx(1.0) and gap["differs"] is True
    assert paired_difference([0.3], [0.1])["differs"] is None
    with pytest.raises(ValueError, match="as many"):
        paired_difference([1.0, 2.0], [1.0])
