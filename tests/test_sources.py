"""Collections as people keep them: WebDataset shards (paths, globs, braces, pipe:), CLIP_benchmark roots,
Hugging Face datasets (save_to_disk, parquet, imagefolder + metadata.csv), through `ueo fit/predict`.
The shards and datasets are written by webdataset's and datasets' own writers, not by ueo."""

import csv
import json
import sys
import tarfile

import numpy as np
import pytest

from helpers import fit_args, read_csv, run_cli, write_photos
from ueo.cli import main

wds = pytest.importorskip("webdataset")
datasets = pytest.importorskip("datasets")

CLASSES = ("cat", "dog")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Real-size JPEG and PNG photos (300-2000 px, 10:3 and 3:10) in class folders, plus an unknown class."""
    root = tmp_path_factory.mktemp("photos") / "data"
    write_photos(root, classes=("cat", "dog", "zebra"))
    return root


def files_of(folder):
    """(path, class folder) of the images under ``folder``, in ueo's order (sorted paths)."""
    return [(p, p.parent.name) for p in sorted(folder.rglob("*")) if p.is_file()]


def write_shards(folder, photos, per_shard=5, label="cls", names=("cat", "dog", "zebra"), classnames=True):
    """WebDataset shards written by webdataset's TarWriter: image bytes under their extension, the label
    (with ``classnames``, a classnames.txt beside them names the class indices)."""
    folder.mkdir(parents=True, exist_ok=True)
    if classnames and label == "cls":
        (folder / "classnames.txt").write_text("\n".join(names) + "\n")
    items = files_of(photos)
    for start in range(0, len(items), per_shard):
        with wds.TarWriter(str(folder / f"shard-{start // per_shard:04d}.tar")) as sink:
            for i, (path, cls) in enumerate(items[start : start + per_shard], start):
                sample = {"__key__": f"s{i:05d}", path.suffix.lstrip(".").lower(): path.read_bytes()}
                if label == "cls":
                    sample["cls"] = str(names.index(cls)).encode()
                elif label == "txt":
                    sample["txt"] = cls.encode()
                elif label == "json":
                    sample["json"] = json.dumps({"label": cls}).encode()
                sink.write(sample)
    return folder


def outputs(folder):
    metrics = json.loads((folder / "metrics.json").read_text())
    rows = read_csv(folder / "predictions.csv")
    return metrics, [(r["label"], r["prediction"], r["score"], r["top1"]) for r in rows], [r["path"] for r in rows]


def fit(capsys, weights, data, out, *extra, classes="cat,dog", cache=None):
    args = fit_args(weights, data, out, "--test", str(data), "--no-report", "--no-discover", *extra, classes=classes)
    code, _, err = run_cli(capsys, [*args, "--cache-dir", str(cache or out.parent / "cache")])
    return code, err


@pytest.fixture(scope="module")
def folder_run(photos, tmp_path_factory, tiny_vit_weights):
    out = tmp_path_factory.mktemp("folder") / "out"
    assert (
        main(
            fit_args(
                tiny_vit_weights,
                photos,
                out,
                "--test",
                str(photos),
                "--no-report",
                "--no-discover",
                "--cache-dir",
                str(out.parent / "cache"),
            )
        )
        == 0
    )
    return outputs(out)


def same_as_folder(folder_run, out):
    metrics, predictions, paths = outputs(out)
    want_metrics, want_predictions, _ = folder_run
    for key in ("zeroshot", "adapted", "threshold", "num_adaptation_images", "num_test_images"):
        assert metrics[key] == want_metrics[key], key
    assert predictions == want_predictions
    return paths


@pytest.mark.slow
@pytest.mark.parametrize("form", ["folder", "glob", "brace", "pipe"])
def test_shards_give_what_the_same_images_as_a_folder_give(
    folder_run, photos, tmp_path, capsys, tiny_vit_weights, form
):
    # (a pipe has no folder to find classnames.txt in: its samples name their class in txt)
    shards = write_shards(tmp_path / "shards", photos, label="txt" if form == "pipe" else "cls")
    spec = {
        "folder": str(shards),
        "glob": str(shards / "shard-*.tar"),
        "brace": str(shards / "shard-{0000..0002}.tar"),
        "pipe": "::".join(f"pipe:cat {p}" for p in sorted(shards.glob("*.tar"))),
    }[form]
    code, err = fit(capsys, tiny_vit_weights, spec, tmp_path / "out")
    assert code == 0, err
    paths = same_as_folder(folder_run, tmp_path / "out")
    assert paths[0].endswith("::s00000.jpg") and "shard-0000.tar" in paths[0]


