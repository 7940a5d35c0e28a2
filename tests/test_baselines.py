"""The paper's baselines in ueo's harness: UPL, POUF, Tent and TPT.

Each loss against a hand computation; one step of each method through ``ueo.fit`` against an independent
eager computation (open_clip's encode_image / encode_text, torch's SGD); TPT leaves no trace; every method
through `ueo fit` with its outputs; bad input is exit 2 with a clear message.
"""

import json
import math

import pytest
import torch
import torch.nn.functional as F

import ueo
from helpers import CLASSES, fit_args, make_folder, restored, run_cli
from ueo.config import FitConfig
from ueo.experiments import toyworld as tw
from ueo.method.loop import learning_rate
from ueo.method.objectives import (
    confident_views,
    marginal_entropy_loss,
    pouf_loss,
    transport_loss,
    upl_pseudo_labels,
)
from ueo.model.tuning import batch_statistics

# -- the losses, by hand ---------------------------------------------------------------------------------


def test_upl_keeps_the_k_most_confident_images_of_each_predicted_class():
    probs = torch.tensor(
        [
            [0.7, 0.2, 0.1],  # 0: class 0, 0.7
            [0.9, 0.05, 0.05],  # 1: class 0, 0.9
            [0.7, 0.1, 0.2],  # 2: class 0, 0.7 (a tie with image 0: the earlier image wins)
            [0.2, 0.6, 0.2],  # 3: class 1, 0.6 (the only image of class 1: fewer than K, kept)
            [0.3, 0.3, 0.4],  # 4: class 2, 0.4
            [0.1, 0.1, 0.8],  # 5: class 2, 0.8
            [0.45, 0.1, 0.45],  # 6: a tie between classes: argmax takes the first (class 0), 0.45
        ]
    )
    assert upl_pseudo_labels(probs, per_class=2).tolist() == [0, 0, -1, 1, 2, 2, -1]
    assert upl_pseudo_labels(probs, per_class=1).tolist() == [-1, 0, -1, 1, -1, 2, -1]
    assert upl_pseudo_labels(probs, per_class=16).tolist() == [0, 0, 0, 1, 2, 2, 0]


def test_pouf_transport_sums_the_expected_cost_both_ways():
    cos = torch.tensor([[0.3, 0.1], [0.2, 0.25]])
    s = 10.0
    # classes per image: softmax over a row; images per class: softmax over a column
    row0 = [math.exp(3.0) / (math.exp(3.0) + math.exp(1.0)), math.exp(1.0) / (math.exp(3.0) + math.exp(1.0))]
    row1 = [math.exp(2.0) / (math.exp(2.0) + math.exp(2.5)), math.exp(2.5) / (math.exp(2.0) + math.exp(2.5))]
    col0 = [math.exp(3.0) / (math.exp(3.0) + math.exp(2.0)), math.exp(2.0) / (math.exp(3.0) + math.exp(2.0))]
    col1 = [math.exp(1.0) / (math.exp(1.0) + math.exp(2.5)), math.exp(2.5) / (math.exp(1.0) + math.exp(2.5))]
    c = [[0.7, 0.9], [0.8, 0.75]]
    to_classes = ((c[0][0] * row0[0] + c[0][1] * row0[1]) + (c[1][0] * row1[0] + c[1][1] * row1[1])) / 2
    to_images = ((c[0][0] * col0[0] + c[1][0] * col0[1]) + (c[0][1] * col1[0] + c[1][1] * col1[1])) / 2
    assert transport_loss(cos, s).item() == pytest.approx(to_classes + to_images, abs=1e-6)

    def h(p):
        return -sum(x * math.log(x + 1e-5) for x in p)

    mean = [(row0[k] + row1[k]) / 2 for k in range(2)]
    im = (h(row0) + h(row1)) / 2 - h(mean)
    assert pouf_loss(cos, s).item() == pytest.approx(to_classes + to_images + 0.3 * im, abs=1e-6)


