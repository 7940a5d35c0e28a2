"""What ueo reads as images, and with which label: every image of a collection once, its own label or a clear
refusal, in every container and mix of containers (folders, metadata.csv, list files, WebDataset shards,
Hugging Face datasets, parquet), pixels of any depth. Reached through ``ueo.read_images`` and the CLI; the
containers are written by webdataset's and datasets' own writers, never by ueo."""

import csv
import io
import json
import math
import os
import shutil
import tarfile

import numpy as np
import pytest
from PIL import Image

import ueo
from helpers import fit_args, make_folder, odd_images, photo, read_csv, run_cli

wds = pytest.importorskip("webdataset")
datasets = pytest.importorskip("datasets")


def jpeg(seed, size=(40, 30), fmt="JPEG") -> bytes:
    buffer = io.BytesIO()
    photo(*size, seed=seed).save(buffer, fmt)
    return buffer.getvalue()


def pixels_of(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def tar_of(path, members):
    """A tar of (name, bytes) members in this order (tarfile: duplicate names and any extension allowed)."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


# ----------------------------------------------------------------------- 1. a sample's identity and label
def test_a_key_that_comes_back_in_a_shard_starts_a_sample_of_its_own(tmp_path, capsys):
    """WebDataset's rule: a new sample whenever the key changes. Keys made from file stems (dog/001.jpg and
    cat/001.jpg written as 001.jpg) give a, b, a: three images, each with its own label."""
    members = [
        ("a.jpg", jpeg(1)),
        ("a.cls", b"0"),
        ("b.jpg", jpeg(2)),
        ("b.cls", b"1"),
        ("a.jpg", jpeg(3)),
        ("a.cls", b"2"),
    ]
    shard = tar_of(tmp_path / "s.tar", members)
    images = ueo.read_images(str(shard), ["cat", "dog", "zebra"])
    assert [m.name for m in images.paths] == ["a.jpg", "b.jpg", "a.jpg#2"]
    assert images.labels == [0, 1, 2]
    for member, (_, data) in zip(images.paths, members[::2]):
        assert np.array_equal(np.asarray(ueo.load_image(member)), pixels_of(data))
    # the same shard compressed: read as a stream, the same samples under the same names
    with open(shard, "rb") as f, __import__("gzip").open(tmp_path / "s.tar.gz", "wb") as g:
        g.write(f.read())
    streamed = ueo.read_images(str(tmp_path / "s.tar.gz"), ["cat", "dog", "zebra"])
    assert [m.name for m in streamed.paths] == ["a.jpg", "b.jpg", "a.jpg#2"] and streamed.labels == [0, 1, 2]
    assert len({m.identity() for m in streamed.paths}) == 3  # three images to the cache, not two


@pytest.mark.slow
def test_a_repeated_key_in_a_compressed_shard_is_decoded_as_its_own_image(tmp_path, capsys, tiny_vit_weights):
    members = [("a.jpg", jpeg(1)), ("b.jpg", jpeg(2)), ("a.jpg", jpeg(3))]
    tar_of(tmp_path / "s.tar", members)
    import gzip

    (tmp_path / "s.tar.gz").write_bytes(gzip.compress((tmp_path / "s.tar").read_bytes()))
    out = tmp_path / "fit"
    code, _, err = run_cli(
        capsys, fit_args(tiny_vit_weights, tmp_path / "s.tar.gz", out, "--cache-dir", tmp_path / "c")
    )
    assert code == 0, err
    rows = read_csv(out / "predictions.csv")
    assert [r["path"].rsplit("::", 1)[1] for r in rows] == ["a.jpg", "b.jpg", "a.jpg#2"]
    assert rows[0]["score"] != rows[2]["score"]  # two images, scored each on its own pixels
    plain = tmp_path / "plain"
    state = out / "adapted.safetensors"
    code, _, err = run_cli(
        capsys, ["predict", "--adapted", state, "--data", tmp_path / "s.tar", "--out", plain, "--no-cache"]
    )
    assert code == 0, err
    assert [r["score"] for r in read_csv(plain / "predictions.csv")] == [r["score"] for r in rows]


def test_keys_from_file_stems_in_a_row_are_samples_of_their_own(tmp_path):
    """001.jpg, 001.cls, 001.jpg, 001.cls: the same key twice in a row; the repeated extension starts a sample."""
    members = [("001.jpg", jpeg(1)), ("001.cls", b"1"), ("001.jpg", jpeg(2)), ("001.cls", b"0")]
    images = ueo.read_images(str(tar_of(tmp_path / "s.tar", members)), ["cat", "dog"])
    assert [m.name for m in images.paths] == ["001.jpg", "001.jpg#2"] and images.labels == [1, 0]


def test_every_picture_format_pillow_reads_is_an_image_and_the_others_are_named(tmp_path, capsys):
    members = [
        ("g.gif", jpeg(1, fmt="GIF")),
        ("b.bmp", jpeg(2, fmt="BMP")),
        ("t.tiff", jpeg(3, fmt="TIFF")),
        ("img.001.png", jpeg(4, fmt="PNG")),  # WebDataset's key rule: key "img", extension "001.png"
        ("img.002.png", jpeg(5, fmt="PNG")),
        ("h.heic", b"not decodable here"),
        ("notes.npy", b"\x93NUMPY"),  # a sample without an image
    ]
    shard = tar_of(tmp_path / "s.tar", members)
    warned = []
    images = ueo.read_images(str(shard), ["cat"], warn=warned.append)
    assert [m.name for m in images.paths] == ["g.gif", "b.bmp", "t.tiff", "img.001.png", "img.002.png"]
    for member, (_, data) in zip(images.paths, members):
        assert np.array_equal(np.asarray(ueo.load_image(member)), pixels_of(data))
    skipped = {r["key"]: r["reason"] for r in images.skipped}
    assert set(skipped) == {"h.heic", "notes.npy"} and "pillow-heif" in skipped["h.heic"]
    assert len(warned) == 2 and all(w.startswith("warning: skipping") for w in warned)


def test_each_image_of_a_sample_takes_its_own_label_field(tmp_path):
    members = [
        ("s.001.png", jpeg(1, fmt="PNG")),
        ("s.001.cls", b"1"),
        ("s.002.png", jpeg(2, fmt="PNG")),
        ("s.002.cls", b"0"),
    ]
    images = ueo.read_images(str(tar_of(tmp_path / "s.tar", members)), ["cat", "dog"])
    assert images.labels == [1, 0]


def shards_in_two_folders(tmp_path, orders):
    """One shard in each of two folders, each beside a classnames.txt of its own order; sample i of each is
    labeled 'cat' then 'dog' by name, written as the index its own classnames.txt gives."""
    specs = []
    for n, order in enumerate(orders):
        folder = tmp_path / f"part{n}"
        folder.mkdir()
        (folder / "classnames.txt").write_text("\n".join(order) + "\n")
        with wds.TarWriter(str(folder / "0.tar")) as sink:
            for i, name in enumerate(["cat", "dog"]):
                sink.write({"__key__": f"k{i}", "jpg": jpeg(10 * n + i), "cls": str(order.index(name)).encode()})
        specs.append(str(folder / "0.tar"))
    return "::".join(specs)


def test_labels_of_shards_whose_classnames_differ_in_order(tmp_path):
    spec = shards_in_two_folders(tmp_path, [("cat", "dog", "zebra"), ("zebra", "dog", "cat")])
    images = ueo.read_images(spec, ["dog", "cat"])  # the class list in yet another order
    assert images.labeled and images.labels == [1, 0, 1, 0]
    with pytest.raises(ueo.DataError, match="differ"):
        from ueo.data.sources import class_names_of

        class_names_of(spec)  # without --classes, which names are meant cannot be told


def test_labels_of_parquet_files_whose_class_labels_differ_in_order(tmp_path):
    for n, order in enumerate([["cat", "dog"], ["dog", "cat"]]):
        features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=order)})
        data = {
            "image": [{"bytes": jpeg(n * 10 + i), "path": None} for i in range(2)],
            "label": [order.index("cat"), order.index("dog")],
        }
        datasets.Dataset.from_dict(data, features=features).to_parquet(str(tmp_path / f"{n}.parquet"))
    images = ueo.read_images(str(tmp_path / "*.parquet"), ["cat", "dog"])
    assert images.labels == [0, 1, 0, 1]


@pytest.mark.parametrize(
    "values, want",
    [
        ([0, 1, 0], [0, 1, 0]),  # ints
        ([0.0, 1.0, 0.0], [0, 1, 0]),  # a float column of whole numbers: indices
        ([-1, -1, -1], None),  # -1 everywhere: no labels
        ([0, None, 1], "have none"),  # a missing value
        ([0.0, math.nan, 1.0], "have none"),  # pandas' int column with a missing value
        ([0, -1, 1], "have none"),  # -1 as "no label" among labels
        ([0.5, 1.0, 0.0], "is not a label"),
    ],
)
def test_labels_of_a_parquet_column_are_right_or_refused(tmp_path, values, want):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"image": [jpeg(i) for i in range(3)], "label": values})
    pq.write_table(table, tmp_path / "t.parquet")
    if isinstance(want, str):
        with pytest.raises(ueo.DataError, match=want):
            ueo.read_images(str(tmp_path / "t.parquet"), ["cat", "dog"])
        return
    images = ueo.read_images(str(tmp_path / "t.parquet"), ["cat", "dog"])
    assert (images.labels if images.labeled else None) == want


def test_a_float_label_column_through_the_cli_is_a_clear_refusal(tmp_path, capsys, tiny_vit_weights):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table({"image": [jpeg(i) for i in range(3)], "label": [0.0, math.nan, 1.0]}), tmp_path / "t.parquet"
    )
    code, _, err = run_cli(capsys, fit_args(tiny_vit_weights, tmp_path / "t.parquet", tmp_path / "out"))
    assert code == 2 and "2 of the 3 images have a label" in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "record, want", [({"label": 0.0}, 0), ({"cls": 1}, 1), ({"label": "dog"}, 1), ({"label": -1}, None)]
)
def test_json_labels(tmp_path, record, want):
    members = [("a.jpg", jpeg(1)), ("a.json", json.dumps(record).encode())]
    images = ueo.read_images(str(tar_of(tmp_path / "s.tar", members)), ["cat", "dog"])
    assert (images.labels[0] if images.labeled else None) == want


def test_a_truncated_labeled_shard_keeps_the_samples_before_the_cut(tmp_path):
    members = []
    for i in range(6):
        members += [(f"k{i}.jpg", jpeg(i)), (f"k{i}.cls", str(i % 2).encode())]
    shard = tar_of(tmp_path / "s.tar", members)
    with tarfile.open(shard) as tar:
        infos = tar.getmembers()
    data = shard.read_bytes()
    shard.write_bytes(data[: infos[7].offset - 100])  # inside k3's image, before its label
    images = ueo.read_images(str(shard), ["cat", "dog"])
    assert [m.name for m in images.paths] == ["k0.jpg", "k1.jpg", "k2.jpg"] and images.labels == [0, 1, 0]
    assert len(images.skipped) == 1 and "truncated" in images.skipped[0]["reason"]


# ------------------------------------------------------------------------------------- 3. metadata.csv
def metadata(folder, rows, columns=("file_name", "label")):
    with open(folder / "metadata.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(rows)


def test_metadata_csv_beside_class_folders_labels_nothing_away(tmp_path, capsys):
    data = make_folder(tmp_path / "data", classes=("cat", "dog"), n=20)
    metadata(data, [("cat/0.jpg", "cat"), ("cat/1.jpg", "cat"), ("dog/0.jpg", "dog"), ("dog/1.jpg", "dog")])
    notes = []
    images = ueo.read_images(str(data), ["cat", "dog"], warn=notes.append)
    assert len(images) == 40 and images.labels == [0] * 20 + [1] * 20
    assert any("the labels are the class folders'" in n and "agrees on the 4" in n for n in notes)
    metadata(data, [("cat/0.jpg", "dog")])  # a real conflict
    with pytest.raises(ueo.DataError, match="lies in the class folder 'cat'"):
        ueo.read_images(str(data), ["cat", "dog"])


def test_metadata_csv_of_a_flat_folder_must_label_every_image(tmp_path):
    data = tmp_path / "flat"
    data.mkdir()
    for i in range(4):
        photo(40, 30, seed=i).save(data / f"{i}.jpg")
    metadata(data, [(f"{i}.jpg", ["cat", "dog"][i % 2]) for i in range(4)])
    assert ueo.read_images(str(data), ["cat", "dog"]).labels == [0, 1, 0, 1]
    metadata(data, [("0.jpg", "cat")])
    with pytest.raises(ueo.DataError, match="1 of the 4 images have a label"):
        ueo.read_images(str(data), ["cat", "dog"])


def test_a_camera_export_csv_is_left_aside(tmp_path):
    data = make_folder(tmp_path / "data", classes=("cat", "dog"), n=3)
    metadata(data, [("IMG_001", "2024-01-01", "f/2.8")], columns=("frame", "date", "aperture"))
    notes = []
    images = ueo.read_images(str(data), ["cat", "dog"], warn=notes.append)
    assert len(images) == 6 and images.labels == [0, 0, 0, 1, 1, 1]
    assert any("no file_name column" in n for n in notes)


# -------------------------------------------------------------------------------- 8. the same image once
def test_an_image_reached_twice_is_read_once(tmp_path):
    data = make_folder(tmp_path / "data", classes=("cat", "dog"), n=2)
    os.symlink(data / "cat" / "0.jpg", data / "cat" / "again.jpg")  # a link to a file in the same class
    os.link(data / "dog" / "0.jpg", data / "dog" / "hard.jpg")  # a hard link
    notes = []
    images = ueo.read_images(str(data), ["cat", "dog"], warn=notes.append)
    assert len(images) == 4 and any("reached twice" in n for n in notes)
    listing = tmp_path / "list.txt"
    listing.write_text("data/cat/0.jpg 0\ndata/dog/1.jpg 1\ndata/cat/0.jpg 0\ndata/./cat/1.jpg 0\ndata/cat/1.jpg 0\n")
    assert len(ueo.read_images(str(listing), ["cat", "dog"])) == 3
    shard = tar_of(tmp_path / "s.tar", [("a.jpg", jpeg(1)), ("b.jpg", jpeg(2))])
    assert len(ueo.read_images(f"{shard}::{shard}", ["cat"])) == 2
    os.symlink(data / "cat" / "1.jpg", data / "dog" / "cat-in-dog.jpg")  # one image in two classes
    with pytest.raises(ueo.DataError, match="same image with two labels"):
        ueo.read_images(str(data), ["cat", "dog"])


# ------------------------------------------------------------------------------------- 9. deep pixels
def test_integers_of_any_depth_are_scaled_by_their_own_range(tmp_path):
    rng = np.random.default_rng(0)
    eight = rng.integers(0, 256, (30, 40), dtype=np.uint8)
    Image.fromarray(eight.astype(np.int32), "I").save(tmp_path / "i32.tif")  # 8-bit values in 32 bits
    twelve = rng.integers(0, 4096, (30, 40)).astype(np.uint16)
    Image.fromarray(twelve).save(tmp_path / "twelve.png")  # 12-bit data in a 16-bit file
    full = rng.integers(0, 65536, (30, 40)).astype(np.uint16)
    full[0, 0] = 65535
    Image.fromarray(full).save(tmp_path / "full.png")
    got = {p.name: np.asarray(ueo.load_image(p))[..., 0] for p in sorted(tmp_path.iterdir())}
    assert np.array_equal(got["i32.tif"], eight)
    assert np.array_equal(got["twelve.png"], (twelve / 16).astype(np.uint8)) and got["twelve.png"].max() > 200
    assert np.array_equal(got["full.png"], (full / 256).astype(np.uint8))


# ---------------------------------------------------------------------------- 10. several image columns
def test_the_image_column_is_named_or_the_choice_is_refused(tmp_path):
    features = datasets.Features({"mask": datasets.Image(), "image": datasets.Image()})
    data = {"mask": [{"bytes": jpeg(0), "path": None}], "image": [{"bytes": jpeg(1), "path": None}]}
    datasets.Dataset.from_dict(data, features=features).to_parquet(str(tmp_path / "two.parquet"))
    notes = []
    images = ueo.read_images(str(tmp_path / "two.parquet"), ["cat"], warn=notes.append)
    assert np.array_equal(np.asarray(ueo.load_image(images.paths[0])), pixels_of(jpeg(1)))
    assert any("column 'image'" in n and "mask" in n for n in notes)
    features = datasets.Features({"left": datasets.Image(), "right": datasets.Image()})
    data = {"left": [{"bytes": jpeg(0), "path": None}], "right": [{"bytes": jpeg(1), "path": None}]}
    datasets.Dataset.from_dict(data, features=features).to_parquet(str(tmp_path / "lr.parquet"))
    with pytest.raises(ueo.DataError, match="cannot tell which holds the pictures"):
        ueo.read_images(str(tmp_path / "lr.parquet"), ["cat"])


# -------------------------------------------------------------------- 20. formats Pillow reads, or named
def test_a_folder_reads_every_format_pillow_reads_and_counts_the_rest(tmp_path, capsys, tiny_vit_weights):
    data = tmp_path / "data" / "cat"
    data.mkdir(parents=True)
    for i, (ext, fmt) in enumerate([("gif", "GIF"), ("jfif", "JPEG"), ("avif", "AVIF"), ("jpg", "JPEG")]):
        photo(60, 40, seed=i).save(data / f"{i}.{ext}", fmt)
    (data / "phone.heic").write_bytes(b"....ftypheic")
    (data / "logo.svg").write_text("<svg/>")
    notes = []
    images = ueo.read_images(str(tmp_path / "data"), ["cat"], warn=notes.append)
    assert sorted(p.suffix for p in images.paths) == [".avif", ".gif", ".jfif", ".jpg"]
    assert len(notes) == 1 and "2 picture file(s) left out" in notes[0] and ".heic" in notes[0] and ".svg" in notes[0]
    assert {os.path.basename(r["path"]) for r in images.skipped} == {"phone.heic", "logo.svg"}
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, fit_args(tiny_vit_weights, tmp_path / "data", out, classes="cat,dog", epochs="0"))
    assert code == 0 and "left out" in err
    assert {os.path.basename(r["path"]) for r in read_csv(out / "skipped.csv")} == {"phone.heic", "logo.svg"}


def test_images_over_pils_warning_size_say_nothing_of_it(tmp_path, monkeypatch, recwarn, capsys, tiny_vit_weights):
    """ueo reads images up to PIL's own limit within its pixel budget: PIL's warning would only be noise."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL warns over this, refuses over twice it
    (tmp_path / "data" / "cat").mkdir(parents=True)
    photo(40, 40, seed=0).save(tmp_path / "data" / "cat" / "big.png")  # 1600 px: PIL's warning size
    photo(30, 30, seed=1).save(tmp_path / "data" / "cat" / "small.png")
    code, _, err = run_cli(
        capsys, fit_args(tiny_vit_weights, tmp_path / "data", tmp_path / "out", classes="cat,dog", epochs="0")
    )
    assert code == 0 and "DecompressionBomb" not in err
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["num_adaptation_images"] == 2


