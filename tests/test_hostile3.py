"""Hostile input, round 3: no stale pixels, no wrong weights, no lost or double-counted runs. Each case
ends with exit 0 (right results), 2 or 3 and a message, never a traceback, never silently wrong."""

import fcntl
import json
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

import ueo.builder as builder_module
import ueo.cache as cache_module
import ueo.shards as shards_module
from helpers import fit_args, make_folder, odd_images, read_csv
from ueo.cli import main
from ueo.data import read_folder
from ueo.imagelist import fingerprint


def run(capsys, args):
    code = main(args)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err, captured.err
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, tiny_vit_weights):
    data = make_folder(tmp_path_factory.mktemp("hostile3") / "data", ext="bmp")
    out = data.parent / "run"
    assert main(fit_args(tiny_vit_weights, data, out, "--test", str(data), epochs="2", lr="0.05")) == 0
    return data, out


# ----------------------------------------------------------------------------------- 1. stale pixels
def repaint_keeping_size_and_mtime(path, seed):
    """Replace a file's pixels with others of the same size and restore its modification time, as
    extracting a corrected release over the old one does (tar restores modification times)."""
    stat = os.stat(path)
    with Image.open(path) as image:
        size = image.size
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(path).st_size == stat.st_size and os.stat(path).st_mtime_ns == stat.st_mtime_ns


@pytest.mark.slow
def test_a_file_rewritten_with_its_old_size_and_mtime_is_decoded_again(fitted, tmp_path, capsys, counted):
    data, run_dir = fitted
    copy = shutil.copytree(data, tmp_path / "data")
    state = str(run_dir / "adapted.safetensors")

    def predict(out, *extra):
        code, _, _ = run(capsys, ["predict", "--adapted", state, "--data", str(copy), "--out", str(out), *extra])
        assert code == 0
        return {row["path"]: row["score"] for row in read_csv(out / "predictions.csv")}

    before = predict(tmp_path / "p1")
    images = read_folder(copy, ["cat", "dog"])
    identity = fingerprint(images)
    for i, path in enumerate(images.paths[:3]):
        repaint_keeping_size_and_mtime(path, seed=100 + i)
    decoded = counted["n"]
    after = predict(tmp_path / "p2")
    assert counted["n"] == decoded + 3  # exactly the three rewritten files are decoded again
    truth = predict(tmp_path / "p3", "--no-cache")
    assert after == truth and sum(after[str(p)] != before[str(p)] for p in images.paths[:3]) == 3
    assert fingerprint(images) != identity  # a resume over these files is refused as other data


# -------------------------------------------------------------------------------- 3. --out is taken first
def test_the_output_folder_is_taken_before_any_work(fitted, tmp_path, capsys, counted, tiny_vit_weights):
    data, _ = fitted
    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".ueo.lock", "a") as held:  # another ueo command holds the folder
        fcntl.flock(held, fcntl.LOCK_EX)
        code, _, err = run(capsys, fit_args(tiny_vit_weights, data, out, classes="cat,dog"))
    assert code == 2 and "in use by another ueo run" in err and counted["n"] == 0


@pytest.mark.slow
def test_a_run_that_finishes_meanwhile_is_never_overwritten(fitted, tmp_path, capsys, monkeypatch, tiny_vit_weights):
    """A slow run takes the folder first; a second run into it, started while the first decodes, is
    refused at once, and the first run's outputs are its own."""
    data, _ = fitted
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
    code, _, _ = run(capsys, fit_args(tiny_vit_weights, copy, out, classes="cat,dog"))
    assert code == 0 and second[0][0] == 2 and "in use by another ueo run" in second[0][1]
    assert json.loads((out / "metrics.json").read_text())["num_adaptation_images"] == 12


