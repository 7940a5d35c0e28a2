"""Using what was learned: load_adapted(...) decides as `ueo predict` does, for each image on its own, and
the export runs with open_clip alone (the README's own lines) to the same scores. The shipped toy CLIP."""

import json
import re
import subprocess
import sys

import pytest
import torch
from PIL import Image

import ueo
from helpers import PHOTO_SIZES, odd_images, read_csv, write_photos
from ueo.cli import main
from ueo.experiments import toyworld as tw

pytestmark = pytest.mark.slow  # whole fits, exports and subprocess runs (`make test-quick` leaves them out)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """A toy-world fit (painting style, open-partial) and a folder of test images of every class."""
    root = tmp_path_factory.mktemp("toy")
    for folder, (style, per_class, offset) in {"data": ("painting", 6, 0), "test": ("painting", 2, 50_000)}.items():
        for label in tw.SCENARIOS["opda"] if folder == "data" else range(24):
            target = root / folder / tw.CLASS_NAMES[label].replace(" ", "_")
            target.mkdir(parents=True)
            for i in range(per_class):
                tw.render(style, label, offset + i).save(target / f"{i}.png")
    (root / "classes.txt").write_text("\n".join(tw.CLASS_NAMES[: tw.NUM_KNOWN]) + "\n")
    assert (
        main(
            [
                "fit",
                "--model",
                "ueo-toy-rn",
                "--pretrained",
                "toyworld",
                "--device",
                "cpu",
                "--data",
                str(root / "data"),
                "--classes",
                str(root / "classes.txt"),
                "--epochs",
                "2",
                "--lr-prompt",
                "0.01",
                "--lr-norm",
                "0.01",
                "--out",
                str(root / "run"),
                "--quiet",
            ]
        )
        == 0
    )
    return root


def test_load_adapted_decides_as_ueo_predict(toy_run, tmp_path):
    adapted = toy_run / "run" / "adapted.safetensors"
    assert (
        main(
            [
                "predict",
                "--adapted",
                str(adapted),
                "--data",
                str(toy_run / "test"),
                "--out",
                str(tmp_path / "p"),
                "--device",
                "cpu",
                "--quiet",
            ]
        )
        == 0
    )
    rows = read_csv(tmp_path / "p" / "predictions.csv")
    classifier = ueo.load_adapted(adapted, device="cpu")
    assert classifier.classes == tw.CLASS_NAMES[: tw.NUM_KNOWN]
    assert classifier.threshold == json.loads((toy_run / "run" / "metrics.json").read_text())["threshold"]["threshold"]
    predictions = classifier.predict([r["path"] for r in rows])
    assert [p.label for p in predictions] == [r["prediction"] for r in rows]
    assert [p.top1 for p in predictions] == [r["top1"] for r in rows]
    assert [p.score for p in predictions] == pytest.approx([float(r["score"]) for r in rows], abs=1e-6)
    assert {r["prediction"] for r in rows} > {"unknown"}  # some decisions each way

    # one image alone gets the decision it gets in the batch; PIL images and a tensor batch too
    for index in (0, 7, len(rows) - 1):
        alone = classifier.predict(rows[index]["path"])[0]
        assert (alone.label, alone.top1) == (predictions[index].label, predictions[index].top1)
        assert alone.score == pytest.approx(predictions[index].score, abs=1e-6)
    images = [ueo.images.reading.load_image(r["path"]) for r in rows[:5]]
    assert [p.label for p in classifier.predict(images)] == [p.label for p in predictions[:5]]
    batch = torch.stack([classifier.preprocess(image) for image in images])
    scores = classifier.similarities(batch)
    assert scores.cosines.shape == (5, tw.NUM_KNOWN)
    assert torch.allclose(scores.probabilities, scores.cosines.softmax(-1))
    assert scores.probabilities.max(-1).values.tolist() == pytest.approx([p.score for p in predictions[:5]], abs=1e-6)

    classifier.threshold = 1.0  # settable: nothing reaches it
    assert {p.label for p in classifier.predict(images)} == {"unknown"}
    with pytest.raises(ueo.ConfigError, match="finite"):
        classifier.threshold = float("nan")


