"""The fast path (uint8 cache + batched device augmentation) computes what the plain loop computes."""

import math

import numpy as np
import pytest
import torch
from torchvision.transforms import RandomResizedCrop

import ueo
from helpers import CLASSES
from ueo import ViewSpec
from ueo.fastpath import CachedViews, ImageCache, augment, build_cache, center_views, crop_box, crop_boxes

SETTINGS = dict(method="oracle", epochs=2, batch_size=8, lr_prompt=0.05, lr_norm=0.05, seed=5, eval_train=False)


def test_crop_box_follows_torchvision_rule():
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        h, w = np.random.default_rng(_).integers(20, 300, size=2)
        top, left, ch, cw, _ = crop_box(generator, int(h), int(w))
        assert top >= 0 and top + ch <= h and left >= 0 and left + cw <= w
        assert ch * cw >= 0.45 * h * w or ch == h or cw == w  # scale >= 0.5, up to rounding; or the fallback
    # the same draws as torchvision's RandomResizedCrop.get_params with the same RNG stream
    image = torch.zeros(3, 90, 120)
    for seed in range(20):
        torch.manual_seed(seed)
        expected = RandomResizedCrop.get_params(image, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3))
        assert crop_box(torch.Generator().manual_seed(seed), 90, 120)[:4] == tuple(expected)


def test_batched_views_equal_one_by_one(generated):
    data = generated(10, [0, 1, -1], seed=2)
    cache = build_cache(data, max_side=64)
    assert all(max(size) <= 64 for size in cache.sizes) and cache.labels == data.labels
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    spec = ViewSpec(32, mean, std)
    indices = [3, 0, 7, 7, 9]
    boxes = crop_boxes(cache, indices, seed=1, epoch=4)
    batch = augment(cache, indices, boxes, spec, "cpu")
    single = CachedViews(cache, spec, seed=1)
    single.set_epoch(4)
    assert torch.allclose(batch, torch.stack([single[i][0] for i in indices]), atol=1e-6)
    eval_batch = center_views(cache, indices, spec, "cpu")
    plain_eval = CachedViews(cache, spec, seed=1, train=False)
    assert torch.allclose(eval_batch, torch.stack([plain_eval[i][0] for i in indices]), atol=1e-6)
    # a uniform grey image stays that grey through crop, resize and normalisation
    grey = torch.full((3, 40, 50), 128, dtype=torch.uint8)
    flat = ImageCache(grey.reshape(-1), [0], [(40, 50)], [0])
    view = augment(flat, [0], crop_boxes(flat, [0], 0, 0), ViewSpec(16, mean, std), "cpu")
    expected = (128 / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    assert torch.allclose(view[0], expected.expand(3, 16, 16), atol=1e-5)


def test_fast_fit_equals_plain_fit_on_the_same_draws(tiny_vit, generated):
    data = generated(20, [0, 1, 2, 6], seed=3)
    test = generated(8, [0, 1, 6], seed=4)
    fast = ueo.fit(tiny_vit, CLASSES, data, test=test, fast=True, **SETTINGS)
    cache = build_cache(data, max_side=2 * tiny_vit.image_size)
    plain_data = CachedViews(cache, tiny_vit.views, seed=SETTINGS["seed"])
    plain_test = CachedViews(build_cache(test, max_side=2 * tiny_vit.image_size), tiny_vit.views, seed=0, train=False)
    plain = ueo.fit(tiny_vit, CLASSES, plain_data, test=plain_test, fast=False, **SETTINGS)
    assert len(fast.history) == len(plain.history) == 2 * math.ceil(20 / 8)
    assert [h["loss"] for h in fast.history] == pytest.approx([h["loss"] for h in plain.history], abs=1e-5)
    for name, value in plain.adapted.tensors.items():
        assert torch.allclose(fast.adapted.tensors[name], value, atol=1e-5), name
    assert fast.metrics["adapted"]["auroc"] == pytest.approx(plain.metrics["adapted"]["auroc"], abs=1e-6)
    assert torch.equal(fast.weights, plain.weights)


@pytest.mark.parametrize("mode", ["shortest", "squash", "longest"])
def test_eval_views_follow_the_models_resize_mode(mode):
    """The fast eval view against open_clip's own PIL preprocessing of the same image (the resizers differ
    in rounding only)."""
    from PIL import Image

    pixels = np.full((60, 100, 3), 128, dtype=np.uint8)  # grey, with green and yellow bands at the sides
    pixels[:, :20] = (30, 220, 30)  # (a center crop loses them, a squash keeps them, a pad adds black)
    pixels[:, 80:] = (220, 220, 30)
    pixels[25:35, :] = 255
    image = Image.fromarray(pixels)
    spec = ViewSpec(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), resize_mode=mode, fill_color=0)
    cache = ImageCache(torch.from_numpy(pixels.transpose(2, 0, 1).copy()).reshape(-1), [0], [(60, 100)], [0])
    fast = center_views(cache, [0], spec, "cpu")[0]
    plain = spec.eval_transform()(image)
    assert fast.shape == plain.shape == (3, 32, 32)
    assert (fast - plain).abs().mean() < 0.01, (fast - plain).abs().mean()  # another mode: 0.48 or more
