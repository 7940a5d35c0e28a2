"""Choosing without labels, through the front door: `ueo fit --select auto`, the check on every run,
`ueo.fit(select="auto")`, resume; the numbers against scipy."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from scipy.special import softmax
from scipy.stats import entropy

import ueo
from helpers import CLASSES, GeneratedImages, fit_args, read_csv, run_cli

SELECT = ["--select", "auto", "--epochs", "2", "--test"]
DIVERGING = "1e30"  # a learning rate whose trajectory overflows at its first step


def im_by_scipy(cosines) -> float:
    """Information maximisation from scipy's entropy: H(mean p) - mean H(p), p = softmax(100 cos)."""
    probs = softmax(100 * np.asarray(cosines, dtype=np.float64), axis=1)
    return float(entropy(probs.mean(axis=0)) - np.mean([entropy(row) for row in probs]))


@pytest.mark.slow  # whole fits, several trajectories each
def test_every_fit_records_the_check_by_im_on_the_adaptation_set(labeled_run, tiny_vit_weights):
    """The check's two scores are IM of the adapted and of the zero-shot model on the adaptation images,
    as scipy computes it from what `ueo.evaluate` gives."""
    metrics = json.loads((labeled_run / "metrics.json").read_text())
    check = metrics["check"]
    assert check["validator"] == "im" and check["helped"] == (check["adapted"] > check["zeroshot"])
    bundle = ueo.load_clip("ueo-tiny-vit", pretrained=tiny_vit_weights, device="cpu")
    state = ueo.AdaptedState.load(labeled_run / "adapted.safetensors")
    images = ueo.read_images(metrics["run"]["data"], state.class_names)
    _, adapted = ueo.evaluate(bundle, images, adapted=state, cache=False)
    _, zeroshot = ueo.evaluate(bundle, images, class_names=state.class_names, cache=False)
    assert check["adapted"] == pytest.approx(im_by_scipy(adapted.cosines), rel=1e-4, abs=1e-6)
    assert check["zeroshot"] == pytest.approx(im_by_scipy(zeroshot.cosines), rel=1e-4, abs=1e-6)
    assert check["adapted"] != pytest.approx(check["zeroshot"])  # the run moved: the two can be told apart


@pytest.mark.slow  # whole fits, several trajectories each
def test_select_auto_keeps_every_candidate_and_never_chooses_a_diverged_one(
    labeled_data, tiny_vit_weights, tmp_path, capsys
):
    out = tmp_path / "run"
    args = fit_args(tiny_vit_weights, labeled_data, out, *SELECT, labeled_data, "--select-lrs", f"0.05,{DIVERGING}")
    code, stdout, err = run_cli(capsys, args)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    selection = metrics["selection"]
    candidates = selection["candidates"]
    # zero-shot, then each learning rate's snapshots at ceil(0.25 * 2) = 1, ceil(0.5 * 2) = 1 and 2: epochs 1, 2
    assert [(c["zeroshot"], c["lr_prompt"], c["epoch"]) for c in candidates] == [
        (True, None, 0),
        (False, 0.05, 1),
        (False, 0.05, 2),
        (False, 1e30, 1),
        (False, 1e30, 2),
    ]
    assert [c["diverged"] for c in candidates] == [False, False, False, True, True]
    assert not candidates[selection["chosen"]]["diverged"] and selection["validator"] == "im"
    for c in candidates[:3]:
        assert set(c["scores"]) == set(ueo.VALIDATORS) and all(v is not None for v in c["scores"].values())
        assert 0 <= c["test"]["pacc"] <= 1  # the test images are labeled: each candidate's test metrics
    assert all(v is None for c in candidates[3:] for v in c["scores"].values())
    im = [c["scores"]["im"] for c in candidates[:3]]
    assert selection["chosen"] == int(np.argmax(im))
    assert "chosen without labels by im" in stdout and "2 diverged, never chosen" in stdout
    page = (out / "report.html").read_text()
    assert "Choosing without labels" in page and (out / "selection.png").is_file()
    assert metrics["run"]["settings"]["select"] == "auto"
    chosen = candidates[selection["chosen"]]
    if not chosen["zeroshot"]:  # the chosen candidate is the run's result: its test metrics are the run's
        assert metrics["adapted"]["pacc"] == pytest.approx(chosen["test"]["pacc"])
        assert max(int(r["epoch"]) for r in read_csv(out / "history.csv")) == chosen["epoch"]


