"""Output folders: taken and locked before any work, never mixed with another run's, never inside the
inputs, cleared only of a run's own files; what is written is written whole, whatever the names and disks."""

import errno
import fcntl
import json
import os
import shutil
import subprocess
import sys

import pytest
from PIL import Image

import ueo.images.builder as builder_module
from helpers import fit_args, make_folder, quick_fit_args, run_cli, unfinish
from ueo.cli.outputs import lock_folder


def test_two_runs_into_one_folder_are_refused(labeled_data, tiny_vit_weights, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    lock_folder(out)  # another run holds it
    code, _, err = run_cli(capsys, quick_fit_args(tiny_vit_weights, labeled_data, out, "--overwrite"))
    assert code == 2 and "in use by another ueo run" in err


def test_overwrite_clears_the_outputs_of_the_earlier_run(labeled_run, labeled_data, tiny_vit_weights, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(labeled_run, out)
    (out / "notes.txt").write_text("mine")
    assert (out / "roc.png").exists()
    code, _, _ = run_cli(
        capsys, quick_fit_args(tiny_vit_weights, labeled_data / "cat", out, "--overwrite", "--epochs", "1")
    )
    assert code == 0
    assert not (out / "roc.png").exists() and not (out / "confusion.png").exists()  # unlabeled now: no plots
    assert (out / "notes.txt").read_text() == "mine"  # not ueo's: kept


def test_outputs_inside_the_inputs_and_other_folder_mistakes(
    labeled_data, labeled_run, tiny_vit_weights, tmp_path, capsys
):
    code, _, err = run_cli(capsys, quick_fit_args(tiny_vit_weights, labeled_data, labeled_data / "runs" / "x"))
    assert code == 2 and "inside --data" in err and not (labeled_data / "runs").exists()
    (tmp_path / "file").write_text("x")
    code, _, err = run_cli(capsys, quick_fit_args(tiny_vit_weights, labeled_data, tmp_path / "file" / "out"))
    assert code == 2 and "file" in err
    code, _, err = run_cli(capsys, ["report", str(labeled_run), "--out", str(labeled_run / "history.md")])
    assert code == 2 and "not a table" in err and (labeled_run / "history.csv").read_text().startswith("step,")
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "x").write_text("x")
    code, _, err = run_cli(capsys, ["demo", "--out", str(tmp_path / "demo")])
    assert code == 2 and "--overwrite" in err
    code, _, err = run_cli(
        capsys,
        [
            "predict",
            "--adapted",
            str(labeled_run / "adapted.safetensors"),
            "--data",
            str(labeled_data),
            "--out",
            str(tmp_path / "demo"),
        ],
    )
    assert code == 2 and "--overwrite" in err and "--resume" not in err


def test_a_full_disk_while_writing_keeps_what_was_written(labeled_run, tmp_path, capsys, monkeypatch):
    import ueo.outputs.runfiles

    copy = tmp_path / "copy"
    shutil.copytree(labeled_run, copy)
    unfinish(copy)
    real = ueo.outputs.runfiles.write_text

    def full_disk(path, text):
        if str(path).endswith("metrics.json"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, text)

    monkeypatch.setattr(ueo.outputs.runfiles, "write_text", full_disk)
    code, _, err = run_cli(capsys, ["fit", "--resume", str(copy), "--quiet"])
    assert code == 2 and "No space left on device" in err and "metrics.json" in err and "--resume" in err
    assert (copy / "checkpoint.safetensors").exists() and (copy / "predictions.csv").exists()
    monkeypatch.setattr(ueo.outputs.runfiles, "write_text", real)
    code, _, _ = run_cli(capsys, ["fit", "--resume", str(copy), "--quiet"])
    assert (
        code == 0
        and json.loads((copy / "metrics.json").read_text())["adapted"]
        == json.loads((labeled_run / "metrics.json").read_text())["adapted"]
    )


def test_file_names_of_any_kind_are_written_as_they_are(labeled_run, tmp_path, capsys):
    folder = tmp_path / "odd"
    folder.mkdir()
    names = [b"\xff\xfe.jpg", b"sp ace.jpg", b"qu'ote\".jpg", b"<b>&amp;.jpg", "émoji😀.jpg".encode(), b"new\nline.jpg"]
    for i, name in enumerate(names):
        Image.new("RGB", (20, 20), (40 * i, 0, 0)).save(os.path.join(os.fsencode(folder), name), format="JPEG")
    code, _, _ = run_cli(
        capsys,
        [
            "predict",
            "--adapted",
            str(labeled_run / "adapted.safetensors"),
            "--data",
            str(folder),
            "--out",
            str(tmp_path / "p"),
            "--device",
            "cpu",
            "--quiet",
        ],
    )
    assert code == 0
    import csv

    with open(tmp_path / "p" / "predictions.csv", newline="", encoding="utf-8", errors="surrogateescape") as f:
        written = {os.fsencode(row["path"]) for row in csv.DictReader(f)}
    assert written == {os.path.join(os.fsencode(folder), name) for name in names}


def test_the_output_folder_is_taken_before_any_work(bmp_run, tmp_path, capsys, counted, tiny_vit_weights):
    data, _ = bmp_run
    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".ueo.lock", "a") as held:  # another ueo command holds the folder
        fcntl.flock(held, fcntl.LOCK_EX)
        code, _, err = run_cli(capsys, fit_args(tiny_vit_weights, data, out, classes="cat,dog"))
    assert code == 2 and "in use by another ueo run" in err and counted["n"] == 0


