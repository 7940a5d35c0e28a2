"""The decode cache: decoded once per collection, shared by runs and processes, safe after crashes and
damage, memory-mapped (the process's memory does not grow with the collection)."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ueo
import ueo.images.builder as builder_module
import ueo.images.cache as cache_module
import ueo.images.shards as shards_module
from ueo.data.folders import read_folder
from ueo.images.cache import DecodeCache
from ueo.images.reading import ImageFiles
from ueo.views.fastpath import Stager, decode_all, fetch, whole

pytestmark = pytest.mark.slow  # subprocess builders, memory probes, whole fits (`make test-quick` leaves them out)
SIDE = 64


def make_images(folder: Path, n: int, seed: int = 0, classes=("cat", "dog")) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(n):
        target = folder / classes[i % len(classes)]
        target.mkdir(parents=True, exist_ok=True)
        h, w = (int(v) for v in rng.integers(30, 140, size=2))
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(target / f"{i}.png")
    return folder


def pixels_of(pixels):
    return [pixels.image(i).clone() for i in range(len(pixels))]


def test_a_second_run_decodes_nothing_and_a_changed_file_is_decoded_again(tmp_path, counted):
    images = read_folder(make_images(tmp_path / "data", 12), ["cat", "dog"])
    first, problems = DecodeCache(tmp_path / "cache", format="raw").ensure(images, SIDE)
    assert counted["n"] == 12 and problems == {} and len(first) == 12
    again, _ = DecodeCache(tmp_path / "cache", format="raw").ensure(images, SIDE)  # another run: a new process's view
    assert counted["n"] == 12
    assert all(torch.equal(a, b) for a, b in zip(pixels_of(first), pixels_of(again)))
    # the same bytes as decoding in memory (the fast path without a cache)
    memory = decode_all(ImageFiles(images), SIDE)
    assert all(torch.equal(first.image(i), memory.image(i)) for i in range(12))
    assert all(min(first.sizes[i]) <= SIDE for i in range(12))

    Image.new("RGB", (50, 40), (1, 2, 3)).save(images.paths[3])  # edited: a new size and modification time
    changed, _ = DecodeCache(tmp_path / "cache", format="raw").ensure(images, SIDE)
    assert counted["n"] == 13 and torch.equal(changed.image(3), torch.tensor([1, 2, 3]).view(3, 1, 1).expand(3, 40, 50))
    other, _ = DecodeCache(tmp_path / "cache", format="raw").ensure(
        images, 2 * SIDE
    )  # another input size: its own geometry
    assert counted["n"] == 25 and max(other.sizes[0]) > SIDE


def test_unreadable_files_are_remembered(tmp_path, counted):
    folder = make_images(tmp_path / "data", 4)
    (folder / "cat" / "broken.png").write_bytes(b"not an image")
    images = read_folder(folder, ["cat", "dog"])
    pixels, problems = DecodeCache(tmp_path / "cache", format="raw").ensure(images, SIDE)
    broken = [i for i, p in enumerate(images.paths) if p.name == "broken.png"]
    assert list(problems) == broken and "cannot identify" in problems[broken[0]] and len(pixels) == 4
    counted["n"] = 0
    _, again = DecodeCache(tmp_path / "cache", format="raw").ensure(images, SIDE)
    assert again == problems and counted["n"] == 0


def build_in_process(cache_dir, data, side, out):
    """(a separate process) build the cache, write the pixel sums."""
    images = read_folder(data, ["cat", "dog"])
    pixels, _ = DecodeCache(cache_dir).ensure(images, side, threads=2)
    Path(out).write_text(json.dumps([int(pixels.image(i).sum()) for i in range(len(pixels))]))


def test_two_processes_building_at_once_share_one_valid_cache(tmp_path, counted):
    import multiprocessing

    data = make_images(tmp_path / "data", 60)
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=build_in_process, args=(tmp_path / "cache", data, SIDE, tmp_path / f"{k}.json"))
        for k in range(2)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=240)
        assert w.exitcode == 0
    sums = [json.loads((tmp_path / f"{k}.json").read_text()) for k in range(2)]
    assert sums[0] == sums[1]
    pixels, _ = DecodeCache(tmp_path / "cache", format="raw").ensure(read_folder(data, ["cat", "dog"]), SIDE)
    assert counted["n"] == 0 and [int(pixels.image(i).sum()) for i in range(60)] == sums[0]
    assert not list((tmp_path / "cache").rglob("*.tmp"))


# temporary files named as builders name them: .COLLECTION.RANDOM.tmp (and an earlier version's .RANDOM.tmp)
CUT, HALF = "." + "a" * 16 + "." + "b" * 32 + ".tmp", "." + "c" * 32 + ".tmp"


def test_a_build_killed_half_way_leaves_nothing_that_is_taken_as_valid(tmp_path, counted, monkeypatch):
    data = make_images(tmp_path / "data", 300)
    monkeypatch.setattr(builder_module, "SHARD_IMAGES", 64)
    # the builder says when its second shard is half-written (a hook in write), then waits to be killed
    code = (
        "import sys, ueo.images.builder as b, ueo.images.cache as c\nb.SHARD_IMAGES = 64\nfrom ueo.data.folders import read_folder\n"
        "real, shards = b.write_shard, []\n"
        "def write_shard(folder, records, *rest):\n"
        "    if shards:\n"
        f"        (folder / {CUT!r}).write_bytes(b'half a shard')\n"
        "        print('half', flush=True)\n"
        "        sys.stdin.readline()\n"
        "    shards.append(real(folder, records, *rest))\n"
        "    return shards[-1]\n"
        "b.write_shard = write_shard\n"
        f"c.DecodeCache({str(tmp_path / 'cache')!r}, format='raw').ensure(read_folder({str(data)!r}, ['cat', 'dog']), {SIDE}, "
        "threads=1)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    folder = DecodeCache(tmp_path / "cache", format="raw").folder(SIDE)
    assert process.stdout.readline().strip() == "half"
    process.send_signal(signal.SIGKILL)  # half-way: one shard named, the next half-written
    process.wait()
    done = len(list(folder.glob("*.shard")))
    assert done == 1
    (folder / HALF).write_bytes(b"\0" * 100)  # what a write cut short leaves (by an earlier version)
    images = read_folder(data, ["cat", "dog"])
    pixels, problems = DecodeCache(tmp_path / "cache", format="raw").ensure(images, SIDE)
    assert problems == {} and len(pixels) == 300 and counted["n"] == 300 - 64 * done
    assert not list(folder.glob("*.tmp"))
    fresh = decode_all(ImageFiles(images), SIDE)
    assert all(torch.equal(pixels.image(i), fresh.image(i)) for i in range(0, 300, 7))


def test_a_full_disk_writes_no_shard_and_the_images_are_read_from_their_files(tmp_path, monkeypatch, counted):
    images = read_folder(make_images(tmp_path / "data", 5), ["cat", "dog"])

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache_module.os, "fsync", full)
    warnings = []
    pixels, problems = DecodeCache(tmp_path / "cache", warn=warnings.append, format="raw").ensure(images, SIDE)
    folder = DecodeCache(tmp_path / "cache", format="raw").folder(SIDE)
    assert not list(folder.glob("*.shard")) and not list(folder.glob("*.tmp"))
    assert len(warnings) == 1 and "No space left" in warnings[0] and "read from their files" in warnings[0]
    memory = decode_all(ImageFiles(images), SIDE)
    decoded = counted["n"]
    assert problems == {} and all(torch.equal(pixels.image(i), memory.image(i)) for i in range(5))
    assert counted["n"] == decoded + 5 and pixels.resident_bytes == 0  # each read decodes its file; none is kept


@pytest.mark.parametrize("damage", ["truncate", "index", "pixels"])
def test_a_damaged_cache_file_is_detected_and_rebuilt(tmp_path, counted, damage):
    images = read_folder(make_images(tmp_path / "data", 6), ["cat", "dog"])
    original, _ = DecodeCache(tmp_path / "cache", format="raw").ensure(images, SIDE)
    expected = pixels_of(original)
    shard = next((tmp_path / "cache").rglob("*.shard"))
    data = bytearray(shard.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "index":
        data[-5] ^= 0xFF
    else:
        data[shards_module.HEADER.size + 10] ^= 0xFF  # a pixel of the first image
    shard.write_bytes(bytes(data))
    warnings = []
    store = DecodeCache(tmp_path / "cache", warn=warnings.append, format="raw")
    pixels, problems = store.ensure(images, SIDE)
    got = pixels_of(pixels)
    assert problems == {} and all(torch.equal(a, b) for a, b in zip(got, expected))
    assert len(warnings) == 1 and "is damaged" in warnings[0] and not shard.exists()
    assert counted["n"] == (12 if damage != "pixels" else 7)  # rebuilt, or (pixels) decoded from the file
    if damage == "pixels":  # the next run rebuilds the shard
        again, _ = DecodeCache(tmp_path / "cache", format="raw").ensure(images, SIDE)
        assert counted["n"] == 13 and all(torch.equal(a, b) for a, b in zip(pixels_of(again), expected))


def test_the_cache_writes_only_inside_its_folder(tmp_path, monkeypatch):
    data = make_images(tmp_path / "data", 4)
    monkeypatch.chdir(tmp_path)
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    DecodeCache(tmp_path / "cache", format="raw").ensure(read_folder(data, ["cat", "dog"]), SIDE)
    after = {p for p in tmp_path.rglob("*") if p not in before or p.stat().st_mtime_ns != before[p]}
    assert after and all(tmp_path / "cache" in p.parents or p == tmp_path / "cache" for p in after), after


MEMORY_PROBE = """
import json, sys
import torch
from ueo.images.cache import DecodeCache
from ueo.data.folders import read_folder


