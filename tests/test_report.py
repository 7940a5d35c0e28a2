import json
import shutil

import numpy as np
import pytest
from PIL import Image

from helpers import fit_args, make_folder, read_csv, run_cli
from ueo.cli import main
from ueo.outputs import runfiles as report
from ueo.outputs import tables


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

    for name, aspect in (("roc.png", 1.0), ("scores.png", 6 / 3.5), ("confusion.png", 1.0)):
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG" and image.width >= 300
            assert abs(image.width / image.height - aspect) < 0.35, name  # the figure's shape, labels included
            assert len(image.convert("RGB").getcolors(maxcolors=1 << 20)) > 20, name  # drawn, not blank


def test_paired_difference_by_hand():
    from ueo.outputs.tables import paired_difference

    # differences 0.1, 0.2, 0.0: mean 0.1, sample std 0.1, standard error 0.1 / sqrt(3) = 0.0577
    gap = paired_difference([0.5, 0.7, 0.6], [0.4, 0.5, 0.6])
    assert gap["mean"] == pytest.approx(0.1) and gap["se"] == pytest.approx(0.1 / 3**0.5) and gap["n"] == 3
    assert gap["differs"] is False  # 0.1 < 2 x 0.0577
    gap = paired_difference([2.0, 2.1, 1.9], [1.0, 1.0, 1.0])  # differences 1.0, 1.1, 0.9: se 0.0577
    assert gap["mean"] == pytest.approx(1.0) and gap["differs"] is True
    assert paired_difference([0.3], [0.1])["differs"] is None
    with pytest.raises(ValueError, match="as many"):
        paired_difference([1.0, 2.0], [1.0])


def test_report_groups_by_what_defines_a_run_and_says_what_it_left_out(tmp_path, capsys):
    def write(folder, seed, model, pacc, adapted=True):
        folder.mkdir(parents=True)
        metrics = {"pacc": pacc, "auroc": 0.8, "hm": 0.7, "gacc": pacc, "fpr95": 0.5, "aupr_in": 0.5, "aupr_out": 0.5}
        (folder / "metrics.json").write_text(
            json.dumps(
                {
                    "run": {
                        "benchmark": "office31",
                        "domain": "amazon",
                        "scenario": "opda",
                        "method": "ueo",
                        "seed": seed,
                        "model": model,
                        "pretrained": "openai",
                    },
                    "adapted": metrics if adapted else dict.fromkeys(metrics),
                }
            )
        )

    write(tmp_path / "a", 1, "ViT-B-16", 0.6)
    write(tmp_path / "b", 2, "ViT-B-16", 0.7)
    write(tmp_path / "c", 1, "RN50", 0.5)
    write(tmp_path / "d", 1, "RN50", 0.5, adapted=False)
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "metrics.json").write_text("{damaged")
    code, out, err = run_cli(capsys, ["report", str(tmp_path), "--out", str(tmp_path / "t.md")])
    assert code == 0
    assert "| office31 | amazon | opda | ueo | 2 | 65.0 ± 5.0 |" in out  # the two ViT-B-16 seeds
    assert "| office31 | amazon | opda | ueo | 1 | 50.0 | 80.0 |" in out  # RN50 alone: no "± 0.0"
    assert "ViT-B-16 (openai)" in out and "RN50 (openai)" in out and "3 runs" in out
    assert f"left out: {tmp_path / 'd' / 'metrics.json'} (no metrics" in err
    assert f"left out: {tmp_path / 'e' / 'metrics.json'} (not a readable metrics.json" in err


def test_report_counts_each_run_once_and_tells_different_data_apart(tmp_path, capsys, tiny_vit_weights):
    """The same folder twice, overlapping folders and a backup copy are one run; Office-31's own layout
    (amazon/images, webcam/images) gives two rows, not one "images" row averaged as seeds."""
    runs = tmp_path / "runs"
    for domain, seed in (("amazon", 0), ("webcam", 1)):
        data = make_folder(tmp_path / "office31" / domain / "images", seed=seed, ext="bmp")
        out = runs / domain
        assert main(fit_args(tiny_vit_weights, data, out, "--test", str(data), epochs="1", lr="0.05")) == 0
    shutil.copytree(runs / "amazon", tmp_path / "backup" / "amazon")
    code, out, err = run_cli(
        capsys,
        [
            "report",
            str(runs),
            str(runs),
            str(runs / "amazon"),
            str(tmp_path / "backup"),
            "--out",
            str(tmp_path / "t.md"),
        ],
    )
    assert code == 0 and "2 runs" in out and "the same run as" in err
    rows = read_csv(tmp_path / "t.csv")
    assert sorted(r["domain"] for r in rows) == ["amazon/images", "webcam/images"] and {r["runs"] for r in rows} == {
        "1"
    }


def test_bench_runs_a_repeated_seed_once(tmp_path, capsys, tiny_vit_weights):
    root = tmp_path / "office31"
    for i, name in enumerate(["back_pack", "bike", "bike_helmet"]):
        make_folder(root / "amazon" / "images", classes=(name,), seed=i, ext="bmp")
    args = ["bench", "--benchmark", "office31", "--root", str(root), "--domains", "amazon", "--scenarios", "opda"]
    args += ["--methods", "zeroshot", "--seeds", "1", "1", "--model", "ueo-tiny-vit", "--pretrained", tiny_vit_weights]
    code, _, err = run_cli(capsys, [*args, "--device", "cpu", "--out", str(tmp_path / "bench"), "--quiet"])
    assert code == 0 and "--seeds names 1 more than once" in err
    assert "| office31 | amazon | opda | zeroshot | 1 |" in (tmp_path / "bench" / "table.md").read_text()


def test_report_does_not_replace_an_html_file_that_is_not_its_table(bmp_run, tmp_path, capsys):
    _, run_dir = bmp_run
    page = run_dir / "report.html"
    before = page.read_bytes()
    code, _, err = run_cli(capsys, ["report", str(run_dir), "--out", str(run_dir / "report.md")])
    assert code == 2 and "report.html exists and is not a table" in err and page.read_bytes() == before


@pytest.mark.parametrize(
    "damage",
    [{"adapted": {"pacc": "high"}}, {"threshold": [0.1]}, [1, 2, 3], {"adapted": {"pacc": 0.5}, "run": "x"}],
)
def test_report_leaves_out_damaged_metrics_with_a_reason(bmp_run, tmp_path, capsys, damage):
    _, run_dir = bmp_run
    copy = shutil.copytree(run_dir, tmp_path / "runs" / "damaged")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    record = {**metrics, **damage} if isinstance(damage, dict) else damage
    (copy / "metrics.json").write_text(json.dumps(record))
    code, _, err = run_cli(capsys, ["report", str(run_dir), str(copy), "--out", str(tmp_path / "t.md")])
    assert code == 0 and "damaged" in err
    code, _, err = run_cli(capsys, ["report", "--html", str(copy)])
    assert code == 2 and "damaged" in err
