import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import ueo
from helpers import fit_args, make_folder, read_csv
from ueo import AdaptedState
from ueo.cli import main

pytestmark = pytest.mark.slow  # whole fits, exports and subprocess runs (`make test-quick` leaves them out)

TINY = ["--model", "ueo-tiny-vit", "--pretrained", "none", "--device", "cpu"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for c, name in enumerate(["cat", "Hot_Dog", "zebra"]):
        for i in range(5):
            pixels = rng.integers(0, 60, (40, 50, 3), dtype=np.uint8)
            pixels[:, :, c] += 150
            (root / name).mkdir(exist_ok=True)
            Image.fromarray(pixels).save(root / name / f"{i}.jpg")
    (root / "classes.txt").write_text("cat\nhot dog\nbird\n")
    return root


@pytest.fixture(scope="module")
def fitted(folder, tiny_vit_weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    config = out.parent / "config.yaml"
    config.write_text(yaml.safe_dump({"epochs": 5, "batch_size": 4, "lr_prompt": 0.05, "lr-norm": 0.05}))
    code = main(
        [
            "fit",
            "--model",
            "ueo-tiny-vit",
            "--pretrained",
            tiny_vit_weights,
            "--device",
            "cpu",
            "--data",
            str(folder),
            "--test",
            str(folder),
            "--classes",
            str(folder / "classes.txt"),
            "--config",
            str(config),
            "--epochs",
            "2",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    return out


def test_fit_writes_every_output(fitted):
    names = {p.name for p in fitted.iterdir()}
    assert {
        "adapted.safetensors",
        "metrics.json",
        "history.csv",
        "predictions.csv",
        "config.yaml",
        "roc.png",
        "scores.png",
        "confusion.png",
    } <= names
    config = yaml.safe_load((fitted / "config.yaml").read_text())
    assert config["epochs"] == 2 and config["batch_size"] == 4 and config["lr_norm"] == 0.05  # flag > YAML > default
    assert config["method"] == "ueo" and config["pretrained"].endswith("tiny.safetensors")
    metrics = json.loads((fitted / "metrics.json").read_text())
    assert metrics["zeroshot"]["epoch"] == 0 and metrics["adapted"]["epoch"] == 2
    assert metrics["threshold"]["rule"].startswith("otsu") and 0 < metrics["threshold"]["threshold"] < 1
    assert metrics["num_adaptation_images"] == 15 and metrics["predictions"]["open_set"]["h_score"] is not None
    history = read_csv(fitted / "history.csv")
    assert len(history) == 2 * 4 and history[0]["step"] == "1"
    rows = read_csv(fitted / "predictions.csv")
    assert len(rows) == 15 and set(rows[0]) == {
        "path",
        "label",
        "prediction",
        "score",
        "top1",
        "zeroshot_prediction",
        "zeroshot_score",
    }
    assert {r["label"] for r in rows} == {"cat", "hot dog", "zebra"}
    assert all(r["prediction"] in ("cat", "hot dog", "bird", "unknown") for r in rows)
    threshold = metrics["threshold"]["threshold"]
    assert all((r["prediction"] == "unknown") == (float(r["score"]) < threshold) for r in rows)
    state = AdaptedState.load(fitted / "adapted.safetensors")
    assert state.class_names == ["cat", "hot dog", "bird"] and state.model == "ueo-tiny-vit"
    assert (fitted / "adapted.safetensors").stat().st_size < 200_000


def test_eval_reproduces_fit_metrics(fitted, folder, tmp_path):
    assert (
        main(
            [
                "eval",
                "--adapted",
                str(fitted / "adapted.safetensors"),
                "--test",
                str(folder),
                "--out",
                str(tmp_path / "e"),
                "--device",
                "cpu",
                "--quiet",
            ]
        )
        == 0
    )
    got = json.loads((tmp_path / "e" / "metrics.json").read_text())["adapted"]
    want = json.loads((fitted / "metrics.json").read_text())["adapted"]
    for key in ("gacc", "pacc", "auroc", "fpr95"):
        assert got[key] == pytest.approx(want[key], abs=1e-6)


def test_predict_with_a_given_threshold(fitted, folder, tmp_path):
    assert (
        main(
            [
                "predict",
                "--adapted",
                str(fitted / "adapted.safetensors"),
                "--data",
                str(folder / "cat"),
                "--threshold",
                "0.9",
                "--out",
                str(tmp_path / "p"),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    rows = read_csv(tmp_path / "p" / "predictions.csv")
    assert len(rows) == 5 and all(r["prediction"] == "unknown" for r in rows)  # 3 classes: MCM < 0.9 here
    summary = json.loads((tmp_path / "p" / "metrics.json").read_text())
    stored = ueo.AdaptedState.load(fitted / "adapted.safetensors").threshold.zeroshot  # the fit's zero-shot cut
    assert summary["threshold"] == {"threshold": 0.9, "rule": "given", "source": "--threshold", "zeroshot": stored}
    assert summary["predictions"]["num_predicted_unknown"] == 5


def test_clear_errors_exit_2(fitted, folder, tmp_path, capsys):
    assert main(["fit", *TINY, "--data", str(folder), "--classes", "cat,cat", "--out", str(tmp_path / "x")]) == 2
    assert "duplicates" in capsys.readouterr().err
    assert main(["fit", *TINY, "--data", str(folder), "--classes", "cat", "--out", str(fitted)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (
        main(
            [
                "eval",
                "--adapted",
                str(fitted / "adapted.safetensors"),
                "--test",
                str(folder),
                "--model",
                "ueo-tiny-rn",
                "--out",
                str(tmp_path / "y"),
            ]
        )
        == 2
    )
    assert "made for model 'ueo-tiny-vit'" in capsys.readouterr().err
    assert (
        main(["fit", *TINY, "--data", str(tmp_path / "nothing"), "--classes", "cat", "--out", str(tmp_path / "z")]) == 2
    )
    assert "no such folder" in capsys.readouterr().err
    assert (
        main(
            [
                "fit",
                "--model",
                "ueo-tiny-vit",
                "--pretrained",
                "no-tag",
                "--data",
                str(folder),
                "--classes",
                "cat",
                "--out",
                str(tmp_path / "w"),
            ]
        )
        == 2
    )
    assert "known tag" in capsys.readouterr().err


def test_report_and_bench(folder, tmp_path, capsys):
    root = tmp_path / "office31"
    names = ["back_pack", "bike", "bike_helmet"]
    for i, name in enumerate(names):
        target = root / "amazon" / "images" / name
        target.mkdir(parents=True)
        for j in range(3):
            Image.new("RGB", (30, 30), (80 * i, 40, 200)).save(target / f"{j}.jpg")
    code = main(
        [
            "bench",
            "--benchmark",
            "office31",
            "--root",
            str(root),
            "--domains",
            "amazon",
            "--scenarios",
            "opda",
            "--methods",
            "zeroshot",
            "ueo",
            "--seeds",
            "1",
            "2",
            *TINY,
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--out",
            str(tmp_path / "bench"),
            "--quiet",
        ]
    )
    assert code == 0
    table = (tmp_path / "bench" / "table.md").read_text()
    assert "| office31 | amazon | opda | ueo | 2 |" in table and "| office31 | amazon | opda | zeroshot | 2 |" in table
    assert (tmp_path / "bench" / "table.csv").is_file()
    capsys.readouterr()
    assert main(["report", str(tmp_path / "bench"), "--out", str(tmp_path / "t.md")]) == 0
    assert "4 runs" in capsys.readouterr().out and (tmp_path / "t.csv").is_file()


def test_help_and_module_entry_point(capsys):
    for command in ("fit", "eval", "predict", "export", "splits", "report", "bench", "demo"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 50)" in text and "(default: ueo)" in text and "(default: auto)" in text
    done = subprocess.run([sys.executable, "-m", "ueo", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("ueo ")


def test_help_is_fast_and_shows_each_default_once(capsys):
    probe = (
        "import sys\nfrom ueo.cli import main\ntry:\n    main(['fit', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('torch loaded' if 'torch' in sys.modules else 'no torch')"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.stdout.strip().endswith("no torch"), done.stderr[-2000:]
    text = " ".join(done.stdout.split())
    assert "(default: cuda when available, else cpu)" in text and "(default: None) (default" not in text
    for line in done.stdout.splitlines():
        assert line.count("(default:") <= 1, line


def test_a_bug_is_reported_as_a_bug(monkeypatch, capsys):
    import ueo.cli.report

    def broken(args):
        raise KeyError("internal")

    monkeypatch.setattr(ueo.cli.report, "cmd_report", broken)
    assert main(["report", "anywhere"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError" in err and "This is a bug in ueo" in err


def test_random_weights_runs_are_reproducible(folder, tmp_path):
    args = [*TINY, "--data", str(folder), "--classes", "cat,hot dog", "--epochs", "1", "--batch-size", "8", "--quiet"]
    for name in ("a", "b"):
        assert main(["fit", *args, "--out", str(tmp_path / name)]) == 0
    assert main(["fit", *args, "--seed", "7", "--out", str(tmp_path / "c")]) == 0
    a, b, c = (AdaptedState.load(tmp_path / n / "adapted.safetensors").tensors for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["prompt.ctx"], c["prompt.ctx"])


def test_settings_under_their_earlier_names_are_still_read(tmp_path, tiny_vit_weights):
    """--weights (now --weight-refresh), rule 'official' (now 'bn-ln'), and both in a --config file."""
    data = make_folder(tmp_path / "data", classes=("cat", "dog"), n=3)
    args = fit_args(tiny_vit_weights, data, tmp_path / "flags", "--weights", "epoch", "--rule", "official")
    assert main([*args, "--no-report", "--no-discover"]) == 0
    config = yaml.safe_load((tmp_path / "flags" / "config.yaml").read_text())
    assert config["weight_refresh"] == "epoch" and "weights" not in config
    metrics = json.loads((tmp_path / "flags" / "metrics.json").read_text())
    assert metrics["tuning"]["rule"] == "bn-ln" and metrics["run"]["settings"]["weight_refresh"] == "epoch"
    (tmp_path / "old.yaml").write_text("weights: epoch\nrule: official\n")
    args = fit_args(tiny_vit_weights, data, tmp_path / "file", "--config", str(tmp_path / "old.yaml"))
    assert main([*args, "--no-report", "--no-discover"]) == 0
    assert yaml.safe_load((tmp_path / "file" / "config.yaml").read_text())["weight_refresh"] == "epoch"
    assert json.loads((tmp_path / "file" / "metrics.json").read_text())["tuning"]["rule"] == "bn-ln"


def test_the_run_configuration_records_the_decode_cache(folder, tiny_vit_weights, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    argv = [
        "fit",
        "--model",
        "ueo-tiny-vit",
        "--pretrained",
        tiny_vit_weights,
        "--device",
        "cpu",
        "--data",
        str(folder),
    ]
    argv += ["--classes", "cat,dog", "--epochs", "0", "--out", str(out), "--quiet", "--no-discover", "--no-report"]
    assert main([*argv, "--cache-dir", "my-cache", "--cache-format", "raw"]) == 0
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["cache_dir"] == str(tmp_path / "my-cache") and config["cache_format"] == "raw"
    assert config["no_cache"] is False and config["cache_max_size"] is None
    assert list((tmp_path / "my-cache").rglob("*.shard"))
