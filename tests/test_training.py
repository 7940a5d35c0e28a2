import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

import ueo
from helpers import CLASSES, snapshot
from ueo.errors import ConfigError, DataError
from ueo.method.objectives import mcm_scores, ueo_loss
from ueo.model.prompts import PromptLearner
from ueo.model.tuning import tunable_parameters

K = len(CLASSES)


@pytest.fixture(scope="module")
def end_to_end(shared_tiny_vit):
    """One fit of UEO for 3 epochs (evaluating every 2), with the bundle's parameters before it."""
    from helpers import GeneratedImages, restored

    with restored(shared_tiny_vit.model):
        train = GeneratedImages(40, [0, 1, 2, 5, -1], seed=1)  # labels 5 and -1: unknown
        test = GeneratedImages(30, [0, 1, 2, 3, 4, 5], seed=2)
        before = snapshot(shared_tiny_vit.model)
        result = ueo.fit(
            shared_tiny_vit,
            CLASSES,
            train,
            test=test,
            method="ueo",
            epochs=3,
            batch_size=16,
            lr_prompt=1e-2,
            lr_norm=1e-2,
            eval_every=2,
        )
        yield shared_tiny_vit, result, before, test


def test_fit_leaves_the_bundle_as_it_was(end_to_end):
    bundle, _, before, _ = end_to_end  # fit restores only the tuned names: any other change would show here
    assert all(torch.equal(before[n], p) for n, p in snapshot(bundle.model).items())
    assert not any(p.requires_grad for p in bundle.model.parameters())


def test_fit_adapts_exactly_the_chosen_parameters(end_to_end):
    bundle, result, before, _ = end_to_end
    norms = tunable_parameters(bundle.model)
    assert set(result.adapted.tensors) == {"prompt.ctx"} | set(norms)
    assert sum(result.tuned_parameters.values()) == 4 * 64 + sum(p.numel() for p in norms.values())
    init_ctx = PromptLearner(bundle, CLASSES).ctx.detach()
    assert not torch.allclose(result.adapted.tensors["prompt.ctx"], init_ctx)
    for name, value in result.adapted.tensors.items():
        if name != "prompt.ctx":
            assert not torch.equal(value, before[name]), name
    assert result.adapted.info["method"] == "ueo" and result.adapted.model == "ueo-tiny-vit"


def test_evaluations_come_at_zero_every_eval_every_and_at_the_end(end_to_end):
    _, result, _, _ = end_to_end
    assert [(e["epoch"], e["split"]) for e in result.evaluations] == [
        (0, "train"),
        (0, "test"),
        (2, "train"),
        (2, "test"),
        (3, "train"),
        (3, "test"),
    ]
    for row in result.evaluations:
        for key in ("gacc", "pacc", "auroc", "fpr95", "aupr_in", "aupr_out", "hm"):
            assert row[key] is not None and math.isfinite(row[key])
    assert set(result.metrics) == {"zeroshot", "adapted"} and result.metrics["adapted"]["epoch"] == 3


def test_the_last_evaluation_equals_an_independent_computation(end_to_end):
    _, result, _, _ = end_to_end
    out, last = result.outputs["test"], result.evaluations[-1]
    labels, predictions, scores = out.labels.numpy(), out.predictions.numpy(), out.scores.numpy()
    known = (labels >= 0) & (labels < K)
    assert last["auroc"] == pytest.approx(roc_auc_score(known, scores))
    per_class = [np.mean(predictions[labels == c] == c) for c in sorted(set(labels[known].tolist()))]
    assert last["pacc"] == pytest.approx(np.mean(per_class))


def test_steps_follow_cosine_annealing_per_iteration(end_to_end):
    _, result, _, _ = end_to_end
    steps_per_epoch = math.ceil(40 / 16)  # last partial batch kept
    assert [h["step"] for h in result.history] == list(range(1, 3 * steps_per_epoch + 1))
    total = 3 * steps_per_epoch
    for h in result.history:  # no warm-up
        assert h["lr_prompt"] == pytest.approx(1e-2 * 0.5 * (1 + math.cos(math.pi * (h["step"] - 1) / total)))
        assert math.isfinite(h["loss"])


def test_confidence_weights_are_mcm_scores(end_to_end):
    _, result, _, _ = end_to_end
    assert result.weights.shape == (40,) and bool(((result.weights > 1 / K - 1e-6) & (result.weights <= 1)).all())


