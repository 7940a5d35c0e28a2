"""Hostile input and real-world mishaps: every case ends with exit 0, 2 or 3 and a message, never a
traceback, and never with data lost, mixed or silently wrong."""

import errno
import json
import os
import shutil
import signal

import pytest
import torch
import yaml
from PIL import Image

from helpers import fit_args, make_folder, read_csv
from ueo import AdaptedState, load_checkpoint, save_checkpoint
from ueo.cli import main
from ueo.cli.outputs import lock_folder


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("hostile") / "data")


def fit(weights, data, out, *extra, classes="cat,dog", epochs="2"):
    return fit_args(weights, data, out, *extra, classes=classes, epochs=epochs, lr="0.05")


def run(capsys, args):
    code = main(args)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err, captured.err
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def fitted(data, tiny_vit_weights, tmp_path_factory):
    """A finished run with a test set (labeled: cat, dog known; zebra unknown)."""
    out = tmp_path_factory.mktemp("fitted") / "run"
    assert main(fit(tiny_vit_weights, data, out, "--test", str(data))) == 0
    return out


# ------------------------------------------------------------------------------------ 1. one decision per image
@pytest.mark.slow
def test_the_fitted_threshold_is_stored_and_used_for_every_image(fitted, data, tmp_path, capsys):
    state = AdaptedState.load(fitted / "adapted.safetensors")
    metrics = json.loads((fitted / "metrics.json").read_text())
    stored = {k: v for k, v in state.threshold.items() if k != "zeroshot"}  # (+ the zero-shot cut, for the report)
    assert stored == metrics["threshold"] and stored["rule"] == "otsu"
    adapted = str(fitted / "adapted.safetensors")
    code, out, _ = run(
        capsys,
        [
            "predict",
            "--adapted",
            adapted,
            "--data",
            str(data),
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
    code, _, _ = run(
        capsys,
        ["eval", "--adapted", adapted, "--test", str(data), "--out", str(tmp_path / "e"), "--device", "cpu", "--quiet"],
    )
    evaluated = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert code == 0 and evaluated["threshold"]["threshold"] == metrics["threshold"]["threshold"]
    assert evaluated["predictions"]["num_predicted_unknown"] == metrics["predictions"]["num_predicted_unknown"]


@pytest.mark.parametrize("value, expected", [("0.2", "at or below 1/K"), ("1.5", "above 1")])
def test_a_threshold_that_decides_nothing_is_warned_about(fitted, data, tmp_path, capsys, value, expected):
    code, _, err = run(
        capsys,
        [
            "predict",
            "--adapted",
            str(fitted / "adapted.safetensors"),
            "--data",
            str(data),
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
def test_non_numbers_as_thresholds_are_refused(fitted, data, tiny_vit_weights, tmp_path, capsys, value):
    code, _, err = run(
        capsys,
        [
            "predict",
            "--adapted",
            str(fitted / "adapted.safetensors"),
            "--data",
            str(data),
            f"--threshold={value}",
            "--out",
            str(tmp_path / "p"),
            "--device",
            "cpu",
        ],
    )
    assert code == 2 and "--threshold" in err and not (tmp_path / "p").exists()
    code, _, err = run(capsys, fit(tiny_vit_weights, data, tmp_path / "f", f"--threshold={value}"))
    assert code == 2 and not (tmp_path / "f").exists()


# --------------------------------------------------------------------------- 2. a run always finishes, as itself
def unfinish(run_dir):
    """A run whose training finished but whose outputs were not all written."""
    for name in ("metrics.json", "predictions.csv", "adapted.safetensors", "roc.png"):
        (run_dir / name).unlink(missing_ok=True)


def test_a_run_whose_outputs_were_not_written_resumes_to_the_same_outputs(fitted, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(fitted, copy)
    unfinish(copy)
    code, out, _ = run(capsys, ["fit", "--resume", str(copy), "--quiet"])
    assert code == 0, out
    before, after = (json.loads((d / "metrics.json").read_text()) for d in (fitted, copy))
    assert after["adapted"] == before["adapted"] and after["threshold"] == before["threshold"]
    assert read_csv(copy / "predictions.csv") == read_csv(fitted / "predictions.csv")
    code, out, _ = run(capsys, ["fit", "--resume", str(copy)])
    assert code == 0 and "finished run" in out


def test_a_refused_resume_changes_nothing(fitted, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(fitted, copy)
    unfinish(copy)
    config = (copy / "config.yaml").read_bytes()
    for extra in (["--epochs", "3"], ["--out", str(tmp_path / "other")], ["--data", str(tmp_path)]):
        code, _, err = run(capsys, ["fit", "--resume", str(copy), *extra])
        assert code == 2 and "cannot be given with it" in err
        assert (copy / "config.yaml").read_bytes() == config
    assert not (tmp_path / "other").exists()


def test_resume_refuses_other_data_and_works_from_any_folder(data, tiny_vit_weights, tmp_path, capsys, monkeypatch):
    local = make_folder(tmp_path / "work" / "photos")
    monkeypatch.chdir(tmp_path / "work")
    assert main(fit(tiny_vit_weights, "photos", "run")) == 0  # relative paths
    config = yaml.safe_load((tmp_path / "work" / "run" / "config.yaml").read_text())
    assert config["data"] == str(local) and config["out"] == str(tmp_path / "work" / "run")
    unfinish(tmp_path / "work" / "run")
    monkeypatch.chdir(tmp_path)  # resumable from elsewhere
    code, _, err = run(capsys, ["fit", "--resume", "work/run", "--quiet"])
    assert code == 0, err
    unfinish(tmp_path / "work" / "run")
    Image.new("RGB", (30, 24), (1, 2, 3)).save(local / "cat" / "0.jpg")  # same count, other content
    code, _, err = run(capsys, ["fit", "--resume", "work/run"])
    assert code == 2 and "other data" in err and not (tmp_path / "work" / "run" / "metrics.json").exists()
    Image.new("RGB", (30, 24), (1, 2, 3)).save(local / "cat" / "new.jpg")  # more images
    code, _, err = run(capsys, ["fit", "--resume", "work/run"])
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
def test_a_damaged_checkpoint_is_refused_before_any_work(fitted, tmp_path, capsys, damage, message):
    copy = tmp_path / "copy"
    shutil.copytree(fitted, copy)
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
    code, _, err = run(capsys, ["fit", "--resume", str(copy)])
    assert code == 2 and message in err
    assert not (copy / "metrics.json").exists() and not (copy / "adapted.safetensors").exists()


def test_a_stop_request_during_an_evaluation_is_acted_on_at_once(tiny_vit, generated, tmp_path):
    import ueo

    train, test = generated(12, [0, 1, 2], seed=1), generated(40, [0, 1, 5], seed=2)
    settings = dict(epochs=2, batch_size=4, eval_batch_size=4, lr_prompt=0.05, lr_norm=0.05, eval_train=False)
    full = ueo.fit(tiny_vit, ["cat", "dog"], train, test=test, **settings)
    polls = {"n": 0, "training": 0}
    path = tmp_path / "checkpoint.safetensors"

    def stop():  # asked for during the last evaluation (after all 2 x 3 training steps)
        polls["n"] += 1
        return polls["n"] > 6 + 2 + 10 + 2

    with pytest.raises(ueo.TrainingInterrupted, match="during an evaluation"):
        ueo.fit(
            tiny_vit,
            ["cat", "dog"],
            train,
            test=test,
            checkpoint=lambda c: save_checkpoint(path, c),
            should_stop=stop,
            **settings,
        )
    saved = load_checkpoint(path)
    assert (saved["meta"]["epoch"], saved["meta"]["done_in_epoch"]) == (2, 3)
    resumed = ueo.fit(tiny_vit, ["cat", "dog"], train, test=test, resume=saved, **settings)
    assert resumed.metrics["adapted"] == full.metrics["adapted"]
    assert resumed.adapted.threshold == full.adapted.threshold


def test_a_second_stop_request_quits_at_once():
    from ueo.cli.stop import StopRequest

    stop = StopRequest()
    with stop.installed(), pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        assert stop() and stop.signum == signal.SIGINT  # heard, not acted on yet
        os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


# -------------------------------------------------------------------------------------------- 3. output folders
def test_two_runs_into_one_folder_are_refused(data, tiny_vit_weights, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    lock_folder(out)  # another run holds it
    code, _, err = run(capsys, fit(tiny_vit_weights, data, out, "--overwrite"))
    assert code == 2 and "in use by another ueo run" in err


def test_overwrite_clears_the_outputs_of_the_earlier_run(fitted, data, tiny_vit_weights, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(fitted, out)
    (out / "notes.txt").write_text("mine")
    assert (out / "roc.png").exists()
    code, _, _ = run(capsys, fit(tiny_vit_weights, data / "cat", out, "--overwrite", "--epochs", "1"))
    assert code == 0
    assert not (out / "roc.png").exists() and not (out / "confusion.png").exists()  # unlabeled now: no plots
    assert (out / "notes.txt").read_text() == "mine"  # not ueo's: kept


def test_outputs_inside_the_inputs_and_other_folder_mistakes(data, fitted, tiny_vit_weights, tmp_path, capsys):
    code, _, err = run(capsys, fit(tiny_vit_weights, data, data / "runs" / "x"))
    assert code == 2 and "inside --data" in err and not (data / "runs").exists()
    (tmp_path / "file").write_text("x")
    code, _, err = run(capsys, fit(tiny_vit_weights, data, tmp_path / "file" / "out"))
    assert code == 2 and "file" in err
    code, _, err = run(capsys, ["report", str(fitted), "--out", str(fitted / "history.md")])
    assert code == 2 and "not a table" in err and (fitted / "history.csv").read_text().startswith("step,")
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "x").write_text("x")
    code, _, err = run(capsys, ["demo", "--out", str(tmp_path / "demo")])
    assert code == 2 and "--overwrite" in err
    code, _, err = run(
        capsys,
        [
            "predict",
            "--adapted",
            str(fitted / "adapted.safetensors"),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "demo"),
        ],
    )
    assert code == 2 and "--overwrite" in err and "--resume" not in err


def test_a_full_disk_while_writing_keeps_what_was_written(fitted, tmp_path, capsys, monkeypatch):
    import ueo.report

    copy = tmp_path / "copy"
    shutil.copytree(fitted, copy)
    unfinish(copy)
    real = ueo.report.write_text

    def full_disk(path, text):
        if str(path).endswith("metrics.json"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, text)

    monkeypatch.setattr(ueo.report, "write_text", full_disk)
    code, _, err = run(capsys, ["fit", "--resume", str(copy), "--quiet"])
    assert code == 2 and "No space left on device" in err and "metrics.json" in err and "--resume" in err
    assert (copy / "checkpoint.safetensors").exists() and (copy / "predictions.csv").exists()
    monkeypatch.setattr(ueo.report, "write_text", real)
    code, _, _ = run(capsys, ["fit", "--resume", str(copy), "--quiet"])
    assert (
        code == 0
        and json.loads((copy / "metrics.json").read_text())["adapted"]
        == json.loads((fitted / "metrics.json").read_text())["adapted"]
    )


# --------------------------------------------------------------------------------- 4. reading what the user gave
def test_symlinked_class_folders_are_followed_once(tmp_path):
    from ueo.data import read_folder

    store = make_folder(tmp_path / "store")
    (tmp_path / "data").mkdir()
    for name in ("cat", "dog"):
        (tmp_path / "data" / name).symlink_to(store / name, target_is_directory=True)
    (tmp_path / "data" / "cat" / "loop").symlink_to(tmp_path / "data", target_is_directory=True)  # a loop
    images = read_folder(tmp_path / "data", ["cat", "dog"])
    assert sorted(set(images.labels)) == [0, 1] and len(images) == 8


def test_byte_order_marks_are_ignored(data, tmp_path):
    from ueo.data import parse_class_names, read_list_file

    (tmp_path / "classes.txt").write_bytes("\ufeffcat\ndog\n".encode())
    assert parse_class_names(str(tmp_path / "classes.txt")) == ["cat", "dog"]
    (tmp_path / "list.txt").write_bytes(f"\ufeff{data / 'cat' / '0.jpg'} 0\n".encode())
    assert read_list_file(tmp_path / "list.txt", root=data).labels == [0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--classes", "classes.csv"], "no such file"),
        (["--seed", "-1"], "--seed must be"),
        (["--seed", str(2**70)], "--seed must be"),
        (["--trade", "nan"], "--trade must be a finite number"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--tpr", "1.5", "--val", "VAL"], "--tpr must be a fraction"),
        (["--tpr", "0.9"], "--tpr needs labeled validation images"),
        (["--device", "bogus"], "is not a device"),
        (["--pretrained", "/nowhere/weights.safetensors"], "no such file"),
        (["--threshold", "fitted"], "fit chooses the threshold"),
        (["--data", "IMAGE"], "is an image"),
    ],
)
def test_bad_options_are_refused_before_any_compute(data, tiny_vit_weights, tmp_path, capsys, args, message):
    args = [a.replace("VAL", str(data)).replace("IMAGE", str(data / "cat" / "0.jpg")) for a in args]
    code, _, err = run(capsys, fit(tiny_vit_weights, data, tmp_path / "run") + args)
    assert code == 2 and message in err, err
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_says_so(data, tiny_vit_weights, tmp_path, capsys):
    code, _, err = run(capsys, fit(tiny_vit_weights, data, tmp_path / "run", "--device", "cuda"))
    assert code == 2 and "no CUDA device" in err


@pytest.mark.parametrize(
    "content, message",
    [
        ("lr_prompt: 1e-2\nepochs: 1\n", None),
        ("epochs: ten\n", "epochs must be a whole number"),
        ("batch_size: 1.5\n", "batch_size must be a whole number"),
        ("seed: null\n", "seed must be a whole number"),
        ("classes: [cat, dog]\nepochs: 1\n", None),
        ("classes: {a: 1}\n", "classes must be"),
        ("lr_norm: fast\n", "lr_norm must be a number"),
        ("- a\n- b\n", "expected a mapping"),
        ("epochs: [1\n", "--config"),
        ("colour: red\n", "unknown option"),
    ],
)
def test_yaml_values_are_checked(data, tiny_vit_weights, tmp_path, capsys, content, message):
    (tmp_path / "c.yaml").write_text(content)
    args = fit(tiny_vit_weights, data, tmp_path / "run", "--config", str(tmp_path / "c.yaml"))
    del args[args.index("--epochs") : args.index("--epochs") + 2]
    code, _, err = run(capsys, args)
    if message is None:
        config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
        assert code == 0 and config["epochs"] == 1 and isinstance(config["lr_prompt"], float)
    else:
        assert code == 2 and message in err, err


@pytest.mark.parametrize(
    "names, message",
    [
        ("cats", "class_names must be a non-empty list"),
        ([{"a": 1}], "class_names must be a non-empty list"),
        ([], "class_names must be a non-empty list"),
        (["cat", "Cat"], "duplicates"),
    ],
)
def test_a_tampered_state_is_refused(fitted, data, tmp_path, capsys, names, message):
    state = AdaptedState.load(fitted / "adapted.safetensors")
    meta = state.metadata()
    meta["class_names"] = json.dumps(names)
    from ueo.files import write_tagged
    from ueo.state import STATE_FORMAT

    write_tagged(tmp_path / "t.safetensors", state.tensors, meta, STATE_FORMAT)
    code, _, err = run(
        capsys,
        [
            "predict",
            "--adapted",
            str(tmp_path / "t.safetensors"),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "p"),
            "--device",
            "cpu",
        ],
    )
    assert code == 2 and message in err


def test_list_files_say_what_is_wrong(data, tmp_path):
    from ueo.data import read_list_file
    from ueo.errors import DataError

    lst = tmp_path / "l.txt"
    lst.write_text(f"{data / 'cat' / '0.jpg'} 0\n")  # absolute, inside the root: fine
    assert len(read_list_file(lst, root=data)) == 1
    lst.write_text("cat/0.jpg cat\n")
    with pytest.raises(DataError, match="the label 'cat' is not a whole number"):
        read_list_file(lst, root=data)
    lst.write_text(f"{tmp_path / 'l.txt'} 0\n")
    with pytest.raises(DataError, match="escapes the root"):
        read_list_file(lst, root=data)


def test_top_level_images_beside_class_folders_are_an_error(data, tmp_path, capsys, fitted):
    mixed = tmp_path / "mixed"
    shutil.copytree(data, mixed)
    shutil.copy(data / "cat" / "0.jpg", mixed / "loose.jpg")
    code, _, err = run(
        capsys,
        [
            "eval",
            "--adapted",
            str(fitted / "adapted.safetensors"),
            "--test",
            str(mixed),
            "--out",
            str(tmp_path / "e"),
            "--device",
            "cpu",
        ],
    )
    assert code == 2 and "outside any class folder" in err and "loose.jpg" in err


def test_parallel_decoding_stays_within_its_pixel_budget(tmp_path, monkeypatch):
    import threading

    from ueo import images as images_module
    from ueo.imagelist import ImageList
    from ueo.images import PixelBudget, check_images

    for i in range(8):
        Image.new("RGB", (300, 200), (i, 0, 0)).save(tmp_path / f"{i}.png")
    images = ImageList(sorted(tmp_path.glob("*.png")), [-1] * 8, False)
    busy, peak, lock = [0], [0], threading.Lock()
    real = images_module.load_image
    pair = threading.Barrier(2)  # two decodes must be in flight together (the budget allows two, not one)

    def slow_load(path, max_side=None):
        with lock:
            busy[0] += 1
            peak[0] = max(peak[0], busy[0])
        pair.wait(timeout=60)  # a third one let in meanwhile would show in the peak
        with lock:
            busy[0] -= 1
        return real(path, max_side)

    monkeypatch.setattr(images_module, "load_image", slow_load)
    budget = PixelBudget(limit=2 * 300 * 200)
    kept, skipped = check_images(images, threads=8, budget=budget)
    assert len(kept) == 8 and not skipped
    assert peak[0] == 2 and budget.peak == 2 * 300 * 200  # 8 threads, but never more than 2 images at once


# ------------------------------------------------------------------------------------------------ 5. first contact
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
    code, out, err = run(capsys, ["report", str(tmp_path), "--out", str(tmp_path / "t.md")])
    assert code == 0
    assert "| office31 | amazon | opda | ueo | 2 | 65.0 ± 5.0 |" in out  # the two ViT-B-16 seeds
    assert "| office31 | amazon | opda | ueo | 1 | 50.0 | 80.0 |" in out  # RN50 alone: no "± 0.0"
    assert "ViT-B-16 (openai)" in out and "RN50 (openai)" in out and "3 runs" in out
    assert f"left out: {tmp_path / 'd' / 'metrics.json'} (no metrics" in err
    assert f"left out: {tmp_path / 'e' / 'metrics.json'} (not a readable metrics.json" in err


def test_quiet_runs_print_results_on_stdout_and_unlabeled_runs_say_why_no_metrics(
    data, tiny_vit_weights, tmp_path, capsys
):
    code, out, err = run(capsys, fit(tiny_vit_weights, data / "cat", tmp_path / "run", classes="cat,dog"))
    assert code == 0 and "no metrics: they need labeled test images" in out and "threshold" in out
    assert "epoch" not in err  # no progress bars


def test_bench_help_shows_its_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 50)" in text and "(default: zeroshot ueo)" in text and "Run every domain" in text


# ----------------------------------------------------------------------------------- more of the same families
@pytest.mark.parametrize(
    "args, message",
    [
        (["--lr-prompt", "1e300"], "at most 3.4e+38"),
        (["--config", "CFG:epochs: !!python/object/apply:os.system ['true']"], "not valid YAML: could not determine"),
        (["--config", "CFG:method: null"], "method must be a text, got None"),
        (["--config", "CFG:fast: maybe"], "--fast must be auto, on or off"),
        (["--model", "local-dir:/nowhere"], "Could not build 'local-dir:/nowhere'"),
        (["--device", "mps"], "ueo runs on cpu or cuda"),
        (["--classes", ","], "has an empty name"),
    ],
)
def test_more_bad_fit_inputs(data, tiny_vit_weights, tmp_path, capsys, args, message):
    if args[1].startswith("CFG:"):
        (tmp_path / "c.yaml").write_text(args[1][4:] + "\n")
        args = [args[0], str(tmp_path / "c.yaml")]
    code, _, err = run(capsys, fit(tiny_vit_weights, data, tmp_path / "run") + args)
    assert code == 2 and message in err, err


def test_more_bad_inputs_to_other_commands(fitted, data, tmp_path, capsys):
    adapted = str(fitted / "adapted.safetensors")
    code, _, err = run(
        capsys,
        ["predict", "--adapted", adapted, "--data", str(data), "--batch-size", "0", "--out", str(tmp_path / "p")],
    )
    assert code == 2 and "--batch-size must be >= 1" in err
    code, _, err = run(capsys, ["demo", "--epochs", "-1", "--out", str(tmp_path / "d")])
    assert code == 2 and "--epochs must be >= 0" in err
    code, _, err = run(
        capsys,
        [
            "eval",
            "--adapted",
            str(fitted / "checkpoint.safetensors"),
            "--test",
            str(data),
            "--out",
            str(tmp_path / "e"),
        ],
    )
    assert code == 2 and "is not a ueo adapted state" in err
    (tmp_path / "l.txt").write_text("cat/0.jpg 0 extra\n")
    code, _, err = run(
        capsys,
        [
            "predict",
            "--adapted",
            adapted,
            "--data",
            str(tmp_path / "l.txt"),
            "--root",
            str(data),
            "--out",
            str(tmp_path / "p2"),
        ],
    )
    assert code == 2 and "after the path 'cat/0.jpg' come 2 fields" in err


def test_file_names_of_any_kind_are_written_as_they_are(fitted, tmp_path, capsys):
    folder = tmp_path / "odd"
    folder.mkdir()
    names = [b"\xff\xfe.jpg", b"sp ace.jpg", b"qu'ote\".jpg", b"<b>&amp;.jpg", "émoji😀.jpg".encode(), b"new\nline.jpg"]
    for i, name in enumerate(names):
        Image.new("RGB", (20, 20), (40 * i, 0, 0)).save(os.path.join(os.fsencode(folder), name), format="JPEG")
    code, _, _ = run(
        capsys,
        [
            "predict",
            "--adapted",
            str(fitted / "adapted.safetensors"),
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