def test_tpt_keeps_the_lowest_entropy_views_and_takes_the_entropy_of_their_mean():
    probs = torch.tensor(
        [[0.5, 0.5], [0.9, 0.1], [0.6, 0.4], [0.99, 0.01], [0.05, 0.95], [0.7, 0.3], [0.5, 0.5], [0.8, 0.2]]
        + [[0.5, 0.5]] * 12
    )  # 20 views: 10% = the 2 most confident (0.99 and 0.95)
    assert sorted(confident_views(probs).tolist()) == [3, 4]
    assert confident_views(probs[:5]).tolist() == [3]  # int(0.5) = 0: at least one
    mean = [(0.99 + 0.05) / 2, (0.01 + 0.95) / 2]
    expected = -sum(p * math.log(p) for p in mean)
    assert marginal_entropy_loss(probs[[3, 4]]).item() == pytest.approx(expected, abs=1e-6)


def test_tent_normalises_with_each_batch_and_keeps_the_running_statistics():
    norm = torch.nn.BatchNorm2d(3).eval()
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        norm.bias.copy_(torch.tensor([0.0, 1.0, -1.0]))
        norm.running_mean.fill_(5.0)
    model = torch.nn.Sequential(norm)
    x = torch.randn(4, 3, 2, 2) * 3 + 1
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = ((x - mean) ** 2).mean(dim=(0, 2, 3), keepdim=True)  # the biased variance, as BatchNorm normalises
    by_hand = (x - mean) / torch.sqrt(var + norm.eps) * norm.weight[None, :, None, None] + norm.bias[
        None, :, None, None
    ]
    with batch_statistics(model):
        assert torch.allclose(model(x), by_hand, atol=1e-5)
    assert not norm.training and norm.momentum == 0.1 and int(norm.num_batches_tracked) == 0
    assert torch.equal(norm.running_mean, torch.full((3,), 5.0)) and torch.equal(norm.running_var, torch.ones(3))
    running = (x - 5.0) / torch.sqrt(torch.tensor(1.0 + norm.eps))  # after it: the running statistics again
    assert torch.allclose(model(x), running * norm.weight[None, :, None, None] + norm.bias[None, :, None, None])


def test_the_schedules_by_hand():
    upl = FitConfig.for_method("upl")  # 1 warm-up epoch at 1e-5, then cosine over all the steps
    assert learning_rate(upl, 0.002, 0, 100, 10) == 1e-5 and learning_rate(upl, 0.002, 9, 100, 10) == 1e-5
    assert learning_rate(upl, 0.002, 10, 100, 10) == pytest.approx(0.002 * 0.5 * (1 + math.cos(math.pi * 0.1)))
    pouf = FitConfig.for_method("pouf")
    assert learning_rate(pouf, 0.1, 1000, 5000, 50) == pytest.approx(0.1 * 1.2**-0.75)
    assert learning_rate(FitConfig.for_method("tent"), 2.5e-4, 7, 8, 8) == 2.5e-4


def test_each_baseline_takes_its_published_recipe_where_the_options_are_silent():
    upl = FitConfig.for_method("upl", epochs=3)
    assert (upl.epochs, upl.lr_prompt, upl.batch_size, upl.tune, upl.momentum) == (3, 0.002, 32, "prompt", 0.9)
    pouf = FitConfig.for_method("pouf")
    assert (pouf.lr_prompt, pouf.epochs, pouf.nesterov, pouf.weight_decay, pouf.schedule) == (
        0.1,
        10,
        True,
        1e-3,
        "inverse",
    )
    assert FitConfig.for_method("ueo") == FitConfig()  # UEO's own settings are the defaults


# -- one step, against an independent eager computation ----------------------------------------------------


@pytest.fixture(scope="module")
def shared_toy():
    return ueo.load_clip("ueo-toy-rn", pretrained="toyworld", device="cpu")


@pytest.fixture
def toy(shared_toy):
    with restored(shared_toy.model):
        yield shared_toy


class Tensors(torch.utils.data.Dataset):
    """Toy-world images already normalised ([3, S, S] tensors, used as given: no view to reproduce), which the
    toy CLIP predicts as several classes (a random CLIP predicts one class for everything)."""

    def __init__(self, bundle, n=12):
        images, _ = tw.scenario("opda", per_class=1, test_per_class=1)
        transform = bundle.views.eval_transform()
        self.x = torch.stack([transform(images[i][0]) for i in range(n)])

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], -1