def test_reapplying_the_state_reproduces_the_final_evaluation(end_to_end):
    bundle, result, before, test = end_to_end
    metrics, outputs = ueo.evaluate(bundle, test, adapted=result.adapted)
    for key in ("gacc", "pacc", "auroc", "fpr95"):
        assert metrics[key] == pytest.approx(result.metrics["adapted"][key], abs=1e-6)
    assert torch.allclose(outputs.cosines, result.outputs["test"].cosines, atol=1e-5)
    assert all(torch.equal(before[n], p) for n, p in snapshot(bundle.model).items())


@pytest.mark.parametrize("tune", ["prompt", "norm"])
def test_tune_prompt_only_or_norm_only(tiny_rn, generated, tune):
    train = generated(16, [0, 1, -1], seed=3)
    before = snapshot(tiny_rn.model)
    result = ueo.fit(
        tiny_rn, CLASSES, train, method="infomax", tune=tune, epochs=1, batch_size=8, lr_prompt=1e-1, lr_norm=1e-1
    )
    names = set(result.adapted.tensors)
    if tune == "prompt":
        assert names == {"prompt.ctx"}
        assert not torch.equal(result.adapted.tensors["prompt.ctx"], PromptLearner(tiny_rn, CLASSES).ctx.detach())
    else:
        assert names == set(tunable_parameters(tiny_rn.model))
        assert any(not torch.equal(v, before[n]) for n, v in result.adapted.tensors.items())
    after = snapshot(tiny_rn.model)
    # BatchNorm stays in eval mode: running statistics untouched
    assert all(torch.equal(before[n], after[n]) for n in before if "running" in n or "num_batches" in n)
    # no test set: the adaptation set (it has some labels) is evaluated at epoch 0 and at the end
    assert [(e["epoch"], e["split"]) for e in result.evaluations] == [(0, "train"), (1, "train")]


def test_one_step_equals_an_independent_gradient_step(tiny_vit):
    """fit's first SGD step = ctx0 - lr * d(UEO loss)/d ctx, with the weights from the zero-shot MCM."""
    torch.manual_seed(5)
    images = torch.randn(
        12, 3, 32, 32, generator=torch.Generator().manual_seed(5)
    )  # tensors are used as given: no augmentation randomness
    data = [(images[i], -1) for i in range(12)]
    lr = 0.5
    result = ueo.fit(tiny_vit, CLASSES, data, tune="prompt", epochs=1, batch_size=12, lr_prompt=lr, eval_train=False)

    learner = PromptLearner(tiny_vit, CLASSES)
    with torch.no_grad():
        feats = F.normalize(tiny_vit.model.encode_image(images), dim=-1)
        weights = mcm_scores(feats @ learner.text_features().T)
    probs = torch.softmax(100 * feats @ learner.text_features().T, dim=-1)
    loss = ueo_loss(probs, weights)
    (grad,) = torch.autograd.grad(loss, learner.ctx)
    expected = learner.ctx.detach() - lr * grad
    assert result.history[0]["loss"] == pytest.approx(loss.item(), abs=1e-5)
    assert torch.allclose(result.adapted.tensors["prompt.ctx"], expected, atol=1e-5)
    assert torch.allclose(result.weights, weights, atol=1e-6)
    assert result.outputs == {}  # the zero-shot pass that gave the weights is not the latest evaluation


def test_seeded_runs_are_identical_and_seeds_differ(tiny_rn, generated):
    train = generated(20, [0, 1, 2, -1], seed=4)
    kwargs = dict(epochs=2, batch_size=8, lr_prompt=1e-2, lr_norm=1e-2, eval_train=False)
    a = ueo.fit(tiny_rn, CLASSES, train, seed=7, **kwargs)
    b = ueo.fit(tiny_rn, CLASSES, train, seed=7, **kwargs)
    c = ueo.fit(tiny_rn, CLASSES, train, seed=8, **kwargs)
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    assert all(torch.equal(a.adapted.tensors[n], b.adapted.tensors[n]) for n in a.adapted.tensors)
    assert [h["loss"] for h in a.history] != [h["loss"] for h in c.history]