def anon():
    return int(next(line for line in open("/proc/self/status") if line.startswith("RssAnon")).split()[1])

images = read_folder(sys.argv[1], ["cat", "dog"])
store = DecodeCache(sys.argv[2])
pixels, _ = store.ensure(images, 128)
base = anon()
total = 0
for epoch in range(2):
    for i in range(len(pixels)):
        total += int(pixels.image(i)[:, ::7, ::7].sum())
print(json.dumps({"kb": anon() - base, "pixels": pixels.nbytes}))
"""


def test_reading_does_not_grow_the_process_memory_with_the_collection(tmp_path):
    rng = np.random.default_rng(0)
    for n in (100, 800):
        for i in range(n):
            folder = tmp_path / f"data{n}" / ("cat" if i % 2 else "dog")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    growth = {}
    for n in (100, 800):
        probe = [sys.executable, "-c", MEMORY_PROBE, str(tmp_path / f"data{n}"), str(tmp_path / "cache")]
        subprocess.run(probe, check=True, capture_output=True)  # builds the cache
        done = subprocess.run(probe, check=True, capture_output=True, text=True)  # only reads it
        growth[n] = json.loads(done.stdout.strip().splitlines()[-1])
    # 800 images hold 29 MB of pixels: reading them all twice adds (almost) no anonymous memory
    assert growth[800]["pixels"] > 25_000_000
    assert growth[800]["kb"] - growth[100]["kb"] < 700 * 2, growth  # < 2 KB per image, pixels are 36 KB each


def test_fit_through_the_cache_equals_fit_in_memory(tmp_path, tiny_vit):
    images = read_folder(make_images(tmp_path / "data", 16), ["cat", "dog"])
    settings = dict(epochs=2, batch_size=8, lr_prompt=0.05, lr_norm=0.05, eval_train=False, fast=True)
    cached = ueo.fit(
        tiny_vit, ["cat", "dog"], ImageFiles(images, DecodeCache(tmp_path / "c", format="raw")), **settings
    )
    memory = ueo.fit(tiny_vit, ["cat", "dog"], ImageFiles(images), **settings)
    assert [h["loss"] for h in cached.history] == [h["loss"] for h in memory.history]
    assert all(torch.equal(cached.adapted.tensors[k], v) for k, v in memory.adapted.tensors.items())


def test_the_stager_sends_what_a_direct_copy_sends(tmp_path):
    images = read_folder(make_images(tmp_path / "data", 10), ["cat", "dog"])
    pixels, _ = DecodeCache(tmp_path / "cache", format="raw").ensure(images, SIDE)
    stager = Stager(pixels, "cpu", pin=False)
    for indices in ([3, 1, 4], [9], [0, 2, 5, 7, 8, 6]):
        regions = [(i, 2, 1, 12, 10) for i in indices]
        sent = stager.send(*stager.gather(regions))
        assert all(torch.equal(a, b) for a, b in zip(sent, fetch(pixels, regions, "cpu")))
        full = whole(pixels, indices)
        assert all(torch.equal(a, b) for a, b in zip(stager.send(*stager.gather(full)), fetch(pixels, full, "cpu")))


def test_a_second_cli_run_decodes_nothing(tmp_path, tiny_vit_weights, counted):
    from ueo.cli import main

    data = make_images(tmp_path / "data", 8)
    args = [
        "fit",
        "--model",
        "ueo-tiny-vit",
        "--pretrained",
        tiny_vit_weights,
        "--device",
        "cpu",
        "--data",
        str(data),
        "--test",
        str(data),
        "--classes",
        "cat,dog",
        "--epochs",
        "1",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--quiet",
        "--no-report",
    ]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0 and counted["n"] == 8  # adaptation and test: once each
    assert main([*args, "--out", str(tmp_path / "b")]) == 0 and counted["n"] == 8
    shards = sorted((tmp_path / "cache").rglob("*.shard"))
    assert main([*args, "--no-cache", "--out", str(tmp_path / "c")]) == 0  # each image decoded when its batch comes
    assert counted["n"] > 8 and sorted((tmp_path / "cache").rglob("*.shard")) == shards
    a, c = (json.loads((tmp_path / d / "metrics.json").read_text())["adapted"] for d in "ac")
    assert a == c  # the same bytes, the same run