@pytest.mark.slow
def test_a_run_that_finishes_meanwhile_is_never_overwritten(bmp_run, tmp_path, capsys, monkeypatch, tiny_vit_weights):
    """A slow run takes the folder first; a second run into it, started while the first decodes, is
    refused at once, and the first run's outputs are its own."""
    data, _ = bmp_run
    copy = shutil.copytree(data, tmp_path / "data")
    out = tmp_path / "out"
    second = []
    real = builder_module.decode

    def decode(path, short_side):  # while the first run decodes, a second run starts into the same --out
        if not second:
            command = [sys.executable, "-m", "ueo", *fit_args(tiny_vit_weights, copy, out, classes="cat,dog")]
            done = subprocess.run(command, capture_output=True, text=True, timeout=300)
            second.append((done.returncode, done.stderr))
        return real(path, short_side)

    monkeypatch.setattr(builder_module, "decode", decode)
    code, _, _ = run_cli(capsys, fit_args(tiny_vit_weights, copy, out, classes="cat,dog"))
    assert code == 0 and second[0][0] == 2 and "in use by another ueo run" in second[0][1]
    assert json.loads((out / "metrics.json").read_text())["num_adaptation_images"] == 12


def test_a_refused_command_leaves_no_folder_behind(bmp_run, tmp_path, capsys):
    _, run_dir = bmp_run
    out = tmp_path / "new" / "place"
    code, _, err = run_cli(
        capsys,
        [
            "predict",
            "--adapted",
            str(run_dir / "adapted.safetensors"),
            "--data",
            str(tmp_path / "none"),
            "--out",
            str(out),
        ],
    )
    assert code == 2 and "none" in err and not out.exists()


@pytest.mark.slow
def test_class_names_with_dollars_and_many_classes_do_not_break_the_plots(tmp_path, capsys, tiny_vit_weights):
    names = ["a$$b", "c$d"] + [f"thing {i}" for i in range(250)]  # 252 classes: no K x K picture
    data = make_folder(tmp_path / "data", classes=("a$$b", "c$d"), n=3, ext="bmp")
    (tmp_path / "classes.txt").write_text("\n".join(names) + "\n")
    out = tmp_path / "run"
    code, _, err = run_cli(
        capsys, fit_args(tiny_vit_weights, data, out, "--test", str(data), classes=str(tmp_path / "classes.txt"))
    )
    assert code == 0, err
    assert not (out / "confusion.png").exists() and 'src="confusion.png"' not in (out / "report.html").read_text()
    few = tmp_path / "few"
    code, _, err = run_cli(capsys, fit_args(tiny_vit_weights, data, few, "--test", str(data), classes="a$$b,c$d"))
    assert code == 0 and Image.open(few / "confusion.png").size[0] > 100, err