def test_methods_oracle_zeroshot_and_epoch_weights(tiny_vit, generated):
    train = generated(16, [0, 1, 4, -1], seed=6)
    with pytest.raises(DataError, match="oracle"):
        ueo.fit(tiny_vit, CLASSES[:2], train, method="oracle", epochs=1)
    labeled = generated(16, [0, 1, 3], seed=6)
    oracle = ueo.fit(tiny_vit, CLASSES[:2], labeled, method="oracle", epochs=1, batch_size=8)
    assert oracle.weights.tolist() == pytest.approx([1, 1, 1e-3] * 5 + [1])
    assert [e["split"] for e in oracle.evaluations] == ["train", "train"]  # adaptation set has labels

    zeroshot = ueo.fit(tiny_vit, CLASSES, labeled, method="zeroshot")
    assert zeroshot.history == [] and [e["epoch"] for e in zeroshot.evaluations] == [0]
    init = PromptLearner(tiny_vit, CLASSES).ctx.detach()
    assert torch.equal(zeroshot.adapted.tensors["prompt.ctx"], init)

    fixed = ueo.fit(tiny_vit, CLASSES, train, epochs=2, batch_size=8, lr_prompt=1.0, lr_norm=1.0, eval_train=False)
    epoch = ueo.fit(
        tiny_vit,
        CLASSES,
        train,
        epochs=2,
        batch_size=8,
        lr_prompt=1.0,
        lr_norm=1.0,
        eval_train=False,
        weight_refresh="epoch",
    )
    assert fixed.history[:2] == epoch.history[:2]  # same first epoch ...
    assert fixed.history[2]["loss"] != epoch.history[2]["loss"]  # ... then the weights are recomputed
    assert not torch.allclose(fixed.weights, epoch.weights)


def test_bad_options_are_clear_errors(tiny_vit, generated):
    train = generated(4, [0], seed=0)
    with pytest.raises(TypeError, match="Unknown fit option"):
        ueo.fit(tiny_vit, CLASSES, train, learning_rate=1)
    with pytest.raises(ConfigError, match="Unknown method"):
        ueo.fit(tiny_vit, CLASSES, train, method="shot")
    with pytest.raises(ConfigError, match="batch_size"):
        ueo.fit(tiny_vit, CLASSES, train, batch_size=0)
    with pytest.raises(DataError, match="empty"):
        ueo.fit(tiny_vit, CLASSES, [])
    with pytest.raises(ueo.DataError, match="pairs"):
        ueo.fit(tiny_vit, CLASSES, [torch.zeros(3, 32, 32)], epochs=1)


def test_an_adaptation_set_inside_the_test_set_is_not_scored_twice(tiny_vit, generated, tmp_path, monkeypatch):
    """The transductive protocols adapt on part of the test set: its outputs are the test set's at its
    positions (same parameters, same deterministic eval views), with its own labels."""
    from ueo.data.folders import read_folder
    from ueo.images.reading import ImageFiles

    images = generated(12, [0, 1, 2, 3], seed=9)
    for i in range(len(images)):
        folder = tmp_path / "data" / CLASSES[images.labels[i]]
        folder.mkdir(parents=True, exist_ok=True)
        images.images[i].save(folder / f"{i}.png")
    test = read_folder(tmp_path / "data", CLASSES)
    train = test.subset([7, 1, 4, 10, 2])  # out of order, as a scenario's subset need not be
    train.labels = [-1 if i % 2 else label for i, label in enumerate(train.labels)]  # its own labels
    scored = ueo.method.inference.SCORED
    before = scored.count
    kwargs = dict(epochs=1, batch_size=4, lr_prompt=1e-2, lr_norm=1e-2, eval_train=True)
    result = ueo.fit(tiny_vit, CLASSES, ImageFiles(train), test=ImageFiles(test), **kwargs)
    calls = list(scored.recent)[-2:]
    assert calls == [12, 12] and scored.count - before == 24  # the zero-shot and the final evaluation: the test set

    _, alone = ueo.evaluate(tiny_vit, ImageFiles(train), class_names=CLASSES, adapted=result.adapted)
    kept = result.outputs["train"]
    assert kept.labels.tolist() == [
        -1 if i % 2 else label for i, label in enumerate(test.subset([7, 1, 4, 10, 2]).labels)
    ]
    assert torch.allclose(kept.cosines, alone.cosines, atol=1e-6)
    train_rows = [e for e in result.evaluations if e["split"] == "train"]
    assert [e["epoch"] for e in train_rows] == [0, 1]
    assert train_rows[-1]["pacc"] == pytest.approx(alone.metrics(len(CLASSES))["pacc"])

    before = scored.count  # one adaptation image that is not a test image: the adaptation set is scored on its own
    ueo.fit(
        tiny_vit, CLASSES, ImageFiles(train), test=ImageFiles(test.subset([i for i in range(12) if i != 10])), **kwargs
    )
    calls = list(scored.recent)[-4:]
    assert calls == [11, 5, 11, 5] and scored.count - before == 32  # each time: the test set, then the adaptation set
