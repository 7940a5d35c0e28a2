"""Interruption and resumption, non-finite losses, and the order-independence they rely on."""

import pytest
import torch

import ueo
from helpers import CLASSES
from ueo import DivergedError, TrainingInterrupted, load_checkpoint, save_checkpoint
from ueo.errors import IncompatibleError
from ueo.model.thresholds import otsu_threshold
from ueo.views.spec import SeededViews, epoch_batches

SETTINGS = dict(epochs=3, batch_size=8, lr_prompt=0.05, lr_norm=0.05, eval_train=False, seed=11)


def test_epoch_batches_cover_every_sample_once():
    batches = epoch_batches(21, 8, seed=1, epoch=2)
    assert [len(b) for b in batches] == [8, 8, 5]
    assert sorted(i for b in batches for i in b) == list(range(21))
    assert batches == epoch_batches(21, 8, seed=1, epoch=2)
    assert batches != epoch_batches(21, 8, seed=1, epoch=3)


def test_views_do_not_depend_on_access_order(generated):
    data = generated(6, [0, 1], seed=0)
    bundle_transform = ueo.load_clip("ueo-tiny-vit", device="cpu").train_transform
    views = SeededViews(data, bundle_transform, seed=5)
    views.epoch = 3
    forward = [views[i][0] for i in range(6)]
    torch.manual_seed(123)  # the global RNG does not matter
    backward = [views[i][0] for i in reversed(range(6))][::-1]
    assert all(torch.equal(a, b) for a, b in zip(forward, backward))
    views.epoch = 4
    assert not torch.equal(views[0][0], forward[0])


@pytest.mark.parametrize("stop_after", [5, 6])  # mid-epoch (3 steps an epoch: step 5) and at an epoch end
def test_interrupted_and_resumed_run_equals_uninterrupted(tiny_rn, generated, tmp_path, stop_after):
    train = generated(20, [0, 1, 2, -1], seed=9)
    test = generated(8, [0, 1, 5], seed=10)
    full = ueo.fit(tiny_rn, CLASSES, train, test=test, **SETTINGS)

    polls = {"n": 0}

    def stop():
        polls["n"] += 1
        return polls["n"] >= stop_after + 2  # + the zero-shot pass: one batch of adaptation, one of test images

    path = tmp_path / "checkpoint.safetensors"
    with pytest.raises(TrainingInterrupted):
        ueo.fit(
            tiny_rn,
            CLASSES,
            train,
            test=test,
            checkpoint=lambda c: save_checkpoint(path, c),
            should_stop=stop,
            **SETTINGS,
        )
    saved = load_checkpoint(path)
    assert len(saved["meta"]["history"]) == (5 if stop_after == 5 else 6)
    resumed = ueo.fit(tiny_rn, CLASSES, train, test=test, resume=saved, **SETTINGS)
    for name, value in full.adapted.tensors.items():
        assert torch.allclose(resumed.adapted.tensors[name], value, atol=1e-6), name
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in full.history], abs=1e-6)
    assert [(e["epoch"], e["split"]) for e in resumed.evaluations] == [
        (e["epoch"], e["split"]) for e in full.evaluations
    ]
    with pytest.raises(IncompatibleError, match="different settings"):
        ueo.fit(tiny_rn, CLASSES, train, resume=saved, **{**SETTINGS, "lr_norm": 0.01})
    with pytest.raises(IncompatibleError, match="other class names"):
        ueo.fit(tiny_rn, CLASSES[:3], train, resume=saved, **SETTINGS)


def test_checkpoint_file_is_safetensors_without_pickle(tmp_path):
    path = tmp_path / "c.safetensors"
    meta = {
        "epoch": 2,
        "done_in_epoch": 0,
        "config": {},
        "class_names": ["a"],
        "history": [],
        "evaluations": [],
        "lr": [0.1],
    }
    save_checkpoint(path, {"tensors": {"param/x": torch.ones(2)}, "meta": meta})
    loaded = load_checkpoint(path)
    assert loaded["meta"]["epoch"] == 2 and torch.equal(loaded["tensors"]["param/x"], torch.ones(2))
    other = tmp_path / "o.safetensors"
    ueo.AdaptedState({"prompt.ctx": torch.zeros(1)}, ["a"], "m", None).save(other)
    with pytest.raises(IncompatibleError, match="not a ueo checkpoint"):
        load_checkpoint(other)


def test_non_finite_loss_stops_and_keeps_the_last_good_state(tiny_vit):
    generator = torch.Generator().manual_seed(0)
    data = [(torch.randn(3, 32, 32, generator=generator), -1) for _ in range(16)]
    huge = dict(lr_prompt=1e30, lr_norm=1e30)  # the parameters overflow within a few steps
    with pytest.raises(DivergedError, match=r"at step \d+ \(epoch 1\)") as info:
        ueo.fit(tiny_vit, CLASSES, data, method="infomax", epochs=2, batch_size=4, eval_train=False, **huge)
    last_good = info.value.last_good
    initial = ueo.fit(tiny_vit, CLASSES, data[:8], method="zeroshot").adapted.tensors
    assert all(torch.equal(last_good.tensors[k], initial[k]) for k in initial)  # the state before epoch 1
    assert all(torch.isfinite(v).all() for v in last_good.tensors.values())
    # it decides as a finished run's state does: with a threshold of its own (Otsu on its own scores)
    _, outputs = ueo.evaluate(tiny_vit, data, adapted=last_good)
    assert last_good.threshold["rule"] == "otsu" and "diverged" in last_good.info
    assert last_good.threshold["threshold"] == pytest.approx(otsu_threshold(outputs.scores.numpy()))


def test_non_finite_images_are_refused_before_training(tiny_vit):
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    images[2] = float("nan")
    with pytest.raises(ueo.DataError, match="item 2: the tensor image holds NaN"):
        ueo.fit(tiny_vit, CLASSES, [(image, -1) for image in images], epochs=1)