def test_a_refused_command_leaves_no_folder_behind(fitted, tmp_path, capsys):
    _, run_dir = fitted
    out = tmp_path / "new" / "place"
    code, _, err = run(
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


# ------------------------------------------------------------------------- 4, 5, 8. tables count each run once
def test_report_counts_each_run_once_and_tells_different_data_apart(tmp_path, capsys, tiny_vit_weights):
    """The same folder twice, overlapping folders and a backup copy are one run; Office-31's own layout
    (amazon/images, webcam/images) gives two rows, not one "images" row averaged as seeds."""
    runs = tmp_path / "runs"
    for domain, seed in (("amazon", 0), ("webcam", 1)):
        data = make_folder(tmp_path / "office31" / domain / "images", seed=seed, ext="bmp")
        out = runs / domain
        assert main(fit_args(tiny_vit_weights, data, out, "--test", str(data), epochs="1", lr="0.05")) == 0
    shutil.copytree(runs / "amazon", tmp_path / "backup" / "amazon")
    code, out, err = run(
        capsys,
        [
            "report",
            str(runs),
            str(runs),
            str(runs / "amazon"),
            str(tmp_path / "backup"),
            "--out",
            str(tmp_path / "t.md"),
        ],
    )
    assert code == 0 and "2 runs" in out and "the same run as" in err
    rows = read_csv(tmp_path / "t.csv")
    assert sorted(r["domain"] for r in rows) == ["amazon/images", "webcam/images"] and {r["runs"] for r in rows} == {
        "1"
    }


def test_bench_runs_a_repeated_seed_once(tmp_path, capsys, tiny_vit_weights):
    root = tmp_path / "office31"
    for i, name in enumerate(["back_pack", "bike", "bike_helmet"]):
        make_folder(root / "amazon" / "images", classes=(name,), seed=i, ext="bmp")
    args = ["bench", "--benchmark", "office31", "--root", str(root), "--domains", "amazon", "--scenarios", "opda"]
    args += ["--methods", "zeroshot", "--seeds", "1", "1", "--model", "ueo-tiny-vit", "--pretrained", tiny_vit_weights]
    code, _, err = run(capsys, [*args, "--device", "cpu", "--out", str(tmp_path / "bench"), "--quiet"])
    assert code == 0 and "--seeds names 1 more than once" in err
    assert "| office31 | amazon | opda | zeroshot | 1 |" in (tmp_path / "bench" / "table.md").read_text()


def test_report_does_not_replace_an_html_file_that_is_not_its_table(fitted, tmp_path, capsys):
    _, run_dir = fitted
    page = run_dir / "report.html"
    before = page.read_bytes()
    code, _, err = run(capsys, ["report", str(run_dir), "--out", str(run_dir / "report.md")])
    assert code == 2 and "report.html exists and is not a table" in err and page.read_bytes() == before


# ------------------------------------------------------------------------------- 10. the rejection label
@pytest.mark.parametrize("classes", ["cat,unknown", "cat,Unknown"])
def test_a_class_named_unknown_is_refused(fitted, tmp_path, capsys, classes, tiny_vit_weights):
    data, _ = fitted
    code, _, err = run(capsys, fit_args(tiny_vit_weights, data, tmp_path / "o", classes=classes))
    assert code == 2 and "is what ueo calls an image of no listed class" in err and not (tmp_path / "o").exists()
    import ueo

    with pytest.raises(ueo.DataError, match="what ueo calls"):
        ueo.fit(ueo.load_clip("ueo-tiny-vit", device="cpu"), ["cat", "UNKNOWN"], [(Image.new("RGB", (9, 9)), 0)])


# ------------------------------------------------------------------ 7, 9. one image, one decision, any format
def test_a_path_and_the_same_image_as_pil_decide_alike(fitted, tmp_path, tiny_vit_weights):
    import ueo

    _, run_dir = fitted
    classifier = ueo.load_adapted(run_dir / "adapted.safetensors", device="cpu", pretrained=tiny_vit_weights)
    paths = odd_images(tmp_path / "odd")
    from_files = classifier.similarities(paths).cosines
    from_pil = classifier.similarities([Image.open(p) for p in paths]).cosines
    assert np.allclose(from_files.numpy(), from_pil.numpy(), atol=1e-6)


def test_float_and_32_bit_images_are_not_black(tmp_path):
    from ueo.images import load_image

    paths = {p.name: p for p in odd_images(tmp_path / "odd")}
    for name in ("float.tif", "int32.tif", "deep.png"):
        pixels = np.asarray(load_image(paths[name]), dtype=float)
        assert pixels.min() <= 2 and pixels.max() >= 250 and 100 < pixels.mean() < 155, name  # a full ramp
    assert load_image(paths["rotated.jpg"]).size == (40, 60)  # turned as the EXIF tag says
    alpha = np.asarray(load_image(paths["alpha.png"]))
    assert (alpha[:, :30] == 255).all()  # transparent pixels over white


# ------------------------------------------------------------------------------ the decode cache, continued
def test_a_permission_error_is_not_remembered(tmp_path, monkeypatch):
    """An error of the operating system (here: permission denied, as a chmod 000 file gives) may be gone the
    next time: it is not kept in the cache, unlike a file that is not an image."""
    import errno

    from ueo.cache import DecodeCache

    data = make_folder(tmp_path / "data", classes=("cat",), n=2, ext="bmp")
    (data / "cat" / "text.jpg").write_text("not an image")
    images = read_folder(data, ["cat"])
    real = builder_module.decode

    def refused(path, short_side):
        if path == images.paths[0]:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, short_side)

    monkeypatch.setattr(builder_module, "decode", refused)
    _, problems = DecodeCache(tmp_path / "cache").ensure(images, 64)
    assert "Permission denied" in problems[0] and "cannot identify" in problems[2]
    monkeypatch.setattr(builder_module, "decode", real)  # chmod 644: readable again
    pixels, problems = DecodeCache(tmp_path / "cache").ensure(images, 64)
    assert list(problems) == [2] and len(pixels) == 2