def eager_step(bundle, data, method, names, *, tuned, lr, momentum, nesterov, weight_decay, per_class=2):
    """The method's first step, written out: open_clip's towers, torch's SGD on the norm affines."""
    model = bundle.model
    own = dict(model.named_parameters())
    params = [own[n] for n in tuned]
    for p in params:
        p.requires_grad_(True)
    tokens = bundle.tokenizer([f"a photo of a {n.replace('_', ' ')}." for n in names])
    with torch.no_grad():
        text = F.normalize(model.encode_text(tokens).float(), dim=-1)
        zero = F.normalize(model.encode_image(data.x).float(), dim=-1) @ text.T
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in norms if method == "tent" else []:
        m.train()
        m.momentum = 0.0
    cos = F.normalize(model.encode_image(data.x).float(), dim=-1) @ text.T
    probs = torch.softmax(100 * cos, dim=-1)
    if method == "tent":
        loss = -(probs * torch.log(probs + 1e-5)).sum(1).mean()
    elif method == "pouf":
        cost = 1 - cos
        transport = (cost * probs).sum(1).mean() + (cost * torch.softmax(100 * cos, dim=0)).sum(0).mean()
        mean = probs.mean(0)
        im = -(probs * torch.log(probs + 1e-5)).sum(1).mean() + (mean * torch.log(mean + 1e-5)).sum()
        loss = transport + 0.3 * im
    else:  # upl: the `per_class` most confident zero-shot images of each predicted class
        zp = torch.softmax(100 * zero, dim=-1)
        conf, pred = zp.max(1)
        keep, labels = [], []
        for k in range(len(names)):
            members = [i for i in range(len(zp)) if pred[i] == k]
            members.sort(key=lambda i: (-conf[i].item(), i))
            keep += members[:per_class]
            labels += [k] * len(members[:per_class])
        loss = F.cross_entropy(100 * cos[keep], torch.tensor(labels))
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    loss.backward()
    optimizer.step()
    return {n: own[n].detach().clone() for n in tuned}


@pytest.mark.parametrize("method", ["upl", "pouf", "tent"])
def test_one_step_equals_the_eager_computation(method, toy):
    """On the toy CLIP (a ResNet: Tent's batch statistics matter)."""
    bundle = toy
    data = Tensors(bundle)
    names = tw.CLASS_NAMES[:4]
    lr = 0.05
    # one step: the whole set (UPL: its pseudo-labelled images) in one batch; UPL's warm-up lr made large to see
    step = dict(epochs=1, batch_size=64, tune="norm", eval_train=False, upl_per_class=2)
    step |= {"warmup_lr": lr} if method == "upl" else {"lr_norm": lr}
    original = {n: p.detach().clone() for n, p in bundle.model.named_parameters()}
    result = ueo.fit(bundle, names, data, method=method, **step)
    cfg = result.config
    tuned = list(result.adapted.tensors)
    assert all(p.grad is None for p in bundle.model.parameters())  # fit leaves no gradient on the model
    expected = eager_step(
        bundle,
        data,
        method,
        names,
        tuned=tuned,
        lr=lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
        weight_decay=cfg.weight_decay,
    )
    recipe = {"upl": (True, False, 5e-4), "pouf": (True, True, 1e-3), "tent": (True, False, 0.0)}[method]
    assert (cfg.momentum == 0.9, cfg.nesterov, cfg.weight_decay) == recipe  # (the recipe the eager step follows)
    for name in tuned:
        diff = (result.adapted.tensors[name] - expected[name]).abs().max()
        step_size = (expected[name] - original[name]).abs().max()
        assert diff <= 1e-3 * step_size + 1e-7, (name, float(diff), float(step_size))
    assert any(not torch.equal(result.adapted.tensors[n], original[n]) for n in tuned)  # the step moved them


# -- TPT: per image, and no trace ----------------------------------------------------------------------------


