"""torch.distributed (gloo, CPU): 2 processes give the same adaptation as 1 process."""

import json
import os

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

import ueo
from helpers import CLASSES, GeneratedImages, paused_after_first_checkpoint, read_csv

pytestmark = pytest.mark.distributed  # every test here runs torchrun or several processes

SETTINGS = dict(epochs=2, batch_size=8, lr_prompt=0.05, lr_norm=0.05, seed=3, eval_train=False)


SELECTING = dict(select="auto", select_lrs=[0.05, 0.005, 1e30])  # (the last one diverges)


def run(bundle, **extra):
    train = GeneratedImages(17, [0, 1, 2, -1], seed=21)  # last global batch of 1: one rank gets nothing
    test = GeneratedImages(9, [0, 1, 4], seed=22)
    return ueo.fit(bundle, CLASSES, train, test=test, **SETTINGS, **extra)


def worker(rank, world, folder, weights, extra=None):
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    try:
        result = run(ueo.load_clip("ueo-tiny-vit", pretrained=weights, device="cpu"), **(extra or {}))
        if rank == 0 or extra:  # a selecting run: every rank says what it chose
            save_file(result.adapted.tensors, os.path.join(folder, f"adapted-{rank}.safetensors"))
            with open(os.path.join(folder, f"result-{rank}.json"), "w") as f:
                json.dump(
                    {"history": result.history, "evaluations": result.evaluations, "selection": result.selection}, f
                )
    finally:
        torch.distributed.destroy_process_group()


def test_two_processes_match_one(tmp_path, tiny_vit_weights):
    weights = tiny_vit_weights

    single = run(ueo.load_clip("ueo-tiny-vit", pretrained=weights, device="cpu"))
    mp.spawn(worker, args=(2, str(tmp_path), weights), nprocs=2, join=True)

    adapted = load_file(str(tmp_path / "adapted-0.safetensors"))
    for name, value in single.adapted.tensors.items():
        assert torch.allclose(adapted[name], value, atol=1e-5), name
    assert not torch.allclose(
        adapted["prompt.ctx"],
        ueo.fit(
            ueo.load_clip("ueo-tiny-vit", pretrained=weights, device="cpu"),
            CLASSES,
            GeneratedImages(4, [0]),
            method="zeroshot",
        ).adapted.tensors["prompt.ctx"],
    )
    other = json.loads((tmp_path / "result-0.json").read_text())
    assert [h["loss"] for h in other["history"]] == pytest.approx([h["loss"] for h in single.history], abs=1e-5)
    for a, b in zip(other["evaluations"], single.evaluations):
        assert (a["epoch"], a["split"], a["num_known_samples"], a["num_unknown_samples"]) == (
            b["epoch"],
            b["split"],
            b["num_known_samples"],
            b["num_unknown_samples"],
        )
        assert a["pacc"] == pytest.approx(b["pacc"]) and a["auroc"] == pytest.approx(b["auroc"], abs=1e-6)


def test_two_processes_choose_as_one(tmp_path, tiny_vit_weights):
    """select="auto" under 2 gloo processes: every rank makes the choice one process makes, with the same
    validator scores, and ends with the same tensors."""
    single = run(ueo.load_clip("ueo-tiny-vit", pretrained=tiny_vit_weights, device="cpu"), **SELECTING)
    mp.spawn(worker, args=(2, str(tmp_path), tiny_vit_weights, SELECTING), nprocs=2, join=True)
    expected = single.selection
    assert [c["diverged"] for c in expected["candidates"]][-2:] == [True, True]
    im = sorted((c["scores"]["im"] for c in expected["candidates"] if c["scores"]["im"] is not None), reverse=True)
    assert im[0] - im[1] > 1e-2  # the choice is clear, far beyond the drift between the two runs
    for rank in (0, 1):
        found = json.loads((tmp_path / f"result-{rank}.json").read_text())["selection"]
        assert found["chosen"] == expected["chosen"], rank
        for a, b in zip(expected["candidates"], found["candidates"], strict=True):
            assert (a["lr_prompt"], a["epoch"], a["diverged"]) == (b["lr_prompt"], b["epoch"], b["diverged"])
            for name, value in a["scores"].items():
                assert (b["scores"][name] is None) == (value is None), (rank, name)
                # (two processes sum gradients in another order: trajectories drift by ~1e-4 over 2 epochs)
                assert value is None or b["scores"][name] == pytest.approx(value, abs=2e-3), (rank, name)
        tensors = load_file(str(tmp_path / f"adapted-{rank}.safetensors"))
        for name, value in single.adapted.tensors.items():
            assert torch.allclose(tensors[name], value, atol=1e-3), (rank, name)