def test_a_hung_builder_is_waited_for_only_so_long(tmp_path, monkeypatch):
    from ueo.cache import DecodeCache

    images = read_folder(make_folder(tmp_path / "data", classes=("cat",), n=3, ext="bmp"), ["cat"])
    cache = DecodeCache(tmp_path / "cache", warn=(said := []).append)
    folder = cache.folder(64)
    folder.mkdir(parents=True)
    monkeypatch.setattr(shards_module, "LOCK_WAIT", 0.0)
    lock = shards_module.lock_file(folder, shards_module.collection_of(cache_module.file_key(p) for p in images.paths))
    lock.parent.mkdir()
    with open(lock, "a") as held:  # another process builds this collection, and does not finish
        fcntl.flock(held, fcntl.LOCK_EX)
        pixels, problems = cache.ensure(images, 64)
    assert problems == {} and len(pixels) == 3 and "still holds the decode cache" in said[-1]
    again, _ = DecodeCache(tmp_path / "cache").ensure(images, 64)  # what it wrote is a valid cache
    assert all((pixels.image(i) == again.image(i)).all() for i in range(3))


@pytest.mark.slow
@pytest.mark.parametrize("where", ["under-a-file", "full-disk"])
def test_a_cache_that_cannot_be_written_falls_back_to_memory(fitted, tmp_path, capsys, monkeypatch, where):
    import errno

    data, run_dir = fitted
    if where == "under-a-file":
        (tmp_path / "file").write_text("x")
        cache = tmp_path / "file" / "cache"
    else:
        cache = tmp_path / "cache"

        def full(fd):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(cache_module.os, "fsync", full)
    args = ["predict", "--adapted", str(run_dir / "adapted.safetensors"), "--data", str(data)]
    code, _, err = run(capsys, [*args, "--cache-dir", str(cache), "--out", str(tmp_path / "p")])
    assert code == 0 and "decode cache cannot be written" in err and "--cache-dir" in err
    assert len(read_csv(tmp_path / "p" / "predictions.csv")) == 12


# --------------------------------------------------------------------------------- other defects
@pytest.mark.slow
def test_class_names_with_dollars_and_many_classes_do_not_break_the_plots(tmp_path, capsys, tiny_vit_weights):
    names = ["a$$b", "c$d"] + [f"thing {i}" for i in range(250)]  # 252 classes: no K x K picture
    data = make_folder(tmp_path / "data", classes=("a$$b", "c$d"), n=3, ext="bmp")
    (tmp_path / "classes.txt").write_text("\n".join(names) + "\n")
    out = tmp_path / "run"
    code, _, err = run(
        capsys, fit_args(tiny_vit_weights, data, out, "--test", str(data), classes=str(tmp_path / "classes.txt"))
    )
    assert code == 0, err
    assert not (out / "confusion.png").exists() and 'src="confusion.png"' not in (out / "report.html").read_text()
    few = tmp_path / "few"
    code, _, err = run(capsys, fit_args(tiny_vit_weights, data, few, "--test", str(data), classes="a$$b,c$d"))
    assert code == 0 and Image.open(few / "confusion.png").size[0] > 100, err


