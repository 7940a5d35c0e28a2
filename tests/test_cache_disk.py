"""A decode cache that fits on the disk: JPEG entries, a bound with least-recently-used eviction that never
removes a shard in use (two processes), a free-space floor, and `ueo cache info|prune|clear`."""

import errno
import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ueo.images.builder as builder_module
import ueo.images.cache as cache_module
import ueo.images.shards as shards_module
from helpers import fit_args, make_folder, photo, psnr, read_csv, run_cli
from ueo.data.folders import read_folder
from ueo.data.imagelist import fingerprint
from ueo.images.cache import DecodeCache

SIDE = 128


def write_collection(folder: Path, n: int, seed: int, size=(400, 300)) -> Path:
    """``n`` textured JPEG photos larger than the cap (stored as JPEG by default)."""
    for i in range(n):
        target = folder / ("cat" if i % 2 else "dog")
        target.mkdir(parents=True, exist_ok=True)
        photo(*size, seed=seed * 1000 + i).save(target / f"{i:04d}.jpg", quality=90)
    return folder


def shard_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*.shard"))


def test_jpeg_entries_take_a_fraction_of_raw_and_stay_close(tmp_path):
    images = read_folder(write_collection(tmp_path / "data", 12, seed=0), ["cat", "dog"])
    raw, _ = DecodeCache(tmp_path / "raw", format="raw").ensure(images, SIDE)
    jpeg, _ = DecodeCache(tmp_path / "jpeg", format="jpeg").ensure(images, SIDE)
    assert shard_bytes(tmp_path / "jpeg") < 0.4 * shard_bytes(tmp_path / "raw")
    for i in range(len(images)):
        assert jpeg.sizes[i] == raw.sizes[i] and jpeg.originals[i] == raw.originals[i]
        assert psnr(jpeg.image(i).float() / 255, raw.image(i).float() / 255) >= 36  # 37.4 measured (textured)


def test_the_default_format_is_what_fits(tmp_path):
    """auto: raw while the collection's raw size fits in half the bound, JPEG when it does not; said in one
    line and kept for `ueo cache info`."""
    images = read_folder(write_collection(tmp_path / "data", 12, seed=0), ["cat", "dog"])
    exact, _ = DecodeCache(tmp_path / "raw", format="raw").ensure(images, SIDE)
    raw_size = shard_bytes(tmp_path / "raw")
    said = []
    small, _ = DecodeCache(tmp_path / "roomy", say=said.append).ensure(images, SIDE)  # the default bound
    assert all(int(f) == shards_module.RAW for f in small.format) and not said
    assert all(torch.equal(small.image(i), exact.image(i)) for i in range(12))
    tight, _ = DecodeCache(tmp_path / "tight", say=said.append, max_size=str(int(1.5 * raw_size))).ensure(images, SIDE)
    assert all(int(f) == shards_module.JPEG for f in tight.format)
    assert shard_bytes(tmp_path / "tight") < 0.4 * raw_size
    assert len(said) == 1 and "kept as JPEG" in said[0] and "more than half its bound" in said[0]
    record = json.loads(next((tmp_path / "tight").rglob("collections/*.json")).read_text())
    assert record["format"] == "jpeg" and record["images"] == 12 and record["raw_bytes"] > 0.5 * 1.5 * raw_size
    explicit, _ = DecodeCache(tmp_path / "given", format="raw", max_size=str(int(1.5 * raw_size))).ensure(images, SIDE)
    assert all(int(f) == shards_module.RAW for f in explicit.format)  # an explicit --cache-format wins


