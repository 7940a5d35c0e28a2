"""Bad input never ends in a traceback or a lost result (issue: robustness)."""

import io
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import fit_args, paused_after_first_checkpoint, read_csv
from ueo import AdaptedState
from ueo.cli import main
from ueo.data.folders import read_folder
from ueo.images.reading import ImageFiles, check_images


@pytest.fixture
def weights(tiny_vit_weights):
    return tiny_vit_weights


def good_images(folder, n=4):
    rng = np.random.default_rng(1)
    for cls in ("cat", "dog"):
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (24, 30, 3), dtype=np.uint8)).save(folder / cls / f"{i}.jpg")


def make_zoo(folder):
    """One file of each awkward kind, all in class 'cat'."""
    cat = folder / "cat"
    cat.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(buffer, "JPEG")
    (cat / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (cat / "empty.jpg").write_bytes(b"")
    (cat / "text.jpg").write_text("this is not an image")
    Image.new("RGBA", (10, 10), (0, 0, 255, 0)).save(cat / "alpha.png")
    Image.new("P", (10, 10), 5).save(cat / "palette.png")
    Image.fromarray(np.full((10, 10), 30000, dtype=np.uint16)).save(cat / "sixteen.png")
    Image.new("L", (10, 10), 77).save(cat / "grey.png")
    Image.new("CMYK", (10, 10), (0, 255, 255, 0)).save(cat / "cmyk.jpg")
    rotated = Image.new("RGB", (20, 10), (0, 200, 0))
    exif = rotated.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees
    rotated.save(cat / "rotated.jpg", exif=exif)
    Image.new("RGB", (300, 300), (1, 2, 3)).save(cat / "huge.png")  # "absurd" once the limit is lowered


def test_awkward_images_are_converted_or_skipped(tmp_path, monkeypatch):
    make_zoo(tmp_path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200 * 200)
    images = read_folder(tmp_path, ["cat"])
    warnings = []
    kept, skipped = check_images(images, warn=warnings.append)
    assert sorted(os.path.basename(r["path"]) for r in skipped) == [
        "empty.jpg",
        "huge.png",
        "text.jpg",
        "truncated.jpg",
    ]
    assert len(warnings) == 4 and all(w.startswith("warning: skipping") for w in warnings)
    loaded = {p.name: ImageFiles(kept)[i][0] for i, p in enumerate(kept.paths)}
    assert set(loaded) == {"alpha.png", "palette.png", "sixteen.png", "grey.png", "cmyk.jpg", "rotated.jpg"}
    assert all(im.mode == "RGB" for im in loaded.values())
    assert loaded["rotated.jpg"].size == (10, 20)  # EXIF orientation applied
    assert loaded["alpha.png"].getpixel((5, 5)) == (255, 255, 255)  # transparent over white
    assert loaded["grey.png"].getpixel((0, 0)) == (77, 77, 77)
    assert loaded["sixteen.png"].getpixel((0, 0))[0] == 30000 // 256
    red, green, blue = loaded["cmyk.jpg"].getpixel((5, 5))
    assert red > 200 and green < 60 and blue < 60


def test_fit_skips_bad_files_and_strict_stops(tmp_path, weights, capsys, monkeypatch):
    make_zoo(tmp_path / "data")
    good_images(tmp_path / "data")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200 * 200)
    assert main(fit_args(weights, tmp_path / "data", tmp_path / "run")) == 0
    rows = read_csv(tmp_path / "run" / "skipped.csv")
    assert len(rows) == 4 and all(r["set"] == "adaptation" and r["reason"] for r in rows)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["num_skipped"] == 4 and metrics["num_adaptation_images"] == 14
    capsys.readouterr()
    assert main(fit_args(weights, tmp_path / "data", tmp_path / "strict", "--strict")) == 2
    assert "unreadable image" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content, message",
    [
        (b"cat\ncat\n", "duplicates"),
        (b"cat\n\ndog\n", "empty line"),
        (b"cat\n\xff\xfe\n", "not UTF-8"),
        (("cat\n" + " ".join(["long"] * 90) + "\n").encode(), "does not fit"),
    ],
)
def test_bad_class_lists_exit_2_before_compute(tmp_path, weights, capsys, content, message):
    good_images(tmp_path / "data")
    (tmp_path / "classes.txt").write_bytes(content)
    args = fit_args(weights, tmp_path / "data", tmp_path / "run")
    args[args.index("cat,dog")] = str(tmp_path / "classes.txt")
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / "adapted.safetensors").exists()