def test_a_diverged_run_leaves_a_state_that_decides_like_a_finished_one(fitted, tmp_path, capsys, tiny_vit_weights):
    data, _ = fitted
    out = tmp_path / "run"
    code, _, err = run(capsys, fit_args(tiny_vit_weights, data, out, classes="cat,dog", lr="1e30"))
    assert code == 3 and "the loss became" in err.lower()
    args = ["predict", "--adapted", str(out / "adapted.safetensors"), "--data", str(data), "--out", str(tmp_path / "p")]
    code, _, err = run(capsys, args)
    assert code == 0 and "older ueo" not in err and "no fitted threshold" not in err


def test_a_checkpoint_with_flipped_bits_is_refused(fitted, tmp_path, capsys, tiny_vit_weights):
    from ueo import load_checkpoint, save_checkpoint

    data, _ = fitted
    out = tmp_path / "run"
    assert main(fit_args(tiny_vit_weights, data, out, classes="cat,dog", epochs="2")) == 0
    checkpoint = load_checkpoint(out / "checkpoint.safetensors")
    checkpoint["tensors"]["param/prompt.ctx"][0, 0] = 2e37  # an exponent bit flipped
    (out / "metrics.json").unlink()
    save_checkpoint(out / "checkpoint.safetensors", checkpoint)
    code, _, err = run(capsys, ["fit", "--resume", str(out), "--quiet"])
    assert code == 2 and "far beyond any tuned value" in err


def test_metrics_json_is_written_last_and_resume_finishes_the_page(
    fitted, tmp_path, capsys, monkeypatch, tiny_vit_weights
):
    import errno

    import ueo.cli.fit as fit_module

    data, _ = fitted
    out = tmp_path / "run"
    real = fit_module.write_run_report

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "report.html"))

    monkeypatch.setattr(fit_module, "write_run_report", full)
    code, _, err = run(capsys, fit_args(tiny_vit_weights, data, out, "--test", str(data), classes="cat,dog"))
    assert code == 2 and "No space left" in err and not (out / "metrics.json").exists()
    monkeypatch.setattr(fit_module, "write_run_report", real)
    code, _, _ = run(capsys, ["fit", "--resume", str(out), "--quiet"])
    assert code == 0 and (out / "report.html").is_file() and (out / "metrics.json").is_file()


@pytest.mark.parametrize(
    "damage",
    [{"adapted": {"pacc": "high"}}, {"threshold": [0.1]}, [1, 2, 3], {"adapted": {"pacc": 0.5}, "run": "x"}],
)
def test_report_leaves_out_damaged_metrics_with_a_reason(fitted, tmp_path, capsys, damage):
    _, run_dir = fitted
    copy = shutil.copytree(run_dir, tmp_path / "runs" / "damaged")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    record = {**metrics, **damage} if isinstance(damage, dict) else damage
    (copy / "metrics.json").write_text(json.dumps(record))
    code, _, err = run(capsys, ["report", str(run_dir), str(copy), "--out", str(tmp_path / "t.md")])
    assert code == 0 and "damaged" in err
    code, _, err = run(capsys, ["report", "--html", str(copy)])
    assert code == 2 and "damaged" in err


def test_a_config_with_a_key_given_twice_is_refused(fitted, tmp_path, capsys, tiny_vit_weights):
    data, _ = fitted
    (tmp_path / "c.yaml").write_text("epochs: 1\nbatch_size: 4\nepochs: 3\n")
    args = fit_args(tiny_vit_weights, data, tmp_path / "o", "--config", str(tmp_path / "c.yaml"))
    code, _, err = run(capsys, args)
    assert code == 2 and "'epochs' is given twice" in err and "line 3" in err


def test_large_images_under_pils_own_limit_are_read(tmp_path, monkeypatch):
    from ueo.images import load_image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # as if 89.5 Mpx were 1,000 pixels
    Image.new("RGB", (40, 40), (9, 9, 9)).save(tmp_path / "big.png")  # 1,600: over the warning, under 2x
    Image.new("RGB", (50, 50), (9, 9, 9)).save(tmp_path / "bomb.png")  # 2,500: over PIL's own error limit
    assert load_image(tmp_path / "big.png").size == (40, 40)
    with pytest.raises(Image.DecompressionBombError):
        load_image(tmp_path / "bomb.png")


