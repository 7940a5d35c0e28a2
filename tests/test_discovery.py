"""What the class list misses: absent listed classes, groups of unknown images, their names and the corrected
list, through ueo.discover and `ueo fit/eval/predict/discover`; the maths on hand-made features."""

import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_mutual_info_score

import ueo
from helpers import fit_args, read_csv, write_photos
from ueo.cli import main
from ueo.discovery.find import MIN_PER_CLASS, absent_verdicts, class_shares, find_groups
from ueo.discovery.naming import SYNONYM_COSINE, allowed_names, best_names
from ueo.discovery.vocabulary import MAX_NAMES, default_vocabulary
from ueo.experiments import toyworld as tw

LISTED = tw.CLASS_NAMES[:16]  # 12-15 never occur below; 16-19 are images of no listed class


@pytest.fixture(scope="module")
def toy():
    """The shipped toy CLIP fitted for one epoch on its clean style (which it knows well) where the listed
    classes 12-15 never occur and the unknown classes 16-19 do: the right answer is known."""
    bundle = ueo.load_clip("ueo-toy-rn", pretrained="toyworld", device="cpu")
    images = tw.ToyImages("clean", list(range(12)) + [16, 17, 18, 19], 16, seed=1)
    settings = dict(epochs=1, batch_size=64, lr_prompt=1e-3, lr_norm=1e-3, eval_every=0, eval_train=False, seed=0)
    result = ueo.fit(bundle, LISTED, images, **settings)
    return result, images, [label for label, _ in images.samples]


def test_absent_classes_are_flagged_and_the_unknown_groups_named(toy):
    result, images, labels = toy
    found = ueo.discover(result, images, vocabulary=tw.VOCABULARY)
    assert found.absent_classes == ["red moon", "blue moon", "red arrow", "blue arrow"]
    assert [c.decided for c in found.absent][12:14] == [0, 0]
    assert math.isclose(sum(c.share for c in found.absent), 1.0, rel_tol=1e-5)
    truth = {16: "red bar", 17: "blue bar", 18: "red hourglass", 19: "blue hourglass"}
    assert len(found.groups) == 4
    for group in found.groups:
        classes = {labels[i] for i in group.members}
        assert len(classes) == 1 and classes <= set(truth)  # each group is one unknown class
        assert group.names[0][0] == truth[classes.pop()] and group.looks_like is None
        assert len(group.names) == 3 and group.names[0][1] >= group.names[1][1] >= group.names[2][1]
    assert sorted([i for g in found.groups for i in g.members] + found.other) == sorted(found.unknown)
    assert found.suggested_classes == LISTED[:12] + [g.name for g in found.groups]
    assert sorted(found.suggested_classes[12:]) == sorted(truth.values())
    assert "4 listed classes seem absent (red moon, blue moon, red arrow, blue arrow); 4 groups" in found.summary


def test_members_are_most_central_first(toy):
    result, images, _ = toy
    found = ueo.discover(result, images, vocabulary="none")
    _, outputs = ueo.evaluate(result.bundle, images, adapted=result.adapted, features=True)
    for group in found.groups:
        members = outputs.features[group.members]
        centre = torch.nn.functional.normalize(members.mean(0), dim=0)
        closeness = (members @ centre).tolist()
        assert closeness == sorted(closeness, reverse=True)
        assert group.names == [] and group.name is None  # naming off


def test_no_class_is_flagged_when_every_class_is_present(toy):
    result, _, _ = toy
    images = tw.ToyImages("clean", list(range(16)) + [16, 18], 12, seed=2)
    found = ueo.discover(result, images, vocabulary=tw.VOCABULARY)
    assert found.absent_classes == [] and "no listed class seems absent" in found.summary.lower()
    assert found.suggested_classes[:16] == LISTED


def test_listed_classes_and_their_variants_are_never_proposed(toy):
    result, images, labels = toy
    variants = ["Red_Circle", "RED SQUARES", "blue  hearts", "red_Star", "Blue Cross"]
    # threshold 1: every image is decided unknown, so most groups hold images of listed classes
    found = ueo.discover(result, images, vocabulary=tw.VOCABULARY + variants, threshold=1.0)
    assert len(found.unknown) == len(images) and found.absent_classes == []  # nothing accepted: no verdict
    proposed = {n for g in found.groups for n, _ in g.names}
    assert proposed and not proposed & (set(LISTED) | set(variants))
    looks = [g for g in found.groups if g.looks_like]
    assert looks and all(g.looks_like in LISTED and g.name is None for g in looks)
    for group in looks:  # a group that looks like a listed class is mostly that class
        majority = max({labels[i] for i in group.members}, key=[labels[i] for i in group.members].count)
        assert tw.CLASS_NAMES[majority].split()[1] == group.looks_like.split()[1]
    assert set(found.suggested_classes) == set(LISTED) | {g.name for g in found.groups if g.name}