def test_tpt_tunes_each_image_alone_and_leaves_no_trace(tiny_vit, generated):
    names = CLASSES[:3]
    data = generated(4, [0, 1, 2], seed=4)
    other = generated(4, [2, 1, 0], seed=9)  # image 0 differs; images 1-3 are the same, at the same places
    changed = torch.utils.data.ConcatDataset(
        [torch.utils.data.Subset(other, [0]), torch.utils.data.Subset(data, [1, 2, 3])]
    )
    _, plain = ueo.evaluate(tiny_vit, data, class_names=names, cache=False)
    _, tuned = ueo.evaluate(tiny_vit, data, class_names=names, method="tpt", batch_size=2, cache=False)
    _, after_another = ueo.evaluate(tiny_vit, changed, class_names=names, method="tpt", batch_size=2, cache=False)
    assert not torch.allclose(tuned.cosines, plain.cosines, atol=1e-4)  # the step moves the predictions
    # what came before an image (another image 0, tuned first) leaves no trace on it
    assert torch.allclose(tuned.cosines[1:], after_another.cosines[1:], atol=1e-6)
    assert not torch.allclose(tuned.cosines[0], after_another.cosines[0], atol=1e-4)


def test_tpt_puts_the_context_back_after_each_image(tiny_vit):
    from ueo.method.inference import TestTimePrompt
    from ueo.model.prompts import PromptLearner

    learner = PromptLearner(tiny_vit, CLASSES[:3])
    before = learner.ctx.detach().clone()
    tpt = TestTimePrompt(tiny_vit.model, learner, FitConfig.for_method("tpt"))
    views = F.normalize(torch.randn(64, tiny_vit.model.text_projection.shape[1]), dim=-1)
    cosines = tpt.one_image(views, views[0])
    assert torch.equal(learner.ctx, before) and learner.ctx.grad is None
    with torch.no_grad():
        plain = views[0] @ learner.text_features().T
    assert cosines.shape == (3,) and not torch.allclose(cosines, plain, atol=1e-5)


# -- through the front door ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy_folder(tmp_path_factory):
    """The toy world's opda adaptation images as class folders (2 per class), and its class list."""
    root = tmp_path_factory.mktemp("toy") / "data"
    images, _ = tw.scenario("opda", per_class=2, test_per_class=1)
    for i, (label, index) in enumerate(images.samples):
        folder = root / tw.CLASS_NAMES[label].replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        images.images[i].save(folder / f"{index}.png")
    classes = root.parent / "classes.txt"
    classes.write_text("\n".join(tw.CLASS_NAMES[: tw.NUM_KNOWN]) + "\n")
    return root, classes


@pytest.mark.slow
@pytest.mark.parametrize("method", ["upl", "pouf", "tent", "tpt"])
def test_every_baseline_through_ueo_fit_with_its_outputs(method, toy_folder, tmp_path, capsys):
    data, classes = toy_folder
    out = tmp_path / "run"
    args = fit_args("toyworld", data, out, "--test", data, "--method", method, classes=classes, model="ueo-toy-rn")
    code, _, err = run_cli(capsys, [*args, "--epochs", "2"] if method != "tpt" else args)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run"]["method"] == method and (out / "adapted.safetensors").is_file()
    config = (out / "config.yaml").read_text()
    recipe = {
        "upl": "lr_prompt: 0.002",
        "pouf": "schedule: inverse",
        "tent": "lr_norm: 0.00025",
        "tpt": "optimizer: adamw",
    }
    assert recipe[method] in config and "batch_size: 4" in config  # the recipe where the flags are silent
    page = (out / "report.html").read_text(encoding="utf-8")
    assert f"<title>{method} on " in page
    rows = {r["path"]: r for r in read_rows(out / "predictions.csv")}
    assert len(rows) == 32
    if method in ("tpt", "tent"):  # `ueo predict` with the state predicts as the method does: the same numbers
        code, _, err = run_cli(
            capsys,
            ["predict", "--adapted", out / "adapted.safetensors", "--data", data, "--out", tmp_path / "p"]
            + ["--device", "cpu", "--threshold", "fitted", "--quiet"],
        )
        assert code == 0, err
        again = {r["path"]: r for r in read_rows(tmp_path / "p" / "predictions.csv")}
        assert {p: (r["prediction"], r["score"]) for p, r in again.items()} == {
            p: (r["prediction"], r["score"]) for p, r in rows.items()
        }


