"""Bad input ends with exit 2 and a message naming the option, file or line, before any compute and
without a traceback; what the commands say goes to stdout, warnings to stderr."""

import json

import pytest
import torch
import yaml
from PIL import Image

from helpers import fit_args, quick_fit_args, run_cli
from ueo import AdaptedState
from ueo.cli import main


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
def test_bad_options_are_refused_before_any_compute(labeled_data, tiny_vit_weights, tmp_path, capsys, args, message):
    args = [a.replace("VAL", str(labeled_data)).replace("IMAGE", str(labeled_data / "cat" / "0.jpg")) for a in args]
    code, _, err = run_cli(capsys, quick_fit_args(tiny_vit_weights, labeled_data, tmp_path / "run") + args)
    assert code == 2 and message in err, err
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_says_so(labeled_data, tiny_vit_weights, tmp_path, capsys):
    code, _, err = run_cli(capsys, quick_fit_args(tiny_vit_weights, labeled_data, tmp_path / "run", "--device", "cuda"))
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
def test_yaml_values_are_checked(labeled_data, tiny_vit_weights, tmp_path, capsys, content, message):
    (tmp_path / "c.yaml").write_text(content)
    args = quick_fit_args(tiny_vit_weights, labeled_data, tmp_path / "run", "--config", str(tmp_path / "c.yaml"))
    del args[args.index("--epochs") : args.index("--epochs") + 2]
    code, _, err = run_cli(capsys, args)
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
def test_a_tampered_state_is_refused(labeled_run, labeled_data, tmp_path, capsys, names, message):
    state = AdaptedState.load(labeled_run / "adapted.safetensors")
    meta = state.metadata()
    meta["class_names"] = json.dumps(names)
    from ueo.files import write_tagged
    from ueo.model.state import STATE_FORMAT

    write_tagged(tmp_path / "t.safetensors", state.tensors, meta, STATE_FORMAT)
    code, _, err = run_cli(
        capsys,
        [
            "predict",
            "--adapted",
            str(tmp_path / "t.safetensors"),
            "--data",
            str(labeled_data),
            "--out",
            str(tmp_path / "p"),
            "--device",
            "cpu",
        ],
    )
    assert code == 2 and message in err


def test_quiet_runs_print_results_on_stdout_and_unlabeled_runs_say_why_no_metrics(
    labeled_data, tiny_vit_weights, tmp_path, capsys
):
    code, out, err = run_cli(
        capsys, quick_fit_args(tiny_vit_weights, labeled_data / "cat", tmp_path / "run", classes="cat,dog")
    )
    assert code == 0 and "no metrics: they need labeled test images" in out and "threshold" in out
    assert "epoch" not in err  # no progress bars


def test_bench_help_shows_its_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 50)" in text and "(default: zeroshot ueo)" in text and "Run every domain" in text


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
def test_more_bad_fit_inputs(labeled_data, tiny_vit_weights, tmp_path, capsys, args, message):
    if args[1].startswith("CFG:"):
        (tmp_path / "c.yaml").write_text(args[1][4:] + "\n")
        args = [args[0], str(tmp_path / "c.yaml")]
    code, _, err = run_cli(capsys, quick_fit_args(tiny_vit_weights, labeled_data, tmp_path / "run") + args)
    assert code == 2 and message in err, err


def test_more_bad_inputs_to_other_commands(labeled_run, labeled_data, tmp_path, capsys):
    adapted = str(labeled_run / "adapted.safetensors")
    code, _, err = run_cli(
        capsys,
        [
            "predict",
            "--adapted",
            adapted,
            "--data",
            str(labeled_data),
            "--batch-size",
            "0",
            "--out",
            str(tmp_path / "p"),
        ],
    )
    assert code == 2 and "--batch-size must be >= 1" in err
    code, _, err = run_cli(capsys, ["demo", "--epochs", "-1", "--out", str(tmp_path / "d")])
    assert code == 2 and "--epochs must be >= 0" in err
    code, _, err = run_cli(
        capsys,
        [
            "eval",
            "--adapted",
            str(labeled_run / "checkpoint.safetensors"),
            "--test",
            str(labeled_data),
            "--out",
            str(tmp_path / "e"),
        ],
    )
    assert code == 2 and "is not a ueo adapted state" in err
    (tmp_path / "l.txt").write_text("cat/0.jpg 0 extra\n")
    code, _, err = run_cli(
        capsys,
        [
            "predict",
            "--adapted",
            adapted,
            "--data",
            str(tmp_path / "l.txt"),
            "--root",
            str(labeled_data),
            "--out",
            str(tmp_path / "p2"),
        ],
    )
    assert code == 2 and "after the path 'cat/0.jpg' come 2 fields" in err


@pytest.mark.parametrize("classes", ["cat,unknown", "cat,Unknown"])
def test_a_class_named_unknown_is_refused(bmp_run, tmp_path, capsys, classes, tiny_vit_weights):
    data, _ = bmp_run
    code, _, err = run_cli(capsys, fit_args(tiny_vit_weights, data, tmp_path / "o", classes=classes))
    assert code == 2 and "is what ueo calls an image of no listed class" in err and not (tmp_path / "o").exists()
    import ueo

    with pytest.raises(ueo.DataError, match="what ueo calls"):
        ueo.fit(ueo.load_clip("ueo-tiny-vit", device="cpu"), ["cat", "UNKNOWN"], [(Image.new("RGB", (9, 9)), 0)])


def test_a_config_with_a_key_given_twice_is_refused(bmp_run, tmp_path, capsys, tiny_vit_weights):
    data, _ = bmp_run
    (tmp_path / "c.yaml").write_text("epochs: 1\nbatch_size: 4\nepochs: 3\n")
    args = fit_args(tiny_vit_weights, data, tmp_path / "o", "--config", str(tmp_path / "c.yaml"))
    code, _, err = run_cli(capsys, args)
    assert code == 2 and "'epochs' is given twice" in err and "line 3" in err
