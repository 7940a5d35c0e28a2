import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from ueo.data.folders import parse_class_names, read_folder, read_list_file
from ueo.data.imagelist import fold
from ueo.data.sources import read_images
from ueo.errors import DataError
from ueo.images.reading import ImageFiles


def make_image(path, size=(20, 16), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, 128 if mode == "L" else (10, 200, 30)).save(path)
    return path


def test_fold_is_case_and_underscore_tolerant():
    assert fold("The_Eiffel_Tower") == fold("the eiffel  tower") == "the eiffel tower"


def test_class_names_from_file_and_list(tmp_path):
    f = tmp_path / "classes.txt"
    f.write_text("cat\nhot_dog\n  zebra  \n\n\n")
    assert parse_class_names(str(f)) == ["cat", "hot_dog", "zebra"]
    f.write_text("cat\n\nhot_dog\n")
    with pytest.raises(DataError, match=r"classes\.txt:2: empty line"):
        parse_class_names(str(f))
    assert parse_class_names("cat, dog,bird") == ["cat", "dog", "bird"]
    f.write_text("cat\nHot_Dog\nhot dog\n")
    with pytest.raises(DataError, match=r"classes.txt:3: class 'hot dog' duplicates 'Hot_Dog'"):
        parse_class_names(str(f))
    f.write_bytes(b"cat\n\xff\xfe\n")
    with pytest.raises(DataError, match="not UTF-8"):
        parse_class_names(str(f))
    with pytest.raises(DataError, match="no such file"):
        parse_class_names(str(tmp_path / "missing.txt"))
    with pytest.raises(DataError, match="empty name"):
        parse_class_names("cat,,dog")


def test_folder_with_class_subfolders(tmp_path):
    for name in ["Cat/a.jpg", "Cat/sub/b.PNG", "hot_dog/c.jpeg", "Zebra/d.webp", "notes.txt"]:
        if name.endswith(".txt"):
            (tmp_path / name).write_text("x")
        else:
            make_image(tmp_path / name)
    images = read_folder(tmp_path, ["cat", "Hot Dog"])
    assert images.labeled
    names = [p.relative_to(tmp_path).as_posix() for p in images.paths]
    assert names == ["Cat/a.jpg", "Cat/sub/b.PNG", "Zebra/d.webp", "hot_dog/c.jpeg"]
    assert images.labels == [0, 0, 2, 1]  # Zebra is an unknown class: label >= K
    assert images.unknown_names == {2: "Zebra"}
    flat = read_folder(tmp_path, ["lion"])  # no sub-folder matches: unlabeled
    assert not flat.labeled and flat.labels == [-1] * 4
    image, label = ImageFiles(images)[0]
    assert image.mode == "RGB" and label == 0


def test_list_file_parsing_and_errors(tmp_path):
    make_image(tmp_path / "d" / "a b.jpg")
    make_image(tmp_path / "d" / "c.jpg")
    lst = tmp_path / "list.txt"
    lst.write_text("d/a b.jpg 0\n\n# comment\nd/c.jpg 3\n")
    images = read_list_file(lst)
    assert images.labeled and images.labels == [0, 3] and images.paths[0].name == "a b.jpg"
    assert read_images(lst).labels == [0, 3]
    lst.write_text("d/c.jpg\n")
    assert read_list_file(lst).labels == [-1] and not read_list_file(lst).labeled
    cases = {
        "d/a b.jpg 0\nd/c.jpg 7\n": "list.txt:2: label 7 is out of range",
        "d/a b.jpg 0\nd/c.jpg -5\n": "list.txt:2: label -5",
        "../outside.jpg 0\n": "list.txt:1: path '../outside.jpg' escapes the root",
        "d/missing.jpg 1\n": "list.txt:1: file not found",
        "d/a b.jpg 0\nd/c.jpg\n": "list.txt:2: some lines have a label",
        "\n": "has no image lines",
    }
    for text, message in cases.items():
        lst.write_text(text)
        with pytest.raises(DataError, match=message):
            read_list_file(lst, num_classes=5)
    with pytest.raises(DataError, match="does not exist"):
        read_list_file(tmp_path / "nope.txt")
    with pytest.raises(DataError, match="No image"):
        read_folder(tmp_path / "empty" if (tmp_path / "empty").mkdir() is None else None)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.text(alphabet="abc xyz_-.", min_size=1, max_size=12).map(str.strip).filter(bool), st.integers(-1, 40)
        ),
        min_size=1,
        max_size=20,
    )
)
def test_list_parsing_roundtrip(tmp_path_factory, entries):
    root = tmp_path_factory.mktemp("lists")
    lst = root / "l.txt"
    lst.write_text("".join(f"imgs/{name} {label}\n" for name, label in entries))
    images = read_list_file(lst, check_files=False)
    assert images.labels == [label for _, label in entries]
    assert [p.name for p in images.paths] == [(root / "imgs" / name).resolve().name for name, _ in entries]


def test_image_modes_become_rgb(tmp_path):
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red -> white background
    rgba.save(tmp_path / "a.png")
    make_image(tmp_path / "g.png", mode="L")
    Image.new("P", (8, 8), 3).save(tmp_path / "p.png")
    Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)).save(tmp_path / "w.png")
    images = read_folder(tmp_path)
    loaded = {p.name: ImageFiles(images)[i][0] for i, p in enumerate(images.paths)}
    assert all(im.mode == "RGB" for im in loaded.values())
    assert loaded["a.png"].getpixel((0, 0)) == (255, 255, 255)
    assert loaded["w.png"].getpixel((0, 0))[0] >= 254
