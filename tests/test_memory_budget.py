"""Decoding in parallel stays within its budget of pixels decoded at once."""

import threading

from PIL import Image


def test_parallel_decoding_stays_within_its_pixel_budget(tmp_path, monkeypatch):

    from ueo.data.imagelist import ImageList
    from ueo.images import reading as images_module
    from ueo.images.reading import PixelBudget, check_images

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