def test_the_bound_is_respected_and_the_least_recently_used_go_first(tmp_path, monkeypatch):
    monkeypatch.setattr(builder_module, "SHARD_IMAGES", 4)
    monkeypatch.setattr(builder_module, "SHARDS_PER_BOUND", 1)  # shards of 4 images whatever the bound
    a = read_folder(write_collection(tmp_path / "a", 8, seed=2), ["cat", "dog"])
    b = read_folder(write_collection(tmp_path / "b", 8, seed=3), ["cat", "dog"])
    DecodeCache(tmp_path / "probe", format="raw").ensure(a, SIDE)
    one = shard_bytes(tmp_path / "probe") / 2  # about the size of a shard of 4 images
    limit = int(3.2 * one)  # room for three shards of the four that a and b need
    said = []
    first = DecodeCache(tmp_path / "cache", warn=said.append, max_size=str(limit), format="raw")
    first.ensure(a, SIDE)
    a_shards = sorted((tmp_path / "cache").rglob("*.shard"))
    assert len(a_shards) == 2 and not said
    first.release()  # a's run is over: its shards may go
    os.utime(a_shards[0], ns=(1, 1))  # a_shards[0] used long ago, a_shards[1] recently
    DecodeCache(tmp_path / "cache", warn=said.append, max_size=str(limit), format="raw").ensure(b, SIDE)
    assert shard_bytes(tmp_path / "cache") <= limit
    assert not a_shards[0].exists() and a_shards[1].exists() and not said  # only the oldest made room
    assert len(list((tmp_path / "cache").rglob("*.shard"))) == 3


HOLDER = """
import sys, zlib
from ueo.images.cache import DecodeCache
from ueo.data.folders import read_folder
images = read_folder(sys.argv[1], ["cat", "dog"])
pixels, _ = DecodeCache(sys.argv[2], max_size=sys.argv[3]).ensure(images, int(sys.argv[4]))
first = [zlib.crc32(pixels.image(i).numpy().tobytes()) for i in range(len(pixels))]
print("ready", flush=True)
sys.stdin.readline()  # the other process evicts now
again = [zlib.crc32(pixels.image(i).numpy().tobytes()) for i in range(len(pixels))]
print("same" if again == first else "changed", len(pixels), flush=True)
"""


@pytest.mark.slow
def test_eviction_never_removes_a_shard_another_process_reads(tmp_path, monkeypatch):
    monkeypatch.setattr(builder_module, "SHARD_IMAGES", 4)
    a = write_collection(tmp_path / "a", 8, seed=4)
    b = read_folder(write_collection(tmp_path / "b", 8, seed=5), ["cat", "dog"])
    code = "import ueo.images.cache as c; c.SHARD_IMAGES = 4\n" + HOLDER
    cache = tmp_path / "cache"
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(a), str(cache), "1GB", str(SIDE)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"  # a is in the cache, and held
        held = sorted(cache.rglob("*.shard"))
        for path in held:
            os.utime(path, ns=(1, 1))  # the least recently used: first in line for eviction
        limit = str(shard_bytes(cache) + 1000)  # b's shards do not fit beside a's
        said = []
        pixels, problems = DecodeCache(cache, warn=said.append, max_size=limit).ensure(b, SIDE)
        assert all(p.exists() for p in held)  # in use: not evicted
        assert not problems and len(pixels) == 8  # b read from its files, with a warning
        assert len(said) == 1 and "stopped growing" in said[0] and "in use" in said[0]
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert holder.stdout.readline().split() == ["same", "8"]
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    # the holder is gone: now its shards make room
    DecodeCache(cache, max_size=limit).ensure(b, SIDE)
    assert not any(p.exists() for p in held) and shard_bytes(cache) <= int(limit)


def test_a_full_disk_during_building_the_run_finishes_and_says_the_cache_stopped(
    tmp_path, capsys, tiny_vit_weights, monkeypatch
):
    data = write_collection(tmp_path / "data", 6, seed=6)
    monkeypatch.setenv("UEO_CACHE_MIN_FREE", "1000000TB")  # whatever the disk has, it is under the floor
    args = fit_args(tiny_vit_weights, data, tmp_path / "out", "--no-report", "--no-discover")
    code, _, err = run_cli(capsys, [*args, "--cache-dir", str(tmp_path / "cache")])
    assert code == 0, err
    assert "decode cache stopped growing" in err and "floor" in err and "read from its files" in err
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["num_adaptation_images"] == 6
    assert not list((tmp_path / "cache").rglob("*.shard"))