def test_class_indices_without_names_index_the_class_list(photos, tmp_path):
    import ueo

    images = ueo.read_images(str(write_shards(tmp_path / "shards", photos, classnames=False)), ["cat", "dog"])
    want = [("cat", "dog", "zebra").index(cls) for _, cls in files_of(photos)]  # zebra: 2, an unknown class
    assert images.labeled and images.labels == want and images.unknown_names == {}


@pytest.mark.parametrize("label", ["txt", "json"])
def test_labels_from_txt_or_json_name_the_classes(folder_run, photos, tmp_path, capsys, tiny_vit_weights, label):
    shards = write_shards(tmp_path / "shards", photos, label=label)
    code, err = fit(capsys, tiny_vit_weights, str(shards), tmp_path / "out")
    assert code == 0, err
    same_as_folder(folder_run, tmp_path / "out")


def test_a_clip_benchmark_root_reads_its_test_split_and_its_class_names(
    folder_run, photos, tmp_path, capsys, tiny_vit_weights
):
    root = tmp_path / "wds_pets"
    order = ("zebra", "dog", "cat")  # indices name classnames.txt's order
    write_shards(root / "test", photos, names=order, classnames=False)
    write_shards(root / "train", photos, names=order, classnames=False)
    (root / "classnames.txt").write_text("zebra\ndog\ncat\n")
    # its classnames.txt as --classes (order zebra, dog, cat): a run of its own
    code, err = fit(capsys, tiny_vit_weights, str(root), tmp_path / "all", classes=str(root / "classnames.txt"))
    assert code == 0, err
    assert json.loads((tmp_path / "all" / "metrics.json").read_text())["class_names"] == ["zebra", "dog", "cat"]
    # a class list of two: zebra (index 0 in the shards) becomes the unknown class, as the folder has it
    code, err = fit(capsys, tiny_vit_weights, str(root), tmp_path / "out")
    assert code == 0, err
    same_as_folder(folder_run, tmp_path / "out")


def test_without_classes_the_collection_names_them(photos, tmp_path, capsys, tiny_vit_weights):
    root = tmp_path / "wds"
    write_shards(root / "test", photos, names=("cat", "dog", "zebra"), classnames=False)
    (root / "classnames.txt").write_text("cat\ndog\nzebra\n")
    args = fit_args(tiny_vit_weights, root, tmp_path / "out", "--no-report", "--no-discover")
    i = args.index("--classes")
    code, out, err = run_cli(capsys, args[:i] + args[i + 2 :] + ["--cache-dir", str(tmp_path / "cache")])
    assert code == 0, err
    assert "the 3 that --data names (cat, dog, zebra)" in out + err


def hf_dataset(photos, names=("cat", "dog", "zebra")):
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(names))})
    items = files_of(photos)
    return datasets.Dataset.from_dict(
        {"image": [str(p) for p, _ in items], "label": [names.index(c) for _, c in items]}, features=features
    )


@pytest.mark.parametrize("form", ["save_to_disk", "dataset_dict", "parquet", "parquet_folder"])
def test_a_hugging_face_dataset_gives_what_the_folder_gives(
    folder_run, photos, tmp_path, capsys, tiny_vit_weights, form
):
    dataset = hf_dataset(photos, names=("zebra", "cat", "dog"))  # ClassLabel names, in an order of their own
    if form == "save_to_disk":
        dataset.save_to_disk(str(tmp_path / "ds"))
        spec = tmp_path / "ds"
    elif form == "dataset_dict":
        datasets.DatasetDict({"train": dataset.select([0]), "test": dataset}).save_to_disk(str(tmp_path / "ds"))
        spec = tmp_path / "ds"
    else:
        (tmp_path / "pq").mkdir()
        dataset.select(range(8)).to_parquet(str(tmp_path / "pq" / "part-0.parquet"))
        dataset.select(range(8, len(dataset))).to_parquet(str(tmp_path / "pq" / "part-1.parquet"))
        spec = tmp_path / "pq" if form == "parquet_folder" else tmp_path / "pq" / "*.parquet"
    code, err = fit(capsys, tiny_vit_weights, str(spec), tmp_path / "out")
    assert code == 0, err
    paths = same_as_folder(folder_run, tmp_path / "out")
    assert paths[0].endswith("::row 0")


