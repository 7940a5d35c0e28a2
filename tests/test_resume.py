"""A run always finishes as itself: `ueo fit --resume` completes an interrupted run with the outputs an
uninterrupted one writes, refuses other data or damaged checkpoints and changes nothing when it refuses;
a diverged run leaves a state that decides like a finished one."""

import errno
import json
import shutil

import pytest
import torch
import yaml
from PIL import Image

from helpers import fit_args, make_folder, quick_fit_args, read_csv, run_cli, unfinish
from ueo import load_checkpoint, save_checkpoint
from ueo.cli import main


def test_a_run_whose_outputs_were_not_written_resumes_to_the_same_outputs(labeled_run, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(labeled_run, copy)
    unfinish(copy)
    code, out, _ = run_cli(capsys, ["fit", "--resume", str(copy), "--quiet"])
    assert code == 0, out
    before, after = (json.loads((d / "metrics.json").read_text()) for d in (labeled_run, copy))
    assert after["adapted"] == before["adapted"] and after["threshold"] == before["threshold"]
    assert read_csv(copy / "predictions.csv") == read_csv(labeled_run / "predictions.csv")
    code, out, _ = run_cli(capsys, ["fit", "--resume", str(copy)])
    assert code == 0 and "finished run" in out


def test_a_refused_resume_changes_nothing(labeled_run, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(labeled_run, copy)
    unfinish(copy)
    config = (copy / "config.yaml").read_bytes()
    for extra in (["--epochs", "3"], ["--out", str(tmp_path / "other")], ["--data", str(tmp_path)]):
        code, _, err = run_cli(capsys, ["fit", "--resume", str(copy), *extra])
        assert code == 2 and "cannot be given with it" in err
        assert (copy / "config.yaml").read_bytes() == config
    assert not (tmp_path / "other").exists()


def test_resume_refuses_other_data_and_works_from_any_folder(
    labeled_data, tiny_vit_weights, tmp_path, capsys, monkeypatch
):
    local = make_folder(tmp_path / "work" / "photos")
    monkeypatch.chdir(tmp_path / "work")
    assert main(quick_fit_args(tiny_vit_weights, "photos", "run")) == 0  # relative paths
    config = yaml.safe_load((tmp_path / "work" / "run" / "config.yaml").read_text())
    assert config["data"] == str(local) and config["out"] == str(tmp_path / "work" / "run")
    unfinish(tmp_path / "work" / "run")
    monkeypatch.chdir(tmp_path)  # resumable from elsewhere
    code, _, err = run_cli(capsys, ["fit", "--resume", "work/run", "--quiet"])
    assert code == 0, err
    unfinish(tmp_path / "work" / "run")
    Image.new("RGB", (30, 24), (1, 2, 3)).save(local / "cat" / "0.jpg")  # same count, other content
    code, _, err = run_cli(capsys, ["fit", "--resume", "work/run"])
    assert code == 2 and "other data" in err and not (tmp_path / "work" / "run" / "metrics.json").exists()
    Image.new("RGB", (30, 24), (1, 2, 3)).save(local / "cat" / "new.jpg")  # more images
    code, _, err = run_cli(capsys, ["fit", "--resume", "work/run"])
    assert code == 2 and "other data" in err


@pytest.mark.parametrize(
    "damage, message",
    [
        ("nan", "non-finite values"),
        ("no-epoch", "'epoch' is missing"),
        ("history", "'history' is missing or not"),
        ("position", "not in this run"),
        ("rng", "random-number state"),
        ("bytes", "not a readable ueo checkpoint"),
    ],
)
def test_a_damaged_checkpoint_is_refused_before_any_work(labeled_run, tmp_path, capsys, damage, message):
    copy = tmp_path / "copy"
    shutil.copytree(labeled_run, copy)
    unfinish(copy)
    path = copy / "checkpoint.safetensors"
    checkpoint = load_checkpoint(path)
    tensors, meta = checkpoint["tensors"], checkpoint["meta"]
    if damage == "nan":
        name = next(k for k in tensors if k.startswith("param/"))
        tensors[name] = tensors[name].clone()
        tensors[name].view(-1)[0] = float("nan")
    elif damage == "no-epoch":
        del meta["epoch"]
    elif damage == "history":
        meta["history"] = {"step": 1}
    elif damage == "position":
        meta["epoch"], meta["done_in_epoch"] = 1, 10**9
    elif damage == "rng":
        tensors["torch_rng"] = torch.zeros(3)
    if damage == "bytes":
        path.write_bytes(path.read_bytes()[:100])
    else:
        save_checkpoint(path, checkpoint)
    code, _, err = run_cli(capsys, ["fit", "--resume", str(copy)])
    assert code == 2 and message in err
    assert not (copy / "metrics.json").exists() and not (copy / "adapted.safetensors").exists()


def test_a_diverged_run_leaves_a_state_that_decides_like_a_finished_one(bmp_run, tmp_path, capsys, tiny_vit_weights):
    data, _ = bmp_run
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, fit_args(tiny_vit_weights, data, out, classes="cat,dog", lr="1e30"))
    assert code == 3 and "the loss became" in err.lower()
    args = ["predict", "--adapted", str(out / "adapted.safetensors"), "--data", str(data), "--out", str(tmp_path / "p")]
    code, _, err = run_cli(capsys, args)
    assert code == 0 and "older ueo" not in err and "no fitted threshold" not in err


def test_a_checkpoint_with_flipped_bits_is_refused(bmp_run, tmp_path, capsys, tiny_vit_weights):
    from ueo import load_checkpoint, save_checkpoint

    data, _ = bmp_run
    out = tmp_path / "run"
    assert main(fit_args(tiny_vit_weights, data, out, classes="cat,dog", epochs="2")) == 0
    checkpoint = load_checkpoint(out / "checkpoint.safetensors")
    checkpoint["tensors"]["param/prompt.ctx"][0, 0] = 2e37  # an exponent bit flipped
    (out / "metrics.json").unlink()
    save_checkpoint(out / "checkpoint.safetensors", checkpoint)
    code, _, err = run_cli(capsys, ["fit", "--resume", str(out), "--quiet"])
    assert code == 2 and "far beyond any tuned value" in err


def test_metrics_json_is_written_last_and_resume_finishes_the_page(
    bmp_run, tmp_path, capsys, monkeypatch, tiny_vit_weights
):

    import ueo.cli.fit as fit_module

    data, _ = bmp_run
    out = tmp_path / "run"
    real = fit_module.write_run_report

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "report.html"))

    monkeypatch.setattr(fit_module, "write_run_report", full)
    code, _, err = run_cli(capsys, fit_args(tiny_vit_weights, data, out, "--test", str(data), classes="cat,dog"))
    assert code == 2 and "No space left" in err and not (out / "metrics.json").exists()
    monkeypatch.setattr(fit_module, "write_run_report", real)
    code, _, _ = run_cli(capsys, ["fit", "--resume", str(out), "--quiet"])
    assert code == 0 and (out / "report.html").is_file() and (out / "metrics.json").is_file()
