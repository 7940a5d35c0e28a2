"""The fast path makes the reference's views: torchvision's and open_clip's own transforms on the original
image, for photos of real sizes and aspects (JPEG and PNG), and ``ueo.evaluate`` / ``ueo.fit`` through it
give what the reference pipeline gives."""

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image
from torchvision import transforms as T

import ueo
from helpers import PHOTO_SIZES, photo, psnr, write_photos
from ueo import ViewSpec
from ueo.data.folders import read_folder
from ueo.images.cache import DecodeCache
from ueo.views.fastpath import BatchViews, decode_all, decoded_short_side
from ueo.views.spec import view_seed

MODES = {"bicubic": T.InterpolationMode.BICUBIC, "bilinear": T.InterpolationMode.BILINEAR}


def reference_train_view(image, spec, seed, epoch, index):
    """torchvision's RandomResizedCrop + flip on the original PIL image, under the sample's seed."""
    torch.manual_seed(view_seed(seed, epoch, index))
    transform = T.Compose(
        [
            T.RandomResizedCrop(spec.size, scale=(0.5, 1.0), interpolation=MODES[spec.interpolation]),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
        ]
    )
    return transform(image)


def reference_eval_view(image, spec):
    """open_clip's own eval preprocessing (un-normalised: mean 0, std 1)."""
    cfg = PreprocessCfg(
        size=spec.size,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        interpolation=spec.interpolation,
        resize_mode=spec.resize_mode,
        fill_color=spec.fill_color,
    )
    return image_transform_v2(cfg, is_train=False)(image)


def test_train_draws_are_torchvisions_for_every_size():
    spec = ViewSpec(224, (0, 0, 0), (1, 1, 1))
    rng = np.random.default_rng(0)
    for trial in range(300):
        h, w = (int(v) for v in rng.integers(20, 2500, size=2))
        if trial % 5 == 0:  # extreme aspects, where torchvision falls back to a central crop
            w = 8 * h
        torch.manual_seed(trial)
        expected = T.RandomResizedCrop.get_params(torch.zeros(1, h, w), scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3))
        flip = bool(torch.rand(1) < 0.5)
        plan = spec.train_plan(torch.Generator().manual_seed(trial), h, w)
        top, left, ch, cw = expected
        assert plan.box == (left, top, left + cw, top + ch) and plan.flip == flip, (h, w, trial)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    paths = write_photos(folder)
    return folder, paths


def views_of(pixels, spec, kind, epoch=0):
    source = BatchViews(pixels, spec, seed=7, device="cpu")
    indices = list(range(len(pixels)))
    if kind == "train":
        batches = [[i] for i in indices]
        views = [b[0][0] for b in source.train_batches(batches, epoch)]
    else:
        views = [view for batch in source.eval_batches(indices, 4) for view in batch[0]]
    mean, std = torch.tensor(spec.mean).view(3, 1, 1), torch.tensor(spec.std).view(3, 1, 1)
    return [v * std + mean for v in views]  # back to [0, 1]


# (the least PSNR in dB, the largest mean absolute difference) of a view against the reference's: raw
# entries hold the decoded pixels; JPEG entries (quality 95, no chroma subsampling) lose a little, most
# where an image is kept whole (jpeg), least where it was shrunk (what auto stores as JPEG)
FIDELITY = {"raw": (45, 1 / 255), "auto": (41, 2 / 255), "jpeg": (36, 3 / 255)}  # measured: 45.1, 42.6, 37.6 dB


@pytest.mark.slow
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
@pytest.mark.parametrize("fmt", ["raw", "auto", "jpeg"])
def test_views_from_the_decode_cache_equal_the_reference_on_real_size_photos(photos, tmp_path, interpolation, fmt):
    folder, _ = photos
    least, most = FIDELITY[fmt]
    worst = [99.0, 0.0]
    images = read_folder(folder, ["cat", "dog"])
    originals = [Image.open(p).convert("RGB") for p in images.paths]
    for size in (224, 96):
        for mode in ("shortest", "squash", "longest"):
            spec = ViewSpec(size, (0.48, 0.46, 0.41), (0.27, 0.26, 0.28), interpolation, mode, fill_color=30)
            pixels, problems = DecodeCache(tmp_path / "cache", format=fmt).ensure(images, decoded_short_side(spec))
            assert not problems
            # the cache keeps an image whole unless its shorter side is over twice the input size
            for (h, w), (oh, ow) in zip(pixels.sizes, pixels.originals):
                assert (h, w) == (oh, ow) if min(oh, ow) <= 2 * size else min(h, w) == 2 * size
            for image, got in zip(originals, views_of(pixels, spec, "eval")):
                want = reference_eval_view(image, spec)
                assert got.shape == want.shape == (3, size, size)
                worst[:] = min(worst[0], psnr(got, want)), max(worst[1], float((got - want).abs().mean()))
                assert psnr(got, want) >= least and (got - want).abs().mean() <= most, (image.size, size, mode)
        for epoch in (0, 1, 2):
            for i, (image, got) in enumerate(zip(originals, views_of(pixels, spec, "train", epoch))):
                want = reference_train_view(image, spec, seed=7, epoch=epoch, index=i)
                worst[:] = min(worst[0], psnr(got, want)), max(worst[1], float((got - want).abs().mean()))
                assert psnr(got, want) >= least and (got - want).abs().mean() <= most, (image.size, size, epoch)
    print(f"{fmt} {interpolation}: least PSNR {worst[0]:.1f} dB, largest mean difference {worst[1] * 255:.2f}/255")