def test_symlinked_class_folders_are_followed_once(tmp_path):
    from ueo.data.folders import read_folder

    store = make_folder(tmp_path / "store")
    (tmp_path / "data").mkdir()
    for name in ("cat", "dog"):
        (tmp_path / "data" / name).symlink_to(store / name, target_is_directory=True)
    (tmp_path / "data" / "cat" / "loop").symlink_to(tmp_path / "data", target_is_directory=True)  # a loop
    images = read_folder(tmp_path / "data", ["cat", "dog"])
    assert sorted(set(images.labels)) == [0, 1] and len(images) == 8


def test_byte_order_marks_are_ignored(labeled_data, tmp_path):
    from ueo.data.folders import parse_class_names, read_list_file

    (tmp_path / "classes.txt").write_bytes("\ufeffcat\ndog\n".encode())
    assert parse_class_names(str(tmp_path / "classes.txt")) == ["cat", "dog"]
    (tmp_path / "list.txt").write_bytes(f"\ufeff{labeled_data / 'cat' / '0.jpg'} 0\n".encode())
    assert read_list_file(tmp_path / "list.txt", root=labeled_data).labels == [0]


def test_list_files_say_what_is_wrong(labeled_data, tmp_path):
    from ueo.data.folders import read_list_file
    from ueo.errors import DataError

    lst = tmp_path / "l.txt"
    lst.write_text(f"{labeled_data / 'cat' / '0.jpg'} 0\n")  # absolute, inside the root: fine
    assert len(read_list_file(lst, root=labeled_data)) == 1
    lst.write_text("cat/0.jpg cat\n")
    with pytest.raises(DataError, match="the label 'cat' is not a whole number"):
        read_list_file(lst, root=labeled_data)
    lst.write_text(f"{tmp_path / 'l.txt'} 0\n")
    with pytest.raises(DataError, match="escapes the root"):
        read_list_file(lst, root=labeled_data)