# ---------------------------------------------------------------------------------------- hand-made maths
def unit(rows):
    return torch.nn.functional.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


def test_shares_are_the_mean_probability_over_the_accepted_images():
    cosines = torch.tensor([[0.30, 0.28, 0.20], [0.25, 0.31, 0.20], [0.10, 0.10, 0.10]])
    accepted = torch.tensor([True, True, False])
    shares, decided = class_shares(cosines, accepted)

    def softmax(row):
        e = [math.exp(100 * c) for c in row]
        return [x / sum(e) for x in e]

    by_hand = [(a + b) / 2 for a, b in zip(softmax([0.30, 0.28, 0.20]), softmax([0.25, 0.31, 0.20]))]
    assert shares.tolist() == pytest.approx(by_hand, rel=1e-5)
    assert decided.tolist() == [1, 1, 0]
    # K = 3: a share below 0.5 / 3 is absent; class 2 gets e^-8/(1+e^-2+e^-8) and e^-11/(...) ~ 2e-4
    assert absent_verdicts(shares, accepted=3 * MIN_PER_CLASS).tolist() == [False, False, True]
    assert absent_verdicts(shares, accepted=3 * MIN_PER_CLASS - 1) is None  # too few images: no verdict
    assert absent_verdicts(torch.zeros(3), accepted=0) is None  # nothing accepted: no verdict