def test_bad_data_exit_2_naming_the_problem(tmp_path, weights, capsys):
    (tmp_path / "empty").mkdir()
    assert main(fit_args(weights, tmp_path / "empty", tmp_path / "r1")) == 2
    assert "No image" in capsys.readouterr().err
    (tmp_path / "list.txt").write_text("cat/0.jpg 0\n../escape.jpg 1\n")
    good_images(tmp_path)
    args = fit_args(weights, tmp_path / "list.txt", tmp_path / "r3")
    assert main(args) == 2
    assert "list.txt:2: path '../escape.jpg' escapes the root" in capsys.readouterr().err
    (tmp_path / "list.txt").write_text("cat/0.jpg 0\ncat/missing.jpg 1\n")
    assert main(fit_args(weights, tmp_path / "list.txt", tmp_path / "r4")) == 2
    assert "list.txt:2: file not found" in capsys.readouterr().err
    (tmp_path / "list.txt").write_text("cat/0.jpg 5\ncat/1.jpg 7\n")  # labels >= K: only unknown classes
    assert main(fit_args(weights, tmp_path / "list.txt", tmp_path / "r5")) == 2
    assert "no image of any known class" in capsys.readouterr().err


def test_domainnet_list_label_out_of_range(tmp_path, capsys):
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "sketch_train.txt").write_text("sketch/a/1.jpg 0\nsketch/a/2.jpg 345\n")
    (lists / "sketch_test.txt").write_text("sketch/a/1.jpg 0\n")
    assert (
        main(
            [
                "splits",
                "--benchmark",
                "domainnet",
                "--domain",
                "sketch",
                "--root",
                str(tmp_path),
                "--lists",
                str(lists),
                "--out",
                str(tmp_path / "o"),
                "--no-check",
            ]
        )
        == 2
    )
    assert "sketch_train.txt:2: label 345 is out of range (0..344" in capsys.readouterr().err


def test_non_finite_loss_exits_3_and_keeps_a_state(tmp_path, weights, capsys):
    good_images(tmp_path / "data")
    code = main(
        fit_args(
            weights,
            tmp_path / "data",
            tmp_path / "run",
            "--lr-prompt",
            "1e38",
            "--lr-norm",
            "1e38",
            "--epochs",
            "3",
            "--method",
            "entropy",
        )
    )
    err = capsys.readouterr().err
    assert code == 3 and "at step" in err
    state = AdaptedState.load(tmp_path / "run" / "adapted.safetensors")
    assert all(torch.isfinite(v).all() for v in state.tensors.values())


def test_tampered_state_is_refused(tmp_path, weights, capsys):
    good_images(tmp_path / "data")
    assert main(fit_args(weights, tmp_path / "data", tmp_path / "run")) == 0
    state = AdaptedState.load(tmp_path / "run" / "adapted.safetensors")
    state.tensors.pop(next(k for k in state.tensors if k.startswith("visual.")))
    state.save(tmp_path / "tampered.safetensors")
    assert (
        main(
            [
                "eval",
                "--adapted",
                str(tmp_path / "tampered.safetensors"),
                "--test",
                str(tmp_path / "data"),
                "--out",
                str(tmp_path / "e"),
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    assert "does not fit tune='both', rule='bn-ln'" in capsys.readouterr().err
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 20)
    assert (
        main(
            [
                "predict",
                "--adapted",
                str(tmp_path / "junk.safetensors"),
                "--data",
                str(tmp_path / "data"),
                "--out",
                str(tmp_path / "p"),
                "--device",
                "cpu",
            ]
        )
        == 2
    )


@pytest.mark.slow
def test_sigint_checkpoint_and_resume_equal_an_uninterrupted_run(tmp_path, weights):
    good_images(tmp_path / "data", n=12)
    base = fit_args(weights, tmp_path / "data", tmp_path / "full")
    base[base.index("--epochs") + 1] = "25"
    assert main(base) == 0

    run_dir = tmp_path / "interrupted"
    args = [a if a != str(tmp_path / "full") else str(run_dir) for a in base]
    # a hook after the first checkpoint: the run says so and waits, the test stops it there (no polling)
    hook = paused_after_first_checkpoint("sys.stdin.readline()")
    process = subprocess.Popen(
        [sys.executable, "-c", hook, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert any(line.strip() == b"saved" for line in process.stdout)  # (after the run's own lines)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(input=b"\n", timeout=120)
    assert process.returncode == 130, err.decode()[-2000:]
    assert b"ueo fit --resume" in err and not (run_dir / "metrics.json").exists()

    assert main(["fit", "--resume", str(run_dir), "--quiet"]) == 0
    full = AdaptedState.load(tmp_path / "full" / "adapted.safetensors").tensors
    resumed = AdaptedState.load(run_dir / "adapted.safetensors").tensors
    for name, value in full.items():
        assert torch.allclose(resumed[name], value, atol=1e-6), name
    full_history = read_csv(tmp_path / "full" / "history.csv")
    resumed_history = read_csv(run_dir / "history.csv")
    assert [float(r["loss"]) for r in resumed_history] == pytest.approx(
        [float(r["loss"]) for r in full_history], abs=1e-6
    )
