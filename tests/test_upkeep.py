"""The cache's housekeeping touches only what ueo wrote: `ueo cache` refuses a folder that is not ueo's cache
and leaves a user's files in one; its bound is checked and can be set; builders of different collections do
not wait for each other; a stream's images are known by their bytes; a cache that cannot be written costs
time, never a run."""

import fcntl
import json
import os

import numpy as np
import pytest

import ueo
from helpers import make_folder, photo, run_cli
from ueo.data.folders import read_folder
from ueo.images.cache import DecodeCache, file_key

SIDE = 128


@pytest.fixture
def cache(tmp_path):
    """A decode cache with the shards of one small collection."""
    images = read_folder(make_folder(tmp_path / "data", classes=("cat", "dog"), n=3), ["cat", "dog"])
    DecodeCache(tmp_path / "cache").ensure(images, SIDE)
    return tmp_path / "cache"


def test_clear_refuses_a_folder_that_is_not_a_ueo_cache(tmp_path, capsys):
    mine = tmp_path / "mine"
    (mine / "vocabulary").mkdir(parents=True)
    (mine / "vocabulary" / "notes.txt").write_text("my notes")
    (mine / "v3" / "short448").mkdir(parents=True)
    (mine / "v3" / "short448" / "notes.shard").write_text("mine too")
    for action in ("clear", "prune"):
        code, _, err = run_cli(capsys, ["cache", action, "--cache-dir", mine])
        assert code == 2 and "is not a ueo cache" in err
    assert (mine / "vocabulary" / "notes.txt").read_text() == "my notes"
    assert (mine / "v3" / "short448" / "notes.shard").read_text() == "mine too"


def test_an_empty_cache_dir_is_refused_by_every_command(tmp_path, capsys, tiny_vit_weights):
    code, _, err = run_cli(capsys, ["cache", "clear", "--cache-dir", ""])
    assert code == 2 and "--cache-dir is empty" in err
    from helpers import fit_args

    data = make_folder(tmp_path / "data", classes=("cat",), n=2)
    code, _, err = run_cli(capsys, fit_args(tiny_vit_weights, data, tmp_path / "out", "--cache-dir", ""))
    assert code == 2 and "--cache-dir is empty" in err and not (tmp_path / "out").exists()


def test_prune_and_clear_leave_a_users_files_in_a_cache(cache, capsys):
    folder = next(cache.glob("v3/short*"))
    (folder / "notes.shard").write_text("a user's file")
    (cache / "vacation" / "shortcuts").mkdir(parents=True)  # "v*/short*" in a loose reading
    (cache / "vacation" / "shortcuts" / "photo.txt").write_text("keep")
    (cache / "vocabulary").mkdir()
    (cache / "vocabulary" / "names.txt").write_text("my names")
    damaged = folder / ("0" * 32 + ".shard")
    damaged.write_bytes(b"UEOSHRD3 broken")  # a shard of ueo's, damaged: removed
    code, out, _ = run_cli(capsys, ["cache", "prune", "--cache-dir", cache])
    assert code == 0 and "1 shard(s) removed" in out and not damaged.exists()
    code, out, _ = run_cli(capsys, ["cache", "clear", "--cache-dir", cache])
    assert code == 0 and not list(folder.glob("[0-9a-f]*.shard"))
    assert (folder / "notes.shard").read_text() == "a user's file"
    assert (cache / "vacation" / "shortcuts" / "photo.txt").read_text() == "keep"
    assert (cache / "vocabulary" / "names.txt").read_text() == "my names"


def test_a_hand_edited_bound_is_not_used_and_the_bound_can_be_set(cache, tmp_path, capsys):
    (cache / "settings.json").write_text(json.dumps({"max_size": -1, "why": "edited"}))
    shards = sorted(cache.rglob("*.shard"))
    more = read_folder(make_folder(tmp_path / "more", classes=("cat",), n=2, seed=5), ["cat"])
    warned = []
    DecodeCache(cache, warn=warned.append).ensure(more, SIDE)
    assert all(p.exists() for p in shards)  # -1 would have evicted everything
    assert any("does not hold a bound" in w for w in warned)
    code, out, _ = run_cli(capsys, ["cache", "bound", "20MB", "--cache-dir", cache])
    assert code == 0 and "0.020 GB" in out
    assert json.loads((cache / "settings.json").read_text())["max_size"] == 20_000_000
    code, out, _ = run_cli(capsys, ["cache", "bound", "--cache-dir", cache])
    assert code == 0 and "bounded at 0.020 GB" in out and "ueo cache bound" in out
    code, _, err = run_cli(capsys, ["cache", "bound", "10", "--cache-dir", cache])
    assert code == 2 and "at least 1 MB" in err