def test_a_bad_bound_is_a_clear_error(tmp_path, capsys, tiny_vit_weights):
    data = write_collection(tmp_path / "data", 2, seed=7)
    args = fit_args(tiny_vit_weights, data, tmp_path / "out", "--cache-max-size", "lots")
    code, _, err = run_cli(capsys, [*args, "--cache-dir", str(tmp_path / "cache")])
    assert code == 2 and "--cache-max-size must be a size such as 50GB" in err and "Traceback" not in err


@pytest.mark.parametrize("text, size", [("50GB", 50 * 10**9), ("2GiB", 2 * 2**30), ("1.5M", 1_500_000), ("7", 7)])
def test_sizes_read_as_written(text, size):
    assert shards_module.parse_size(text) == size


def cache_cli(capsys, root, action):
    code, out, err = run_cli(capsys, ["cache", action, "--cache-dir", str(root)])
    assert code == 0 and "Traceback" not in err, err
    return out + err


def test_cache_commands_on_an_empty_cache(tmp_path, capsys):
    for action in ("info", "prune", "clear"):
        assert "empty" in cache_cli(capsys, tmp_path / "none", action)
    assert not (tmp_path / "none").exists()


def test_cache_commands_on_a_full_cache(tmp_path, capsys, tiny_vit_weights):
    data = write_collection(tmp_path / "data", 10, seed=8)
    args = fit_args(tiny_vit_weights, data, tmp_path / "out", "--no-report", "--no-discover")
    assert run_cli(capsys, [*args, "--cache-dir", str(tmp_path / "cache")])[0] == 0
    text = cache_cli(capsys, tmp_path / "cache", "info")
    assert "10 image(s) (0 JPEG, 10 raw), 0 unreadable" in text and "v3/short" in text and "bound:" in text
    assert "1 collection(s) kept raw" in text
    assert "1 shard(s)" in text
    photo(400, 300, seed=99).save(data / "cat" / "0001.jpg")  # changed: its entry is stale
    (data / "dog" / "0000.jpg").unlink()  # gone: its entry is stale
    text = cache_cli(capsys, tmp_path / "cache", "prune")
    assert "1 written again without their 2 stale entrie(s)" in text
    assert "8 image(s)" in cache_cli(capsys, tmp_path / "cache", "info")
    text = cache_cli(capsys, tmp_path / "cache", "prune")  # nothing more is stale
    assert "0 shard(s) removed, 0 written again" in text
    text = cache_cli(capsys, tmp_path / "cache", "clear")
    assert "1 shard(s) removed" in text and not list((tmp_path / "cache").rglob("*.shard"))
    assert "0 shard(s), 0 image(s)" in cache_cli(capsys, tmp_path / "cache", "info")


def test_cache_commands_on_a_damaged_cache(tmp_path, capsys):
    images = read_folder(write_collection(tmp_path / "data", 6, seed=9), ["cat", "dog"])
    DecodeCache(tmp_path / "cache").ensure(images, SIDE)
    shard = next((tmp_path / "cache").rglob("*.shard"))
    shard.write_bytes(shard.read_bytes()[:-100])  # truncated
    (shard.parent / ("." + "d" * 32 + ".tmp")).write_bytes(b"\0" * 10)  # named as builders name them
    old = tmp_path / "cache" / "v2" / "short128"
    old.mkdir(parents=True)
    (old / ("e" * 32 + ".shard")).write_bytes(b"an older layout")
    text = cache_cli(capsys, tmp_path / "cache", "info")
    assert "1 damaged shard(s), 1 temporary file(s)" in text and "an older version" in text
    text = cache_cli(capsys, tmp_path / "cache", "prune")
    assert "2 shard(s) removed" in text
    assert not list((tmp_path / "cache").rglob("*.shard")) and not list((tmp_path / "cache").rglob("*.tmp"))
    text = cache_cli(capsys, tmp_path / "cache", "info")
    assert "damaged" not in text and "older version" not in text