def test_top_level_images_beside_class_folders_are_an_error(labeled_data, tmp_path, capsys, labeled_run):
    mixed = tmp_path / "mixed"
    shutil.copytree(labeled_data, mixed)
    shutil.copy(labeled_data / "cat" / "0.jpg", mixed / "loose.jpg")
    code, _, err = run_cli(
        capsys,
        [
            "eval",
            "--adapted",
            str(labeled_run / "adapted.safetensors"),
            "--test",
            str(mixed),
            "--out",
            str(tmp_path / "e"),
            "--device",
            "cpu",
        ],
    )
    assert code == 2 and "outside any class folder" in err and "loose.jpg" in err


def test_float_and_32_bit_images_are_not_black(tmp_path):
    from ueo.images.reading import load_image

    paths = {p.name: p for p in odd_images(tmp_path / "odd")}
    for name in ("float.tif", "int32.tif", "deep.png"):
        pixels = np.asarray(load_image(paths[name]), dtype=float)
        assert pixels.min() <= 2 and pixels.max() >= 250 and 100 < pixels.mean() < 155, name  # a full ramp
    assert load_image(paths["rotated.jpg"]).size == (40, 60)  # turned as the EXIF tag says
    alpha = np.asarray(load_image(paths["alpha.png"]))
    assert (alpha[:, :30] == 255).all()  # transparent pixels over white


def test_large_images_under_pils_own_limit_are_read(tmp_path, monkeypatch):
    from ueo.images.reading import load_image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # as if 89.5 Mpx were 1,000 pixels
    Image.new("RGB", (40, 40), (9, 9, 9)).save(tmp_path / "big.png")  # 1,600: over the warning, under 2x
    Image.new("RGB", (50, 50), (9, 9, 9)).save(tmp_path / "bomb.png")  # 2,500: over PIL's own error limit
    assert load_image(tmp_path / "big.png").size == (40, 40)
    with pytest.raises(Image.DecompressionBombError):
        load_image(tmp_path / "bomb.png")