# ------------------------------------------------------------------------------------- the Python API
@pytest.mark.parametrize(
    "images, message",
    [
        (None, "got NoneType"),
        (np.zeros((4, 32, 32, 3), dtype=np.uint8), "PIL.Image.fromarray"),
        (7, "got int"),
        (["a.jpg", 3], "image 1 is a int"),
        ("torch-shape", "got torch.float32 \\[3, 20, 20\\]"),
        ("torch-nan", "NaN"),
        ("torch-2d", "\\[B, 3, S, S\\] or \\[3, S, S\\]"),
    ],
)
def test_bad_inputs_to_the_classifier_are_named(fitted, tiny_vit_weights, images, message):
    import torch

    import ueo

    _, run_dir = fitted
    classifier = ueo.load_adapted(run_dir / "adapted.safetensors", device="cpu", pretrained=tiny_vit_weights)
    made = {
        "torch-shape": lambda: torch.zeros(2, 3, 20, 20),
        "torch-nan": lambda: torch.full((2, 3, 32, 32), float("nan")),
        "torch-2d": lambda: torch.zeros(32, 32),
    }
    if isinstance(images, str) and images in made:
        images = made[images]()
    with pytest.raises(ueo.DataError, match=message):
        classifier.predict(images)


def test_float16_and_float64_tensor_batches_score_as_float32(fitted, tiny_vit_weights):
    """Found by benchmarks/hostile_probe.py: a float64 batch passed the checks, then failed in the model."""
    import torch

    import ueo

    _, run_dir = fitted
    classifier = ueo.load_adapted(run_dir / "adapted.safetensors", device="cpu", pretrained=tiny_vit_weights)
    size = classifier.bundle.image_size
    batch = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    reference = classifier.similarities(batch).cosines
    assert torch.equal(classifier.similarities(batch.double()).cosines, reference)
    assert torch.allclose(classifier.similarities(batch.half()).cosines, reference, atol=5e-3)
    _, outputs = ueo.evaluate(classifier.bundle, [(image.double(), 0) for image in batch], class_names=["cat", "dog"])
    assert outputs.cosines.shape == (3, 2)


def test_one_unreadable_file_among_many_is_named_and_generators_work(fitted, tmp_path, tiny_vit_weights):
    import ueo

    data, run_dir = fitted
    classifier = ueo.load_adapted(run_dir / "adapted.safetensors", device="cpu", pretrained=tiny_vit_weights)
    paths = read_folder(data, ["cat", "dog"]).paths
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(paths[0].read_bytes()[:40])
    with pytest.raises(ueo.DataError, match=r"broken\.jpg: unreadable image"):
        classifier.predict([*paths, broken])
    assert len(classifier.predict(p for p in paths)) == len(paths)


# ----------------------------------------------------------------------------------------- signals
def test_ctrl_c_while_predict_decodes_says_what_is_left(fitted, tmp_path, capsys, monkeypatch):
    import signal

    data, run_dir = fitted
    copy = shutil.copytree(data, tmp_path / "data")
    real = builder_module.decode

    once, heard = threading.Lock(), threading.Event()
    from ueo.cli import stop as stop_module

    real_heard = stop_module.StopRequest._heard

    def hear(self, signum, frame):  # the command's own handler, which also tells the test it ran
        real_heard(self, signum, frame)
        heard.set()

    def decode(path, short_side):
        if once.acquire(blocking=False):  # ctrl-C, once, while the cache is built, before its first shard
            os.kill(os.getpid(), signal.SIGINT)
            assert heard.wait(timeout=60)  # the stop is heard before this decode (and the others) go on
        return real(path, short_side)

    monkeypatch.setattr(stop_module.StopRequest, "_heard", hear)
    monkeypatch.setattr(builder_module, "decode", decode)
    args = ["predict", "--adapted", str(run_dir / "adapted.safetensors"), "--data", str(copy)]
    code, _, err = run(capsys, [*args, "--out", str(tmp_path / "p"), "--quiet"])
    assert code == 130 and "stopped while decoding" in err and "incomplete" in err


def test_ctrl_c_during_export_says_what_is_left(fitted, tmp_path, capsys, monkeypatch):
    import signal

    import ueo.cli.apply as apply_module

    _, run_dir = fitted
    real = apply_module.state_and_bundle

    def loading(args):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(args)

    monkeypatch.setattr(apply_module, "state_and_bundle", loading)
    code, _, err = run(
        capsys, ["export", "--adapted", str(run_dir / "adapted.safetensors"), "--out", str(tmp_path / "x")]
    )
    assert code == 143 and "incomplete" in err and not (tmp_path / "x" / "classifier.safetensors").exists()