def read_rows(path):
    from helpers import read_csv

    return read_csv(path)


def test_bad_input_for_the_baselines_is_exit_2_with_nothing_lost(labeled_data, tiny_vit_weights, tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, fit_args(tiny_vit_weights, labeled_data, out, "--method", "tpt"))
    assert code == 2 and "--method tpt tunes the prompt for each test image" in err and "--test" in err
    assert not out.exists() or not any(out.iterdir())
    code, _, err = run_cli(
        capsys, fit_args(tiny_vit_weights, labeled_data, out, "--method", "upl", "--upl-per-class", "0")
    )
    assert code == 2 and "--upl-per-class must be >= 1" in err
    with pytest.raises(SystemExit) as stopped:
        run_cli(capsys, fit_args(tiny_vit_weights, labeled_data, out, "--method", "shot"))
    assert stopped.value.code == 2 and "invalid choice: 'shot'" in capsys.readouterr().err
    # UPL on images the zero-shot model all predicts as one class: nothing to tell apart
    same = tmp_path / "same"
    make_folder(same, classes=("cat",), n=1)
    for i in range(1, 4):
        (same / "cat" / f"{i}.jpg").write_bytes((same / "cat" / "0.jpg").read_bytes())
    code, _, err = run_cli(capsys, fit_args(tiny_vit_weights, same, tmp_path / "upl", "--method", "upl"))
    assert code == 2 and "UPL learns from the images the zero-shot model predicts as each class" in err
    assert "Traceback" not in err and not (tmp_path / "upl" / "metrics.json").exists()


# -- UPL's ensemble, and resuming with momentum --------------------------------------------------------------


def test_upl_ensemble_predicts_the_mean_of_its_contexts(toy):
    names = tw.CLASS_NAMES[: tw.NUM_KNOWN]
    data, _ = tw.scenario("opda", per_class=1, test_per_class=1)
    result = ueo.fit(toy, names, data, method="upl", upl_prompts=2, epochs=2, batch_size=2, upl_per_class=3)
    ctx = result.adapted.tensors["prompt.ctx"]
    assert ctx.dim() == 3 and len(ctx) == 2 and not torch.allclose(ctx[0], ctx[1])  # two seeds, two contexts
    _, together = ueo.evaluate(toy, data, adapted=result.adapted, cache=False)
    alone = []
    for member in range(2):
        state = ueo.AdaptedState(**{**vars(result.adapted), "tensors": {"prompt.ctx": ctx[member]}})
        alone.append(ueo.evaluate(toy, data, adapted=state, cache=False)[1].cosines)
    assert torch.allclose(together.cosines, (alone[0] + alone[1]) / 2, atol=1e-5)
    assert torch.allclose(
        result.outputs["test" if "test" in result.outputs else "train"].cosines, together.cosines, atol=1e-5
    )


@pytest.mark.parametrize("prompts", [1, 2])
def test_a_resumed_baseline_ends_where_the_whole_run_ends(toy, prompts):
    """SGD's momentum (UPL's recipe) and the ensemble's finished contexts travel in the checkpoint."""
    names = tw.CLASS_NAMES[: tw.NUM_KNOWN]
    data, _ = tw.scenario("opda", per_class=1, test_per_class=1)
    options = dict(method="upl", upl_prompts=prompts, epochs=2, batch_size=4, upl_per_class=3, warmup_epochs=0)
    saved = []
    whole = ueo.fit(toy, names, data, checkpoint=saved.append, **options)
    middle = saved[2 if prompts == 2 else 0]  # after the first epoch (2 members: of the second)
    assert middle["meta"]["member"] == (1 if prompts == 2 else 0)
    assert any(k.startswith("optim/") for k in middle["tensors"])  # the momentum buffers
    resumed = ueo.fit(toy, names, data, resume=middle, **options)
    for name, value in whole.adapted.tensors.items():
        assert torch.allclose(resumed.adapted.tensors[name], value, atol=1e-6), name