def blobs(sizes, dim=16, spread=0.05, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.linalg.qr(rng.normal(size=(dim, dim)))[0][: len(sizes)]  # orthogonal directions
    points = np.concatenate([c + spread * rng.normal(size=(n, dim)) for c, n in zip(centres, sizes)])
    labels = np.repeat(np.arange(len(sizes)), sizes)
    order = rng.permutation(len(points))
    points = points[order] / np.linalg.norm(points[order], axis=1, keepdims=True)
    return points.astype(np.float32), labels[order]


def test_groups_recover_a_known_structure_and_small_ones_go_to_other():
    points, truth = blobs([40, 30, 20])
    found = find_groups(points)
    assert len(set(found)) == 3 and adjusted_mutual_info_score(truth, found) == pytest.approx(1.0)
    assert np.bincount(found).tolist() == [40, 30, 20]  # numbered by size, biggest first
    points, truth = blobs([40, 30, 2])  # 2 < MIN_GROUP: its images are in no group
    found = find_groups(points)
    assert set(found[truth == 2]) == {-1} and adjusted_mutual_info_score(truth[truth < 2], found[truth < 2]) == 1.0
    rng = np.random.default_rng(1)
    noise = rng.normal(size=(200, 16)).astype(np.float32)  # no structure: one group
    assert set(find_groups(noise / np.linalg.norm(noise, axis=1, keepdims=True))) == {0}
    assert find_groups(points[:2]).tolist() == [-1, -1] and find_groups(points[:0]).tolist() == []


def test_names_equal_or_near_a_listed_class_are_refused_and_the_nearest_allowed_wins():
    listed = ["cat", "dog"]
    listed_features = unit([[1, 0, 0, 0], [0, 1, 0, 0]])
    a = math.sqrt(1 - 0.96**2)  # cos 0.96 with "cat": a near-duplicate
    b = math.sqrt(1 - 0.94**2)  # cos 0.94: a different name
    names = ["Cats", "kitty", "kitten-ish", "fox", "Dog_"]
    features = unit([[1, 0, 0, 0], [0.96, 0, a, 0], [0.94, 0, 0, b], [0, 0, 0, 1], [0, 1, 0, 0]])
    assert SYNONYM_COSINE == 0.95
    allowed = allowed_names(names, features, listed, listed_features)
    assert allowed.tolist() == [False, False, True, True, False]
    centres = unit([[0.9, 0, 0, 0.1], [0, 0, 0.2, 1]])
    assert best_names(centres, features, allowed, 2) == [[2, 3], [3, 2]]


# ------------------------------------------------------------------------------------------- vocabularies
def test_the_default_vocabulary_is_timm_s_imagenet_21k_names():
    from timm.data import ImageNetInfo

    synsets = ImageNetInfo("imagenet-22k").label_descriptions(as_dict=False)
    names = default_vocabulary()
    firsts = {d.split(",")[0].strip().lower() for d in synsets}
    assert 20_000 < len(names) <= len(synsets) and len(names) == len({n.lower() for n in names})
    assert {n.lower() for n in names} <= firsts and "tabby" in {n.lower() for n in names}


@pytest.fixture(scope="module")
def fitted(tiny_vit_weights, tmp_path_factory):
    """A `ueo fit` run on real-size photos (listed: cat, dog, fish; the folder holds cat, dog, bird)."""
    root = tmp_path_factory.mktemp("discover")
    write_photos(root / "data", classes=("cat", "dog", "bird"))
    assert main(fit_args(tiny_vit_weights, root / "data", root / "run", classes="cat,dog,fish")) == 0
    return root


@pytest.mark.slow
def test_fit_writes_what_the_list_misses_and_the_page_says_it_first(fitted):
    run = fitted / "run"
    absent = read_csv(run / "absent.csv")
    assert [r["class"] for r in absent] == ["cat", "dog", "fish"]
    assert set(absent[0]) == {"class", "share", "decided", "verdict"}
    assert {r["verdict"] for r in absent} == {"too few images"}  # 14 images: under 8 per listed class
    metrics = json.loads((run / "metrics.json").read_text())
    found = metrics["discovery"]
    rows = read_csv(run / "discovered.csv")
    predictions = read_csv(run / "predictions.csv")
    unknown = {r["path"] for r in predictions if r["prediction"] == "unknown"}
    assert {r["path"] for r in rows} == unknown and found["num_unknown"] == len(unknown)
    for group in found["groups"]:
        members = [r for r in rows if r["group"] == str(group["group"])]
        assert len(members) == group["size"] and [int(r["rank"]) for r in members] == list(range(1, len(members) + 1))
        assert {r["names"] for r in members} == {"|".join(n for n, _ in group["names"])}
    page = (run / "report.html").read_text(encoding="utf-8")
    first = page.index('<p id="what-changed">')
    assert first < page.index("<nav>") and found["summary"].split(";")[0] in page[first:]
    assert 'id="discovery"' in page


def test_suggested_classes_work_as_the_class_list_of_a_rerun(fitted, tiny_vit_weights, capsys):
    run = fitted / "run"
    text = (run / "suggested_classes.txt").read_text(encoding="utf-8")
    found = json.loads((run / "metrics.json").read_text())["discovery"]
    names = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert names == found["suggested_classes"]
    changes = [line for line in text.splitlines()[1:] if line.startswith("#")]
    removed = [c for c in ["cat", "dog", "fish"] if c not in names]
    assert len(changes) == len(removed) + len(names) - (3 - len(removed))  # one comment line per change
    assert (
        main(fit_args(tiny_vit_weights, fitted / "data", fitted / "rerun", classes=str(run / "suggested_classes.txt")))
        == 0
    )
    assert json.loads((fitted / "rerun" / "metrics.json").read_text())["class_names"] == names


def write_lines(path, data: bytes):
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "no names in the vocabulary"),
        (b"\n\n  \n", "no names in the vocabulary"),
        (b"caf\xe9\nbar\n", "not UTF-8"),
        (b"x\n" * (MAX_NAMES + 1), "at most 50,000 names"),
    ],
)
def test_a_bad_vocabulary_is_refused_before_any_work_and_loses_nothing(fitted, tmp_path, capsys, content, message):
    run = fitted / "run"
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    vocabulary = write_lines(tmp_path / "names.txt", content)
    args = ["eval", "--adapted", str(run / "adapted.safetensors"), "--test", str(fitted / "data"), "--out", str(run)]
    assert main([*args, "--vocabulary", vocabulary, "--overwrite", "--quiet", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert message in err and "--vocabulary" in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert main([*args[:-1], str(tmp_path / "x"), "--vocabulary", str(tmp_path / "missing.txt")]) == 2
    assert "no such vocabulary file" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_duplicates_and_a_byte_order_mark_are_handled_with_a_warning(fitted, tmp_path, capsys):
    vocabulary = write_lines(tmp_path / "names.txt", "\ufeffbird\nBird\nfox\n\nfox\nowl\n".encode())
    out = tmp_path / "out"
    args = ["discover", "--adapted", str(fitted / "run" / "adapted.safetensors"), "--data", str(fitted / "data")]
    assert main([*args, "--out", str(out), "--vocabulary", vocabulary, "--quiet", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "2 name(s) left out" in captured.err and "absent.csv" in captured.out
    names = {n for r in read_csv(out / "discovered.csv") for n in r["names"].split("|") if n}
    assert names <= {"bird", "fox", "owl"}  # the first line's name without its byte-order mark


def test_predict_unlabeled_with_no_unknown_and_with_one_unknown(fitted, tmp_path, capsys):
    base = ["predict", "--adapted", str(fitted / "run" / "adapted.safetensors"), "--quiet", "--device", "cpu"]
    data = tmp_path / "flat"
    data.mkdir()
    for path in sorted((fitted / "data").rglob("*.*")):
        (data / f"{path.parent.name}_{path.name}").write_bytes(path.read_bytes())  # no class folders: unlabeled
    assert main([*base, "--data", str(data), "--out", str(tmp_path / "all"), "--threshold", "0"]) == 0
    found = json.loads((tmp_path / "all" / "metrics.json").read_text())["discovery"]
    assert found["num_unknown"] == 0 and found["groups"] == [] and "no image was decided unknown" in found["summary"]
    assert read_csv(tmp_path / "all" / "discovered.csv") == []
    scores = sorted(float(r["score"]) for r in read_csv(tmp_path / "all" / "predictions.csv"))
    cut = (scores[0] + scores[1]) / 2
    assert main([*base, "--data", str(data), "--out", str(tmp_path / "one"), "--threshold", str(cut)]) == 0
    found = json.loads((tmp_path / "one" / "metrics.json").read_text())["discovery"]
    assert found["num_unknown"] == 1 and found["groups"] == [] and found["num_other"] == 1
    assert "the 1 unknown image forms no group" in found["summary"]
    assert [r["group"] for r in read_csv(tmp_path / "one" / "discovered.csv")] == ["other"]
    capsys.readouterr()
    assert main([*base, "--data", str(data), "--out", str(tmp_path / "off"), "--no-discover"]) == 0
    assert not (tmp_path / "off" / "absent.csv").exists()
    assert "discovery" not in json.loads((tmp_path / "off" / "metrics.json").read_text())


def test_the_vocabulary_features_are_cached_beside_the_decode_cache(fitted, tmp_path, capsys):
    base = ["discover", "--adapted", str(fitted / "run" / "adapted.safetensors"), "--data", str(fitted / "data")]
    cache = tmp_path / "cache"
    vocabulary = write_lines(tmp_path / "v.txt", b"bird\nfox\nowl\nteapot\n")
    common = ["--vocabulary", vocabulary, "--cache-dir", str(cache), "--quiet", "--device", "cpu", "--threshold", "0.4"]
    assert main([*base, "--out", str(tmp_path / "a"), *common]) == 0
    kept = sorted((cache / "vocabulary").glob("*.safetensors"))
    assert len(kept) >= 1
    stamps = [p.stat().st_mtime_ns for p in kept]
    assert main([*base, "--out", str(tmp_path / "b"), *common]) == 0
    assert [p.stat().st_mtime_ns for p in sorted((cache / "vocabulary").glob("*.safetensors"))] == stamps
    assert (tmp_path / "a" / "discovered.csv").read_text() == (tmp_path / "b" / "discovered.csv").read_text()


def test_no_verdict_on_absent_classes_without_enough_images(toy):
    """Two images cannot say that 15 of 16 classes are absent: too few to tell, and nothing is removed."""
    result, images, _ = toy
    few = torch.utils.data.Subset(images, [0, 1])
    found = ueo.discover(result, few, vocabulary="none")
    assert found.too_few and found.absent_classes == []
    assert found.suggested_classes[: len(result.adapted.class_names)] == list(result.adapted.class_names)
    assert found.summary.startswith("Too few images to tell")
    assert found.record()["absent_verdict"] == "too few images"


@pytest.mark.slow
def test_a_stop_request_is_heard_while_the_vocabulary_is_encoded(fitted, tmp_path):
    """ctrl-C during the encoding of a long vocabulary (minutes for ViT-B-16 on a CPU) stops within a batch."""
    import subprocess
    import sys

    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"thing number {i}" for i in range(5000)) + "\n")
    script = (
        "import os, signal, sys\nimport ueo.discovery.vocabulary as v\nfrom ueo.cli.main import main\nreal = v.encode_tokens\n"
        "def encode(*a, **k):\n    os.kill(os.getpid(), signal.SIGINT)\n    return real(*a, **k)\n"
        "v.encode_tokens = encode\nsys.exit(main(sys.argv[1:]))\n"
    )
    run = fitted / "run"
    argv = [
        "predict",
        "--adapted",
        str(run / "adapted.safetensors"),
        "--data",
        str(fitted / "data"),
        "--threshold",
        "0.99",
    ]
    argv += ["--out", str(tmp_path / "p"), "--vocabulary", str(names), "--cache-dir", str(tmp_path / "c"), "--quiet"]
    done = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=600)
    assert done.returncode == 130, done.stderr
    assert "stopped while encoding the vocabulary" in done.stderr and "Traceback" not in done.stderr


def test_a_name_broader_than_a_listed_class_is_never_proposed():
    """'blue' covers 'blue circle' and 'cat' covers 'tabby cat': listed, they would take their images."""
    names = ["blue", "circle", "tabby", "cat", "red bar", "blue star", "bar"]
    listed = ["blue circle", "tabby cat", "red square"]
    features = unit(np.eye(12)[: len(names)].tolist())  # far from each other and from the listed classes
    listed_features = unit(np.eye(12)[-3:].tolist())
    allowed = allowed_names(names, features, listed, listed_features)
    assert [n for n, ok in zip(names, allowed.tolist()) if ok] == ["red bar", "blue star", "bar"]