def test_a_builder_of_another_collection_is_not_waited_for(tmp_path):
    """A builder suspended while it holds its collection's lock does not hold up a collection of its own."""
    first = read_folder(make_folder(tmp_path / "a", classes=("cat",), n=2), ["cat"])
    other = read_folder(make_folder(tmp_path / "b", classes=("cat",), n=2, seed=3), ["cat"])
    from ueo.images.shards import collection_of, lock_file

    cache = DecodeCache(tmp_path / "cache")
    folder = cache.folder(SIDE)
    lock = lock_file(folder, collection_of(file_key(p) for p in first.paths))
    lock.parent.mkdir(parents=True)
    warned = []
    with open(lock, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # the suspended builder of the first collection
        pixels, problems = DecodeCache(tmp_path / "cache", warn=warned.append).ensure(other, SIDE)
    assert not problems and len(pixels) == 2 and not warned  # built at once, no "waiting for"


def test_a_pipe_source_is_known_by_its_bytes(tmp_path, counted):
    wds = pytest.importorskip("webdataset")

    def write(seed):
        with wds.TarWriter(str(tmp_path / "s.tar")) as sink:
            for i in range(3):
                sink.write({"__key__": f"k{i}", "png": photo(50, 40, seed=seed + i)})

    write(0)
    spec = f"pipe:cat {tmp_path / 's.tar'}"
    before = ueo.read_images(spec, ["cat"])
    DecodeCache(tmp_path / "cache").ensure(before, SIDE)
    decoded = counted["n"]
    write(100)  # other pixels behind the same command, under the same names
    after = ueo.read_images(spec, ["cat"])
    assert [m.name for m in after.paths] == [m.name for m in before.paths]
    assert {m.identity() for m in after.paths}.isdisjoint(m.identity() for m in before.paths)
    pixels, _ = DecodeCache(tmp_path / "cache").ensure(after, SIDE)
    assert counted["n"] == decoded + 3  # decoded again: the new pixels
    want = np.asarray(photo(50, 40, seed=100).convert("RGB")).transpose(2, 0, 1)
    assert np.array_equal(pixels.image(0).numpy(), want)
    from ueo.data.imagelist import fingerprint

    assert fingerprint(after) != fingerprint(before)  # `ueo fit --resume` refuses it as other data


def test_vocabulary_features_that_cannot_be_kept_cost_a_warning_only(tmp_path, capsys):
    from ueo.experiments.toyworld import CLASS_NAMES, TARGET_STYLE, render

    data = tmp_path / "data"
    for label in (0, 1, 16):
        (data / CLASS_NAMES[label]).mkdir(parents=True)
        for i in range(6):
            render(TARGET_STYLE, label, i).save(data / CLASS_NAMES[label] / f"{i}.png")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "vocabulary").write_text("a file where the folder would go")  # writing into it fails
    names = tmp_path / "names.txt"
    names.write_text("\n".join(CLASS_NAMES) + "\n")
    argv = ["fit", "--model", "ueo-toy-rn", "--pretrained", "toyworld", "--device", "cpu", "--data", data]
    argv += ["--classes", ",".join(CLASS_NAMES[:2]), "--epochs", "1", "--batch-size", "8", "--quiet"]
    argv += ["--vocabulary", names, "--cache-dir", cache, "--threshold", "0.9"]
    for attempt in ("first", "again"):
        code, _, err = run_cli(capsys, [*argv, "--out", tmp_path / attempt])
        assert code == 0 and "cannot be kept" in err
        assert (tmp_path / attempt / "metrics.json").is_file() and (tmp_path / attempt / "report.html").is_file()
    assert os.path.isfile(cache / "vocabulary")
