"""report.html of runs and table.html across runs: sections, bounded galleries, links that resolve,
escaping, and a real headless browser (no console error, no missing image)."""

import csv
import json
import os
import shutil
from html import escape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import fit_args, read_csv
from ueo.cli import main
from ueo.outputs.webreport import MAX_CELLS, PER_CELL, PER_GALLERY, write_run_report

ODD_NAMES = ["with space.png", "quote'\"s.png", "<b>bold&amp;.png", "ünïcødé 🐱.png"]
ODD_VOCABULARY = ["<b>bolder</b>", "fish & chips", "quote'\"s name", "ünï 🐱"]  # names for the unknown groups
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Page(HTMLParser):
    """Everything the tests look at in a page: ids, images, links, galleries, text."""

    def __init__(self, text):
        super().__init__()
        self.ids, self.images, self.links, self.tags, self.galleries, self.titles = set(), [], [], [], [], []
        self._figures = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "a":
            self.links.append(attrs["href"])
        if tag == "div" and attrs.get("class") == "gallery":
            self.galleries.append(0)
        if tag == "figure":
            self.galleries[-1] += 1
            self.titles.append(attrs.get("title"))


@pytest.fixture(scope="module")
def run(tiny_vit_weights, tmp_path_factory):
    """A fitted run over a labeled folder with an unknown class and file names of every kind."""
    root = tmp_path_factory.mktemp("pages")
    rng = np.random.default_rng(0)
    for c, name in enumerate(["cat", "dog", "zebra"]):
        (root / "data" / name).mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 90, (30, 40, 3), dtype=np.uint8)
            pixels[:, :, c] += 150
            file = ODD_NAMES[i] if name == "cat" and i < len(ODD_NAMES) else f"{i}.png"
            Image.fromarray(pixels).save(root / "data" / name / file)
    (root / "names.txt").write_text("\n".join(ODD_VOCABULARY) + "\n", encoding="utf-8")
    assert (
        main(
            fit_args(
                tiny_vit_weights,
                root / "data",
                root / "run",
                "--test",
                str(root / "data"),
                "--vocabulary",
                str(root / "names.txt"),
                epochs=2,
                batch_size=6,
                lr=0.05,
            )
        )
        == 0
    )
    return root


def check_links(folder: Path, page: Page):
    for src in page.images:
        assert not src.startswith(("http:", "https:", "//", "/")), src  # nothing from the network, nothing absolute
        assert src.startswith("data:image/png;base64,") or (folder / src).is_file(), src
    for href in page.links:
        if href.startswith("#"):
            assert href[1:] in page.ids, href
        else:
            assert not href.startswith(("http:", "https:", "//")) and (folder / href).is_file(), href


def test_the_run_page_has_its_sections_and_bounded_galleries(run):
    folder = run / "run"
    page = Page((folder / "report.html").read_text(encoding="utf-8"))
    assert {
        "summary",
        "classes",
        "unknown",
        "borderline",
        "changed",
        "confusion",
        "confusion-examples",
        "mistakes",
        "plots",
        "class-0",
        "class-1",
        "discovery",
        "what-changed",
    } <= page.ids
    assert all(count <= max(PER_GALLERY, PER_CELL) for count in page.galleries)
    check_links(folder, page)
    rows = read_csv(folder / "predictions.csv")
    assert sum(1 for r in rows if r["prediction"] == "unknown") == int(
        (folder / "report.html")
        .read_text(encoding="utf-8")
        .split('id="unknown"><h2>Unknown <span class="muted">(')[1]
        .split(")")[0]
    )
    assert {"roc.png", "scores.png", "loss.png"} <= set(page.images)
    assert len(list((folder / "thumbs").iterdir())) == len({s for s in page.images if s.startswith("thumbs/")})


def test_file_names_are_escaped_and_inject_nothing(run):
    folder = run / "run"
    text = (folder / "report.html").read_text(encoding="utf-8")
    page = Page(text)
    assert "b" not in page.tags  # the file named "<b>bold&amp;.png" added no element
    shown = {Path(t).name for t in page.titles if t}
    assert set(ODD_NAMES) <= shown  # each name reads back exactly, quotes, <, & and non-ASCII included
    assert "&lt;b&gt;bold&amp;amp;.png" in text
    found = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))["discovery"]
    named = {n for g in found["groups"] for n, _ in g["names"]}
    assert named and named <= set(ODD_VOCABULARY)  # the groups' names, from the vocabulary file
    for name in named:
        assert escape(name) in text and (name == escape(name) or name not in text)
    assert f'id="group-{found["groups"][0]["group"]}"' in text