def test_torchrun_cli_interrupt_and_resume_match_one_process(tmp_path, tiny_vit_weights):
    """`torchrun -m ueo fit` with 2 CPU processes: SIGTERM saves a checkpoint, --resume finishes the run,
    and the result equals an uninterrupted single-process run."""
    import signal
    import subprocess
    import sys

    from ueo import AdaptedState
    from ueo.cli import main

    data = GeneratedImages(24, [0, 1, 2], seed=30)
    for i, (image, label) in enumerate(data):
        folder = tmp_path / "data" / ["cat", "hot_dog", "zebra"][label]
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{i}.png")
    common = [
        "--model",
        "ueo-tiny-vit",
        "--pretrained",
        tiny_vit_weights,
        "--device",
        "cpu",
        "--data",
        str(tmp_path / "data"),
        "--classes",
        "cat,hot dog",
        "--epochs",
        "30",
        "--batch-size",
        "8",
        "--lr-prompt",
        "0.05",
        "--lr-norm",
        "0.05",
        "--quiet",
    ]
    assert main(["fit", *common, "--out", str(tmp_path / "single")]) == 0

    run_dir = tmp_path / "ddp"
    # a hook after rank 0's first checkpoint: it says so, then waits on a pipe until the test has sent the
    # stop (no polling: the run is stopped mid-way whatever the machine's speed)
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    hook = tmp_path / "hooked_ueo.py"
    hook.write_text(paused_after_first_checkpoint(f"open({str(gate)!r}).read()"))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(hook)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [*torchrun, "fit", *common, "--out", str(run_dir)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert any(line.strip() == b"saved" for line in process.stdout)  # (rank 0 alone saves checkpoints)
    process.send_signal(signal.SIGTERM)
    with open(gate, "w") as opened:  # let rank 0 go on: it hears the stop with rank 1 at the next step
        opened.write("go")
    _, err = process.communicate(timeout=180)
    text = err.decode()
    # stopped as asked (a checkpoint saved, the way on said), not crashed: no bug report, no metrics.json
    assert process.returncode != 0 and not (run_dir / "metrics.json").exists(), text[-3000:]
    assert "ueo fit --resume" in text and "This is a bug in ueo" not in text, text[-3000:]
    assert (run_dir / "checkpoint.safetensors").exists()

    done = subprocess.run(
        [*torchrun[:-1], "-m", "ueo", "fit", "--resume", str(run_dir), "--quiet"],  # (ueo itself, no hook)
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    single = AdaptedState.load(tmp_path / "single" / "adapted.safetensors").tensors
    ddp = AdaptedState.load(run_dir / "adapted.safetensors").tensors
    for name, value in single.items():
        assert torch.allclose(ddp[name], value, atol=1e-5), name
    assert len(json.loads((run_dir / "metrics.json").read_text())["evaluations"]) >= 2
    # what the class list misses: features gathered from both ranks, rank 0 alone clustering, as one process
    for name in ("absent.csv", "discovered.csv"):
        one, two = read_csv(tmp_path / "single" / name), read_csv(run_dir / name)
        assert [{k: v for k, v in r.items() if k != "share"} for r in one] == [
            {k: v for k, v in r.items() if k != "share"} for r in two
        ], name
    assert [float(r["share"]) for r in read_csv(run_dir / "absent.csv")] == pytest.approx(
        [float(r["share"]) for r in read_csv(tmp_path / "single" / "absent.csv")], abs=1e-5
    )
    assert read_csv(run_dir / "discovered.csv"), "no image was decided unknown: nothing gathered was tested"