def test_an_imagefolder_with_metadata_csv(folder_run, photos, tmp_path, capsys, tiny_vit_weights):
    import shutil

    root = tmp_path / "imagefolder"
    root.mkdir()
    with open(root / "metadata.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file_name", "label"])
        for i, (path, cls) in enumerate(files_of(photos)):
            name = f"{i:03d}-{path.name}"  # flat: the labels come from the metadata, not from folders
            shutil.copy(path, root / name)
            writer.writerow([name, cls])
    code, err = fit(capsys, tiny_vit_weights, str(root), tmp_path / "out")
    assert code == 0, err
    same_as_folder(folder_run, tmp_path / "out")


# ------------------------------------------------------------------------------------------- bad input
def test_a_corrupt_member_is_skipped_by_shard_and_key(photos, tmp_path, capsys, tiny_vit_weights):
    shards = write_shards(tmp_path / "shards", photos)
    with wds.TarWriter(str(shards / "shard-9999.tar")) as sink:
        sink.write({"__key__": "broken", "jpg": b"\xff\xd8 not really a jpeg", "cls": b"0"})
    code, err = fit(capsys, tiny_vit_weights, str(shards), tmp_path / "out")
    assert code == 0, err
    assert "skipping" in err and "shard-9999.tar::broken.jpg" in err
    skipped = read_csv(tmp_path / "out" / "skipped.csv")
    assert {(r["set"], r["shard"].rsplit("/", 1)[-1], r["key"]) for r in skipped} == {
        ("adaptation", "shard-9999.tar", "broken.jpg"),
        ("test", "shard-9999.tar", "broken.jpg"),
    }
    code, err = fit(capsys, tiny_vit_weights, str(shards), tmp_path / "strict", "--strict")
    assert code == 2 and "broken.jpg" in err and "Traceback" not in err


def test_a_truncated_shard_keeps_what_comes_before_the_cut(photos, tmp_path, capsys, tiny_vit_weights):
    shards = write_shards(tmp_path / "shards", photos, per_shard=8)
    last = sorted(shards.glob("*.tar"))[-1]
    data = last.read_bytes()
    with tarfile.open(last) as tar:
        members = tar.getmembers()
    cut = members[3].offset_data + members[3].size // 2  # inside the second sample's image
    last.write_bytes(data[:cut])
    code, err = fit(capsys, tiny_vit_weights, str(shards), tmp_path / "out")
    assert code == 0, err
    assert "damaged or truncated" in err or "truncated" in err
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    total = len(files_of(photos))
    assert metrics["num_adaptation_images"] == total - (total - 8) + 1  # the 8 of the first shard + 1 before the cut
    skipped = read_csv(tmp_path / "out" / "skipped.csv")
    assert any(r["shard"].endswith(last.name) for r in skipped)


def test_a_parquet_file_without_an_image_column_is_refused(tmp_path, capsys, tiny_vit_weights):
    datasets.Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]}).to_parquet(str(tmp_path / "t.parquet"))
    code, err = fit(capsys, tiny_vit_weights, str(tmp_path / "t.parquet"), tmp_path / "out")
    assert code == 2 and "no image column" in err and "text, label" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra, module, spec", [("wds", "webdataset", "shards"), ("hf", "datasets", "ds")])
def test_a_missing_extra_is_named(photos, tmp_path, capsys, tiny_vit_weights, monkeypatch, extra, module, spec):
    if spec == "shards":
        write_shards(tmp_path / spec, photos)
    else:
        hf_dataset(photos).save_to_disk(str(tmp_path / spec))
    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)  # `import module` raises ImportError
    code, err = fit(capsys, tiny_vit_weights, str(tmp_path / spec), tmp_path / "out")
    assert code == 2 and f"pip install 'ueo[{extra}]'" in err and "Traceback" not in err


