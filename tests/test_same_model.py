"""The same model everywhere: what `ueo fit` learned is applied by `ueo eval`, `ueo predict`,
``ueo.load_adapted`` and the export to exactly the weights it was learned on (random weights are rebuilt
from their seed), so that every one of them scores each image alike; other weights are refused."""

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

import ueo
from helpers import fit_args, read_csv, write_photos
from ueo.cli import main

pytestmark = pytest.mark.slow  # whole fits, exports and subprocess runs (`make test-quick` leaves them out)

SIZES = [(300, 225), (375, 500), (1000, 300), (300, 1000), (150, 100), (640, 480)]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("same-model-photos")
    write_photos(folder, sizes=SIZES, classes=("cat", "dog", "horse"))  # horse: not listed, an unknown class
    return folder


def scores_by_path(csv_path):
    return {row["path"]: (row["prediction"], float(row["score"])) for row in read_csv(csv_path)}


# How close load_adapted (which decodes each file itself) comes to the runs' scores: exactly with raw cache
# entries; with JPEG entries to what they lose (up to 4.5e-4 measured by benchmarks/agreement.py)
AGAINST_FILES = {"raw": 2e-6, "auto": 2e-3}


@pytest.mark.parametrize("model, pretrained", [("ueo-tiny-vit", "none"), ("ueo-toy-rn", "toyworld")])
@pytest.mark.parametrize("fmt", ["raw", "auto"])
def test_fit_eval_predict_and_load_adapted_score_each_image_alike(photos, tmp_path, model, pretrained, fmt):
    common = ["--device", "cpu", "--quiet", "--cache-format", fmt, "--cache-dir", str(tmp_path / "cache")]
    fit = tmp_path / "fit"
    argv = fit_args(
        pretrained, photos, fit, "--seed", "7", "--test", str(photos), *common, model=model, epochs="2", lr="0.05"
    )
    assert main(argv) == 0
    state = fit / "adapted.safetensors"
    assert main(["eval", "--adapted", str(state), "--test", str(photos), "--out", str(tmp_path / "e"), *common]) == 0
    assert main(["predict", "--adapted", str(state), "--data", str(photos), "--out", str(tmp_path / "p"), *common]) == 0
    fitted = scores_by_path(fit / "predictions.csv")
    assert len(fitted) == 2 * len(SIZES)
    for other in (tmp_path / "e" / "predictions.csv", tmp_path / "p" / "predictions.csv"):
        got = scores_by_path(other)
        assert got.keys() == fitted.keys()
        for path, (decision, score) in fitted.items():
            assert got[path][0] == decision and got[path][1] == pytest.approx(score, abs=2e-6), path
    classifier = ueo.load_adapted(state, device="cpu")
    paths = sorted(fitted)
    worst = 0.0
    for path, prediction in zip(paths, classifier.predict(paths)):
        worst = max(worst, abs(prediction.score - fitted[path][1]))
        assert prediction.score == pytest.approx(fitted[path][1], abs=AGAINST_FILES[fmt]), path
        assert prediction.label == fitted[path][0] or abs(fitted[path][1] - classifier.threshold) < AGAINST_FILES[fmt]
    print(f"{fmt}: load_adapted's scores within {worst:.2g} of the run's")
    if pretrained == "none":  # what rebuilt the model: the seed the state recorded
        assert ueo.AdaptedState.load(state).weights_identity == {"random": 7}
        assert classifier.bundle.identity == {"random": 7}


def test_a_state_is_refused_on_other_weights_of_the_same_file_name(photos, tmp_path, tiny_vit_weights, capsys):
    """Every open_clip checkpoint on the hub is called open_clip_model.safetensors: the name says nothing."""
    first, second = tmp_path / "a" / "open_clip_model.safetensors", tmp_path / "b" / "open_clip_model.safetensors"
    first.parent.mkdir()
    second.parent.mkdir()
    shutil.copy(tiny_vit_weights, first)
    other = ueo.load_clip("ueo-tiny-vit", device="cpu", seed=11).model.state_dict()
    save_file({k: v.contiguous() for k, v in other.items()}, str(second))
    out = tmp_path / "fit"
    assert main(fit_args(first, photos, out)) == 0
    state = out / "adapted.safetensors"
    capsys.readouterr()
    argv = ["predict", "--adapted", str(state), "--data", str(photos), "--pretrained", str(second), "--device", "cpu"]
    assert main([*argv, "--out", str(tmp_path / "p"), "--quiet"]) == 2
    message = capsys.readouterr().err
    identities = [ueo.model.clip.file_identity(first), ueo.model.clip.file_identity(second)]
    assert "another model" in message and all(i["sha256_ends"] in message for i in identities), message
    assert not (tmp_path / "p").exists()  # refused before anything was written
    with pytest.raises(ueo.IncompatibleError, match="another model"):
        ueo.load_adapted(state, device="cpu", pretrained=str(second))
    # a copy of the same weights elsewhere is the same model
    moved = tmp_path / "c" / "renamed.safetensors"
    moved.parent.mkdir()
    shutil.copy(first, moved)
    assert ueo.load_adapted(state, device="cpu", pretrained=str(moved)).bundle.identity["bytes"] == first.stat().st_size


def test_the_export_records_the_weights_it_was_made_from(photos, tmp_path):
    out = tmp_path / "fit"
    assert main(fit_args("none", photos, out, "--seed", "5")) == 0
    assert main(["export", "--adapted", str(out / "adapted.safetensors"), "--out", str(tmp_path / "x")]) == 0
    from safetensors import safe_open

    with safe_open(str(tmp_path / "x" / "classifier.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["weights_identity"]) == {"random": 5}
        assert f.get_tensor("text_features").dtype == torch.float32


def test_weights_whose_ends_are_unchanged_are_still_other_weights(photos, tmp_path, tiny_vit_weights, capsys):
    """A fine-tune of the middle of a checkpoint (the same size, the same first and last MiB) is another model:
    the whole file is hashed (once per state of the file, remembered beside the decode cache)."""
    import hashlib
    import os

    first = tmp_path / "weights.safetensors"
    shutil.copy(tiny_vit_weights, first)
    data = bytearray(first.read_bytes())
    middle = len(data) // 2 & ~3  # a float32 in the middle of the file: its lowest bits changed
    for at in range(middle, middle + 4096, 4):
        data[at] ^= 1
    second = tmp_path / "tuned.safetensors"
    second.write_bytes(bytes(data))
    a, b = ueo.model.clip.file_identity(first), ueo.model.clip.file_identity(second)
    assert a["bytes"] == b["bytes"] and a["sha256_ends"] == b["sha256_ends"]  # what was compared before
    assert a["sha256"] == hashlib.sha256(first.read_bytes()).hexdigest() != b["sha256"]
    memo = json.loads((__import__("pathlib").Path(os.environ["UEO_CACHE_DIR"]) / "digests.json").read_text())
    assert a["sha256"] in memo.values() and b["sha256"] in memo.values()
    out = tmp_path / "fit"
    assert main(fit_args(first, photos, out, "--no-discover")) == 0
    capsys.readouterr()
    argv = ["predict", "--adapted", str(out / "adapted.safetensors"), "--data", str(photos), "--device", "cpu"]
    assert main([*argv, "--pretrained", str(second), "--out", str(tmp_path / "p"), "--quiet"]) == 2
    assert "another model" in capsys.readouterr().err and not (tmp_path / "p").exists()