def test_the_page_can_be_rebuilt_and_stays_small_for_large_runs(run, tmp_path, capsys):
    folder = run / "run"
    first = (folder / "report.html").read_text(encoding="utf-8")
    (folder / "report.html").unlink()
    assert main(["report", "--html", str(folder)]) == 0
    assert (folder / "report.html").read_text(encoding="utf-8") == first

    # 20,000 decisions over 300 classes: the page and its thumbnails stay bounded
    big = tmp_path / "big"
    big.mkdir()
    images = sorted((run / "data").rglob("*.png"))
    classes = [f"class {i}" for i in range(300)]
    rng = np.random.default_rng(1)
    with open(big / "predictions.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(
            f, ["path", "label", "prediction", "score", "top1", "zeroshot_prediction", "zeroshot_score"]
        )
        writer.writeheader()
        for i in range(20_000):
            label, top = classes[rng.integers(300)], classes[rng.integers(300)]
            score = rng.uniform(0.0033, 0.006)
            writer.writerow(
                {
                    "path": str(images[i % len(images)]),
                    "label": label,
                    "top1": top,
                    "score": f"{score:.6f}",
                    "prediction": top if score > 0.004 else "unknown",
                    "zeroshot_score": "0.004",
                    "zeroshot_prediction": top,
                }
            )
    (big / "metrics.json").write_text(
        json.dumps(
            {"class_names": classes, "threshold": {"threshold": 0.004, "rule": "given", "source": "--threshold"}}
        )
    )
    write_run_report(big)
    size = (big / "report.html").stat().st_size
    assert size < 3_000_000, size
    bound = (300 + 1) * PER_GALLERY + 2 * PER_GALLERY + 3 * PER_GALLERY + MAX_CELLS * PER_CELL
    assert len(Page((big / "report.html").read_text(encoding="utf-8")).images) <= bound


def test_eval_and_predict_write_pages_and_the_table_page_has_charts(run, tmp_path):
    adapted = str(run / "run" / "adapted.safetensors")
    assert (
        main(
            [
                "eval",
                "--adapted",
                adapted,
                "--test",
                str(run / "data"),
                "--out",
                str(tmp_path / "e"),
                "--device",
                "cpu",
                "--quiet",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "predict",
                "--adapted",
                adapted,
                "--data",
                str(run / "data" / "dog"),
                "--out",
                str(tmp_path / "p"),
                "--device",
                "cpu",
                "--quiet",
            ]
        )
        == 0
    )
    for folder in (tmp_path / "e", tmp_path / "p"):
        page = Page((folder / "report.html").read_text(encoding="utf-8"))
        assert {"summary", "classes", "unknown", "borderline", "changed"} <= page.ids
        check_links(folder, page)
    assert "confusion" not in Page((tmp_path / "p" / "report.html").read_text(encoding="utf-8")).ids  # no labels
    assert (
        main(
            [
                "predict",
                "--adapted",
                adapted,
                "--data",
                str(run / "data" / "dog"),
                "--out",
                str(tmp_path / "q"),
                "--device",
                "cpu",
                "--quiet",
                "--no-report",
            ]
        )
        == 0
    )
    assert not (tmp_path / "q" / "report.html").exists()

    assert main(["report", str(run / "run"), str(tmp_path / "e"), "--out", str(tmp_path / "table.md")]) == 0
    page = Page((tmp_path / "table.html").read_text(encoding="utf-8"))
    assert sum(src.startswith("data:image/png;base64,") for src in page.images) == 7  # one chart per metric
    check_links(tmp_path, page)


def browser_problems(browser, path: Path):
    """(console errors, failed requests, images that did not load, images) of a page in the browser."""
    page = browser.new_page()
    errors, failed = [], []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("requestfailed", lambda request: failed.append(request.url))
    page.goto(path.as_uri())
    page.evaluate("document.querySelectorAll('img').forEach(i => i.loading = 'eager')")
    page.wait_for_function("Array.from(document.images).every(i => i.complete)", timeout=30_000)
    broken = page.evaluate("Array.from(document.images).filter(i => i.naturalWidth === 0).length")
    images = page.evaluate("document.images.length")
    page.close()
    return errors, failed, broken, images


@pytest.mark.browser
@pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("UEO_REQUIRE_BROWSER"), reason="no chromium here (CI installs it: .ci/run)"
)
def test_pages_render_in_a_real_browser_without_errors(run, tmp_path):
    from playwright.sync_api import sync_playwright

    assert main(["report", str(run / "run"), "--out", str(tmp_path / "table.md")]) == 0
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            for path in (run / "run" / "report.html", tmp_path / "table.html"):
                errors, failed, broken, images = browser_problems(browser, path)
                assert images > 0 and (errors, failed, broken) == ([], [], 0), path
        finally:
            browser.close()