@pytest.mark.slow
def test_the_views_through_a_jpeg_cache_stay_close_to_open_clips(tmp_path):
    """ueo.evaluate through a JPEG cache against open_clip's own preprocess + encode_image (random ViT-B-32)."""
    import open_clip
    import torch.nn.functional as F
    from open_clip.transform import PreprocessCfg, image_transform_v2
    from PIL import Image

    import ueo
    from helpers import write_photos

    paths = write_photos(tmp_path / "photos")
    bundle = ueo.load_clip("ViT-B-32", pretrained=None, device="cpu", seed=1)
    names = ["cat", "dog", "house"]
    images = ueo.read_images(str(tmp_path / "photos"), ["cat", "dog"])
    files = ueo.ImageFiles(images, ueo.DecodeCache(tmp_path / "cache", format="jpeg"))
    _, outputs = ueo.evaluate(bundle, files, class_names=names, batch_size=8)
    preprocess = image_transform_v2(PreprocessCfg(**bundle.model.visual.preprocess_cfg), is_train=False)
    with torch.no_grad():
        pictures = [Image.open(p).convert("RGB") for p in images.paths]
        features = F.normalize(bundle.model.encode_image(torch.stack([preprocess(i) for i in pictures])), dim=-1)
        text = F.normalize(
            bundle.model.encode_text(open_clip.get_tokenizer("ViT-B-32")([f"a photo of a {n}." for n in names])), dim=-1
        )
    want = features @ text.T
    assert len(paths) == len(images)
    assert (outputs.cosines - want).abs().max() < 2e-3, (outputs.cosines - want).abs().max()
    assert np.array_equal(outputs.cosines.argmax(1).numpy(), want.argmax(1).numpy())


def test_batched_decoding_of_jpeg_entries_gives_what_pil_gives(tmp_path):
    """decode_batch is what places JPEG entries on a GPU (torchvision's batched decoder, with device=cuda
    there); on the CPU the same call must give PIL's pixels to a level."""
    from ueo.images.mapped import decode_batch

    images = read_folder(write_collection(tmp_path / "data", 6, seed=10), ["cat", "dog"])
    small = read_folder(write_collection(tmp_path / "small", 2, seed=11, size=(100, 80)), ["cat", "dog"])
    both = images.subset(range(6))
    both.paths += small.paths
    both.labels += small.labels
    DecodeCache(tmp_path / "cache", format="jpeg").ensure(images, SIDE)
    DecodeCache(tmp_path / "cache", format="raw").ensure(small, SIDE)
    pixels, _ = DecodeCache(tmp_path / "cache").ensure(both, SIDE)  # 6 JPEG entries, 2 raw ones
    assert [int(f) for f in pixels.format] == [1] * 6 + [0] * 2
    for got, i in zip(decode_batch(pixels, range(8), "cpu"), range(8)):
        want = pixels.image(i)
        assert got.shape == want.shape and (got.int() - want.int()).abs().max() <= 2
        assert (got.float() - want.float()).abs().mean() < 0.1


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
def test_a_file_rewritten_with_its_old_size_and_mtime_is_decoded_again(bmp_run, tmp_path, capsys, counted):
    data, run_dir = bmp_run
    copy = shutil.copytree(data, tmp_path / "data")
    state = str(run_dir / "adapted.safetensors")

    def predict(out, *extra):
        code, _, _ = run_cli(capsys, ["predict", "--adapted", state, "--data", str(copy), "--out", str(out), *extra])
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


def test_a_permission_error_is_not_remembered(tmp_path, monkeypatch):
    """An error of the operating system (here: permission denied, as a chmod 000 file gives) may be gone the
    next time: it is not kept in the cache, unlike a file that is not an image."""

    from ueo.images.cache import DecodeCache

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
    from ueo.images.cache import DecodeCache

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
def test_a_cache_that_cannot_be_written_falls_back_to_memory(bmp_run, tmp_path, capsys, monkeypatch, where):

    data, run_dir = bmp_run
    if where == "under-a-file":
        (tmp_path / "file").write_text("x")
        cache = tmp_path / "file" / "cache"
    else:
        cache = tmp_path / "cache"

        def full(fd):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(cache_module.os, "fsync", full)
    args = ["predict", "--adapted", str(run_dir / "adapted.safetensors"), "--data", str(data)]
    code, _, err = run_cli(capsys, [*args, "--cache-dir", str(cache), "--out", str(tmp_path / "p")])
    assert code == 0 and "decode cache cannot be written" in err and "--cache-dir" in err
    assert len(read_csv(tmp_path / "p" / "predictions.csv")) == 12
