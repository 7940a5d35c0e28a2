"""Memory that never grows with the collection: images the decode cache cannot take (a tiny bound, no cache at
all) are read from their files a batch at a time, with the same views; the library reads through the same
decode cache as the command line by default, so that a second call decodes nothing. Memory is measured with
tracemalloc (every decoded image is a numpy array it traces), not by polling RSS."""

import ctypes
import json
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

import ueo
from helpers import photo
from ueo.cli import main

pytestmark = pytest.mark.slow  # whole fits on real-size photos (`make test-quick` leaves them out)


def photos(folder, n, seed=0):
    """``n`` textured JPEGs (quality 90) of benchmark sizes, 300-600 px, 4:3 and 3:4, over two classes."""
    for i in range(n):
        target = folder / ("cat" if i % 2 else "dog")
        target.mkdir(parents=True, exist_ok=True)
        w, h = (300 + (37 * i) % 300, 225 + (53 * i) % 375) if i % 3 else (375 + i % 200, 500)
        photo(w, h, seed=seed + i).save(target / f"{i:04d}.jpg", quality=90)
    return folder


@pytest.fixture(scope="module")
def vit224(tmp_path_factory):
    """A ViT of real input size (224 px: the cache keeps images whole up to 448 px) and tiny compute."""
    folder = tmp_path_factory.mktemp("vit224")
    config = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 224, "layers": 1, "width": 32, "head_width": 16, "patch_size": 56},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": config, "preprocess_cfg": {}}))
    return f"local-dir:{folder}"


@pytest.fixture(scope="module")
def collections(tmp_path_factory):
    root = tmp_path_factory.mktemp("collections")
    return {n: photos(root / f"photos{n}", n) for n in (100, 200)}


def fit(model, data, out, *extra):
    """`ueo fit` in this process under tracemalloc: (exit code, the peak of traced memory in bytes)."""
    argv = ["fit", "--model", model, "--pretrained", "none", "--device", "cpu", "--data", str(data)]
    argv += ["--classes", "cat,dog", "--epochs", "1", "--batch-size", "16", "--eval-batch-size", "16"]
    argv += ["--out", str(out), "--quiet", "--no-report", "--no-discover", *extra]
    tracemalloc.start()
    try:
        code = main(argv)
        return code, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_bound_far_below_the_collection_keeps_memory_flat_and_the_metrics(vit224, collections, tmp_path):
    raw = {}
    for n, data in collections.items():  # the photos' decoded pixels: 75-220 MB
        raw[n] = sum(3 * h * w for h, w in (ueo.images.reading.original_size(p) for p in sorted(data.rglob("*.jpg"))))
    assert (
        main(
            ["fit", "--model", vit224, "--pretrained", "none", "--device", "cpu", "--data", str(collections[100])]
            + ["--classes", "cat,dog", "--epochs", "0", "--out", str(tmp_path / "warm"), "--quiet"]
        )
        == 0
    )  # imports
    peaks = {}
    for n, data in collections.items():
        args = ["--test", str(data), "--cache-dir", str(tmp_path / f"c{n}"), "--cache-max-size", "3MB"]
        code, peaks[n] = fit(vit224, data, tmp_path / f"tight{n}", *args)
        assert code == 0
    assert raw[200] > 60e6 and peaks[200] < 0.5 * raw[200], (peaks, raw)  # the collection's pixels: not held
    assert peaks[200] - peaks[100] < 0.1 * (raw[200] - raw[100]), (peaks, raw)  # flat as the collection grows
    code, _ = fit(
        vit224,
        collections[200],
        tmp_path / "roomy",
        "--test",
        str(collections[200]),
        "--cache-dir",
        str(tmp_path / "roomy-cache"),
    )
    assert code == 0
    tight, roomy = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("tight200", "roomy"))
    assert tight["adapted"] == roomy["adapted"] and tight["zeroshot"] == roomy["zeroshot"]  # the same pixels, views


def test_no_cache_reads_each_batch_from_the_files(vit224, collections, tmp_path):
    data = collections[200]
    code, peak = fit(vit224, data, tmp_path / "out", "--no-cache")
    assert code == 0
    raw = sum(3 * h * w for h, w in (ueo.images.reading.original_size(p) for p in sorted(data.rglob("*.jpg"))))
    assert peak < 0.5 * raw, (peak, raw)
    assert not list(tmp_path.rglob("*.shard"))


def test_the_library_decodes_once_and_takes_what_read_images_gives(collections, tmp_path, tiny_vit, counted):
    images = ueo.read_images(collections[100], ["cat", "dog"])  # an ImageList, as it is
    cache = ueo.DecodeCache(tmp_path / "cache")
    result = ueo.fit(tiny_vit, ["cat", "dog"], images, epochs=1, batch_size=32, eval_train=False, cache=cache)
    decoded = counted["n"]
    assert decoded == 100  # the first call decodes each image once, into the cache
    metrics, outputs = ueo.evaluate(tiny_vit, images, adapted=result.adapted, cache=cache)
    assert counted["n"] == decoded and len(outputs.cosines) == 100  # the second call decodes nothing
    assert metrics["pacc"] is not None
    again, _ = ueo.evaluate(tiny_vit, images, adapted=result.adapted, cache=False)  # each image from its file
    assert counted["n"] == decoded + 100 and again["pacc"] == pytest.approx(metrics["pacc"])
    found = ueo.discover(result, images, vocabulary="none")
    assert len(found.absent) == 2


ALLOCATOR_PROBE = """
import numpy as np
from ueo.images.reading import release_freed_memory

def resident_mb():
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("RssAnon")).split()[1]) / 1024

first = np.ones(1 << 21, np.uint8)  # a decoded image's buffer, freed: glibc raises its mmap threshold
del first
images = [np.ones(300_000 + 7_000 * i, np.uint8) for i in range(300)]  # then images of varying sizes, in its heap
del images[::2]  # every other one freed: holes between the ones still in use, which glibc keeps
before = resident_mb()
release_freed_memory()
print(before - resident_mb())
"""


def test_the_batch_readers_give_freed_image_buffers_back():
    """What the decoded images of earlier batches leave in glibc's heap goes back to the system."""
    if not hasattr(ctypes.CDLL(None), "malloc_trim") or not Path("/proc/self/status").exists():
        pytest.skip("not glibc on Linux")
    run = subprocess.run([sys.executable, "-c", ALLOCATOR_PROBE], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert float(run.stdout) > 100, run.stdout  # ~0.6 GB of freed buffers in holes, held until then