def test_views_of_images_in_memory_equal_the_reference():
    spec = ViewSpec(224, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    images = [photo(w, h, seed=i) for i, (w, h) in enumerate(PHOTO_SIZES)]
    pixels = decode_all([(image, 0) for image in images], decoded_short_side(spec))
    for image, got in zip(images, views_of(pixels, spec, "eval")):
        assert psnr(got, reference_eval_view(image, spec)) >= 45
    for i, (image, got) in enumerate(zip(images, views_of(pixels, spec, "train", epoch=3))):
        assert psnr(got, reference_train_view(image, spec, 7, 3, i)) >= 45


def peak_tensor_bytes(step) -> int:
    """The most bytes of tensors alive at once while ``step`` runs, counted by torch's profiler: each
    top-level operation's net allocation and each release, in the order they happened."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e for e in prof.events() if e.cpu_parent is None), key=lambda e: e.time_range.start)
    live = peak = 0
    for event in events:
        live += event.cpu_memory_usage
        peak = max(peak, live)
    return peak


def test_a_batch_of_views_is_built_with_one_batch_of_floats_alive():
    """The peak of a run is the building of a batch: rendered into the batch and normalised in place, one
    float batch is alive at a time (built by value, stacked then centred then scaled, it was three)."""
    spec = ViewSpec(224, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    images = [photo(w, h, seed=i) for i, (w, h) in enumerate(PHOTO_SIZES)]
    pixels = decode_all([(image, 0) for image in images], decoded_short_side(spec))
    source = BatchViews(pixels, spec, seed=7, device="cpu")
    indices = list(range(len(images))) * 8  # a batch of 56 views: one view's own temporaries are small beside it
    batch = len(indices) * 3 * 224 * 224 * 4
    kept = []
    steps = {
        "eval": lambda: kept.append(next(iter(source.eval_batches(indices, len(indices))))[0]),
        "train": lambda: kept.append(next(iter(source.train_batches([indices], epoch=1)))[0]),
    }
    for kind, step in steps.items():
        peak = peak_tensor_bytes(step)
        assert batch <= peak < 1.5 * batch, (kind, peak / batch)
    assert kept[0].shape == kept[1].shape == (len(indices), 3, 224, 224)


@pytest.mark.slow
def test_evaluate_gives_open_clips_own_cosines_on_photos(photos):
    """ueo.evaluate (fast path, the default) against open_clip's preprocess + encode_image + encode_text on
    the same images, with a random-weight ViT-B-32 loaded through ueo.load_clip."""
    _, paths = photos
    bundle = ueo.load_clip("ViT-B-32", pretrained=None, device="cpu", seed=1)
    names = ["cat", "dog", "house"]
    images = [Image.open(p).convert("RGB") for p in paths]
    _, outputs = ueo.evaluate(bundle, [(image, -1) for image in images], class_names=names, batch_size=8)
    preprocess = image_transform_v2(PreprocessCfg(**bundle.model.visual.preprocess_cfg), is_train=False)
    model = bundle.model
    with torch.no_grad():
        features = F.normalize(model.encode_image(torch.stack([preprocess(i) for i in images])), dim=-1)
        tokens = open_clip.get_tokenizer("ViT-B-32")([f"a photo of a {n}." for n in names])
        text = F.normalize(model.encode_text(tokens), dim=-1)
    want = features @ text.T
    assert (outputs.cosines - want).abs().max() < 1e-3, (outputs.cosines - want).abs().max()


@pytest.mark.slow
def test_fast_fit_equals_the_reference_pipeline_on_photos(tiny_vit):
    """ueo.fit with the fast path against ueo.fit with torchvision's transforms on PIL images (fast=False),
    the same seeded draws: the same losses and the same learned parameters, to the views' rounding."""
    images = [photo(w, h, seed=i) for i, (w, h) in enumerate(PHOTO_SIZES * 2)]
    data = [(image, i % 3) for i, image in enumerate(images)]
    settings = dict(method="ueo", epochs=2, batch_size=5, lr_prompt=0.05, lr_norm=0.05, seed=5, eval_train=False)
    fast = ueo.fit(tiny_vit, ["cat", "hot_dog"], data, test=data, fast=True, **settings)
    plain = ueo.fit(tiny_vit, ["cat", "hot_dog"], data, test=data, fast=False, **settings)
    assert len(fast.history) == len(plain.history) == 2 * 3
    assert [h["loss"] for h in fast.history] == pytest.approx([h["loss"] for h in plain.history], abs=2e-3)
    for name, value in plain.adapted.tensors.items():
        assert torch.allclose(fast.adapted.tensors[name], value, atol=2e-3), name
    assert torch.allclose(fast.weights, plain.weights, atol=2e-3)