def test_the_export_runs_with_open_clip_alone(toy_run, tmp_path):
    out = tmp_path / "export"
    assert main(["export", "--adapted", str(toy_run / "run" / "adapted.safetensors"), "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} >= {
        "open_clip_model.safetensors",
        "open_clip_config.json",
        "classifier.safetensors",
        "README.md",
    }
    code = re.search(r"```python\n(.*?)```", (out / "README.md").read_text(), re.S).group(1)
    code = code.replace('"path/to/this/folder"', repr(str(out)))
    photos = write_photos(tmp_path / "photos", sizes=PHOTO_SIZES + [(640, 480), (480, 640)])
    odd = [p for p in odd_images(tmp_path / "odd") if p.stem in ("alpha", "rotated", "deep")]  # 8 and 16 bits
    paths = [str(p) for p in photos + odd]
    program = code + (
        "\nimport sys\nresults = [classify(p) for p in sys.argv[1:]]\n"
        "assert not any(name == 'ueo' or name.startswith('ueo.') for name in sys.modules), 'ueo was imported'\n"
        "print(json.dumps(results))\n"
    )
    done = subprocess.run([sys.executable, "-c", program, *paths], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    plain = json.loads(done.stdout.strip().splitlines()[-1])
    ours = ueo.load_adapted(toy_run / "run" / "adapted.safetensors", device="cpu").predict(paths)
    assert [label for label, _, _ in plain] == [p.label for p in ours]
    assert [top1 for _, _, top1 in plain] == [p.top1 for p in ours]
    # what the export's README says (classifier.EXPORT_AGREEMENT): images kept whole agree to rounding
    size = ueo.load_adapted(toy_run / "run" / "adapted.safetensors", device="cpu").bundle.image_size
    whole = [min(Image.open(p).size) <= 2 * size for p in paths]
    gaps = [abs(score - p.score) for (_, score, _), p in zip(plain, ours)]
    assert any(whole) and max(g for g, w in zip(gaps, whole) if w) <= 1e-5
    assert max(gaps) <= 2e-4, max(gaps)


def test_export_and_load_errors_are_clear(toy_run, tmp_path, capsys):
    assert main(["export", "--adapted", str(tmp_path / "none.safetensors"), "--out", str(tmp_path / "e")]) == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(ueo.IncompatibleError, match="made for model"):
        ueo.load_adapted(toy_run / "run" / "adapted.safetensors", device="cpu", model="ueo-tiny-rn")
    with pytest.warns(UserWarning, match="every image is accepted"):
        ueo.load_adapted(toy_run / "run" / "adapted.safetensors", device="cpu", threshold=0.01)


def test_a_state_without_a_threshold_warns(toy_run, tmp_path):
    state = ueo.AdaptedState.load(toy_run / "run" / "adapted.safetensors")
    state.threshold = None
    state.save(tmp_path / "old.safetensors")
    with pytest.warns(UserWarning, match="no fitted threshold"):
        classifier = ueo.load_adapted(tmp_path / "old.safetensors", device="cpu")
    assert classifier.threshold == pytest.approx(1 / tw.NUM_KNOWN)


def test_export_into_a_folder_with_files_of_its_names_is_refused_unless_overwrite(toy_run, tmp_path):
    classifier = ueo.load_adapted(toy_run / "run" / "adapted.safetensors", device="cpu")
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "README.md").write_text("my own notes")
    (folder / "other.txt").write_text("untouched")
    with pytest.raises(ueo.ConfigError, match=r"already holds README\.md"):
        classifier.export(folder)
    assert (folder / "README.md").read_text() == "my own notes" and not (folder / "open_clip_config.json").exists()
    classifier.export(folder, overwrite=True)
    assert "open_clip alone" in (folder / "README.md").read_text() and (folder / "other.txt").read_text() == "untouched"


def test_a_threshold_that_decides_nothing_is_warned_about_wherever_it_comes_from(toy_run, tmp_path, capsys):
    classifier = ueo.load_adapted(toy_run / "run" / "adapted.safetensors", device="cpu")
    with pytest.warns(UserWarning, match="above 1"):
        classifier.threshold = 5.0
    state = ueo.AdaptedState.load(toy_run / "run" / "adapted.safetensors")
    state.threshold = {**state.threshold, "threshold": 5.0}  # an edited state: still says "otsu"
    state.save(tmp_path / "edited.safetensors")
    with pytest.warns(UserWarning, match="above 1"):
        ueo.load_adapted(tmp_path / "edited.safetensors", device="cpu")
    argv = ["predict", "--adapted", str(tmp_path / "edited.safetensors"), "--data", str(toy_run / "test")]
    assert main([*argv, "--out", str(tmp_path / "p"), "--quiet", "--no-report", "--no-discover"]) == 0
    err = capsys.readouterr().err
    assert "stored threshold" in err and "above 1" in err