def test_a_pipe_needs_the_cache_and_says_so(photos, tmp_path, capsys, tiny_vit_weights):
    shards = write_shards(tmp_path / "shards", photos)
    spec = f"pipe:cat {sorted(shards.glob('*.tar'))[0]}"
    code, err = fit(capsys, tiny_vit_weights, spec, tmp_path / "out", "--no-cache")
    assert code == 2 and "needs the cache" in err and "Traceback" not in err


def test_a_resumed_run_sees_a_shard_rewritten(photos, tmp_path, capsys, tiny_vit_weights):
    """The identity of an image in a shard is the shard's path, size, times, inode and the member's name."""
    shards = write_shards(tmp_path / "shards", photos)
    from ueo.data.imagelist import fingerprint
    from ueo.data.sources import read_images

    before = fingerprint(read_images(str(shards), ["cat", "dog"]))
    first = sorted(shards.glob("*.tar"))[0]
    first.write_bytes(first.read_bytes())  # the same bytes, written again: a new change time
    assert fingerprint(read_images(str(shards), ["cat", "dog"])) != before


def test_an_html_report_shows_images_from_shards(photos, tmp_path, capsys, tiny_vit_weights):
    shards = write_shards(tmp_path / "shards", photos)
    args = fit_args(tiny_vit_weights, shards, tmp_path / "out", "--no-discover")
    code, _, err = run_cli(capsys, [*args, "--cache-dir", str(tmp_path / "cache")])
    assert code == 0, err
    thumbs = list((tmp_path / "out" / "thumbs").glob("*.jpg"))
    assert len(thumbs) >= len(files_of(photos)) // 2
    page = (tmp_path / "out" / "report.html").read_text()
    assert "thumbs/" in page


def test_the_python_api_reads_shards(photos, tmp_path, tiny_vit):
    import ueo

    shards = write_shards(tmp_path / "shards", photos)
    images = ueo.read_images(str(shards), ["cat", "dog"])
    assert len(images) == len(files_of(photos)) and images.labeled
    from PIL import Image

    first = ueo.load_image(images.paths[0])
    with Image.open(files_of(photos)[0][0]) as want:
        assert np.array_equal(np.asarray(first), np.asarray(want.convert("RGB")))


def test_rows_of_parquet_files_with_several_row_groups_are_their_images(photos, tmp_path):
    """A row read at random is found in its row group (the groups' sizes are read once per file)."""
    import pyarrow.parquet as pq
    from PIL import Image

    import ueo

    table = hf_dataset(photos).with_format("arrow")[:]
    pq.write_table(table, tmp_path / "groups.parquet", row_group_size=3)
    assert pq.ParquetFile(tmp_path / "groups.parquet").metadata.num_row_groups > 2
    images = ueo.read_images(str(tmp_path / "groups.parquet"), ["cat", "dog"])
    for member, (path, _) in zip(images.paths, files_of(photos)):
        with Image.open(path) as want:
            assert np.array_equal(np.asarray(ueo.load_image(member)), np.asarray(want.convert("RGB"))), member


@pytest.mark.slow
@pytest.mark.parametrize("form", ["gz", "pipe"])
def test_the_report_shows_images_of_streamed_shards(photos, tmp_path, capsys, tiny_vit_weights, form):
    import gzip

    shards = write_shards(tmp_path / "shards", photos, per_shard=100, label="txt")
    tar = sorted(shards.glob("*.tar"))[0]
    if form == "gz":
        spec = str(tar) + ".gz"
        with open(spec, "wb") as f:
            f.write(gzip.compress(tar.read_bytes()))
        tar.unlink()
    else:
        spec = f"pipe:cat {tar}"
    args = fit_args(tiny_vit_weights, spec, tmp_path / "out", "--no-discover")
    code, _, err = run_cli(capsys, [*args, "--cache-dir", str(tmp_path / "cache")])
    assert code == 0, err
    page = (tmp_path / "out" / "report.html").read_text()
    assert "(image not readable)" not in page and page.count('src="thumbs/') >= len(files_of(photos))
    assert len(list((tmp_path / "out" / "thumbs").glob("*.jpg"))) == len(files_of(photos))
