from pathlib import Path

import pytest
from PIL import Image

from ueo.cli import main
from ueo.errors import DataError
from ueo.experiments import protocols

LISTS = Path(__file__).parent / "data" / "domainnet_lists"


def count(path, keep):
    n = 0
    for line in path.read_text().splitlines():
        if line.strip() and keep(int(line.split()[-1])):
            n += 1
    return n


def test_class_orders_are_official():
    dn = protocols.class_names("domainnet")
    assert len(dn) == 345 and dn.index("The_Eiffel_Tower") == dn.index("tent") + 1
    oh = protocols.class_names("officehome")
    assert len(oh) == 65 and oh.index("tv") == oh.index("trash_can") + 1
    assert len(protocols.class_names("office31")) == 31 and len(protocols.class_names("visda")) == 12


def test_scenario_classes_match_the_spec_table():
    assert protocols.scenario_classes("office31", "opda") == (25, list(range(15)) + [25, 26, 27])
    assert protocols.scenario_classes("officehome", "pda") == (50, list(range(35)))
    assert protocols.scenario_classes("visda", "oda") == (8, list(range(10)))
    assert protocols.scenario_classes("domainnet", "cda") == (300, list(range(300)))
    assert protocols.scenario_classes("office31", "csda") == (31, list(range(31)))
    with pytest.raises(DataError, match="Unknown scenario"):
        protocols.scenario_classes("office31", "xda")


@pytest.mark.parametrize(
    "scenario, keep",
    [
        ("cda", lambda y: y < 300),
        ("pda", lambda y: y < 250),
        ("oda", lambda y: y < 330),
        ("opda", lambda y: y < 250 or 300 <= y < 330),
        ("csda", lambda y: True),
    ],
)
def test_domainnet_sketch_sizes_match_the_official_lists(tmp_path, scenario, keep):
    split = protocols.build_split("domainnet", "sketch", scenario, tmp_path, lists=LISTS, check_files=False)
    assert len(split.train) == count(LISTS / "sketch_train.txt", keep)
    assert len(split.test) == 20_916
    assert len(split.known_classes) == (345 if scenario == "csda" else 300)


@pytest.mark.slow
def test_splits_command_writes_lists_and_sizes(tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        main(
            [
                "splits",
                "--benchmark",
                "domainnet",
                "--domain",
                "sketch",
                "--root",
                str(tmp_path),
                "--lists",
                str(LISTS),
                "--out",
                str(out),
                "--no-check",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "48,212" in printed and "20,916" in printed
    assert (out / "sketch_cda_train.txt").read_text().splitlines()[
        0
    ] == "sketch/aircraft_carrier/sketch_001_000040.jpg 0"
    assert len((out / "sketch_test.txt").read_text().splitlines()) == 20_916


def make_office_home(root):
    for domain, classes in {"Real_World": ["Alarm_Clock", "tv", "Trash_Can", "Sneakers"]}.items():
        for cls in classes:
            folder = root / domain / cls
            folder.mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (8, 8)).save(folder / f"{i}.jpg")


def test_folder_layout_is_matched_case_insensitively(tmp_path):
    make_office_home(tmp_path)
    names = protocols.class_names("officehome")
    split = protocols.build_split("officehome", "RealWorld", "oda", tmp_path)
    labels = sorted(set(split.test.labels))
    assert [names[i] for i in labels] == ["alarm_clock", "sneakers", "trash_can", "tv"]
    assert labels == [0, 54, 62, 63]
    # ODA adapts on classes 0-59: trash_can (62) and tv (63) are test-only unknowns
    assert sorted(set(split.train.labels)) == [0, 54]
    pda = protocols.build_split("officehome", "RealWorld", "pda", tmp_path)
    assert sorted(set(pda.train.labels)) == [0]
    with pytest.raises(DataError, match="No folder for domain"):
        protocols.build_split("officehome", "Art", "cda", tmp_path)
    (tmp_path / "Real_World" / "Spaceship").mkdir()
    with pytest.raises(DataError, match="match no class"):
        protocols.build_split("officehome", "RealWorld", "cda", tmp_path)