@pytest.mark.slow  # whole fits, several trajectories each
def test_when_nothing_adapted_helps_zero_shot_is_the_result(labeled_data, tiny_vit_weights, tmp_path, capsys):
    """Every trajectory diverges: zero-shot is chosen; the state says so; predict decides as the zero-shot
    model does (a --method zeroshot run's state), and the run warns that adapting did not help."""
    out, zs = tmp_path / "run", tmp_path / "zs"
    code, stdout, err = run_cli(
        capsys, fit_args(tiny_vit_weights, labeled_data, out, *SELECT, labeled_data, "--select-lrs", DIVERGING)
    )
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["selection"]["chosen"] == 0 and metrics["check"]["helped"] is False
    assert "adaptation did not help on this collection" in stdout + err
    assert "adaptation did not help" in (out / "report.html").read_text()
    state = ueo.AdaptedState.load(out / "adapted.safetensors")
    assert state.is_zeroshot and "zero-shot" in state.info["selected"]
    assert run_cli(capsys, fit_args(tiny_vit_weights, labeled_data, zs, "--method", "zeroshot"))[0] == 0
    for name in ("run", "zs"):
        code, _, err = run_cli(
            capsys,
            ["predict", "--adapted", tmp_path / name / "adapted.safetensors", "--data", labeled_data]
            + ["--out", tmp_path / f"{name}-pred", "--device", "cpu", "--quiet", "--threshold", "0.5"],
        )
        assert code == 0, err
        code, _, err = run_cli(
            capsys,
            ["export", "--adapted", tmp_path / name / "adapted.safetensors", "--out", tmp_path / f"{name}-export"],
        )
        assert code == 0, err
    ours, theirs = (load_file(str(tmp_path / f"{n}-export" / "classifier.safetensors")) for n in ("run", "zs"))
    assert set(ours) == set(theirs) and all(torch.allclose(ours[k], theirs[k], atol=1e-6) for k in ours)
    ours, theirs = (read_csv(tmp_path / f"{n}-pred" / "predictions.csv") for n in ("run", "zs"))
    assert [r["top1"] for r in ours] == [r["top1"] for r in theirs]
    assert [float(r["score"]) for r in ours] == pytest.approx([float(r["score"]) for r in theirs], abs=1e-6)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--select-lrs", ""], "--select-lrs"),
        (["--select-lrs", "1e-3,fast"], "--select-lrs"),
        (["--select-lrs=-1e-3"], "--select-lrs"),
        (["--select-lrs", "1e-3,1e-3"], "--select-lrs"),
        (["--select-snapshots", "0,1"], "--select-snapshots"),
        (["--select", "auto", "--method", "zeroshot"], "--select"),
        (["--select", "auto", "--epochs", "0"], "--select"),
        (["--validator", "accuracy"], "--validator"),
    ],
)
def test_bad_selection_flags_exit_2_naming_the_flag(labeled_data, tiny_vit_weights, tmp_path, capsys, flags, message):
    try:
        code, _, err = run_cli(capsys, fit_args(tiny_vit_weights, labeled_data, tmp_path / "run", *flags))
    except SystemExit as refused:  # (argparse's own refusal: a choice that does not exist)
        code, err = refused.code, capsys.readouterr().err
    assert code == 2 and message in err, err
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.slow  # whole fits, several trajectories each
def test_the_library_chooses_too(tiny_vit):
    train = GeneratedImages(16, [0, 1, 2, -1], seed=5)
    result = ueo.fit(tiny_vit, CLASSES, train, select="auto", select_lrs=[0.05, 1e30], epochs=2, batch_size=8, seed=1)
    chosen = result.selection["candidates"][result.selection["chosen"]]
    assert not chosen["diverged"] and result.check["validator"] == "im"
    assert result.adapted.info["selected"].endswith("chosen by im without labels")
    expected = chosen["zeroshot"]
    assert result.adapted.is_zeroshot == expected


@pytest.mark.slow  # whole fits, several trajectories each
def test_a_stopped_selection_resumes_to_the_same_choice(labeled_data, tiny_vit_weights, tmp_path, capsys):
    """Stopped inside the second trajectory (after its first checkpoint), `--resume` ends with the same
    candidates, scores and result as a run that was never stopped."""
    args = fit_args(tiny_vit_weights, labeled_data, "OUT", *SELECT, labeled_data, "--select-lrs", "0.05,0.02")
    assert run_cli(capsys, [a if a != "OUT" else tmp_path / "once" for a in args])[0] == 0
    hook = tmp_path / "hooked.py"  # the third checkpoint (trajectory 2, epoch 1) stops the run as SIGTERM would
    hook.write_text(
        "import os, signal, sys\nimport ueo.cli.fit as f\nfrom ueo.cli.main import main\nreal, saved = f.save_checkpoint, []\n"
        "def save(path, checkpoint):\n    real(path, checkpoint)\n    saved.append(path)\n"
        "    if len(saved) == 3:\n        os.kill(os.getpid(), signal.SIGTERM)\n"
        "f.save_checkpoint = save\nsys.exit(main(sys.argv[1:]))\n"
    )
    stopped = tmp_path / "stopped"
    command = [sys.executable, str(hook), *[str(a) if a != "OUT" else str(stopped) for a in args]]
    first = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert first.returncode != 0 and "--resume" in first.stderr and not (stopped / "metrics.json").exists()
    meta = ueo.load_checkpoint(stopped / "checkpoint.safetensors")["meta"]
    assert meta["selection"]["trajectory"] == 1  # stopped inside the second trajectory
    code, _, err = run_cli(capsys, ["fit", "--resume", stopped, "--quiet"])
    assert code == 0, err
    once, resumed = (json.loads((tmp_path / n / "metrics.json").read_text())["selection"] for n in ("once", "stopped"))
    assert resumed["chosen"] == once["chosen"]
    for a, b in zip(once["candidates"], resumed["candidates"], strict=True):
        assert (a["lr_prompt"], a["epoch"]) == (b["lr_prompt"], b["epoch"])
        for name, value in a["scores"].items():
            assert b["scores"][name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
    one, two = (ueo.AdaptedState.load(tmp_path / n / "adapted.safetensors").tensors for n in ("once", "stopped"))
    for name, value in one.items():
        assert torch.allclose(two[name], value, atol=1e-5), name
