"""Every command and code block of the README runs, in order, in one folder, as a user would run it.

Only these changes are made, because this machine is offline and a test must be quick:
- a CLIP that needs a download (named, or the default one) becomes the shipped toy CLIP (the same code
  paths, weights in the package);
- the folders the commands name (photos/, labeled/, DATA/office31, ...) are small generated collections
  in the layouts the README describes;
- training runs one epoch on the CPU (``FAST``), torchrun two processes instead of four, and the
  optional ``[...]`` part of a command is given.
`make` and `pip` lines are what this very test run stands on (CI runs `make test`; the test environment
is `pip install -e .[dev]`; `make demo` is `ueo demo`, run by tests/test_toyworld.py).
"""

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from helpers import write_photos
from ueo.cli import main
from ueo.experiments import toyworld as tw

README = Path(__file__).resolve().parents[1] / "README.md"
CLASSES = Path(__file__).resolve().parents[1] / "src" / "ueo" / "resources" / "classes"
SUBSTITUTIONS = [
    ("--model ViT-B-16 --pretrained openai", "--model ueo-toy-rn --pretrained toyworld"),
    (
        'ueo.load_clip("ViT-B-16", pretrained="openai")',
        'ueo.load_clip("ueo-toy-rn", pretrained="toyworld", device="cpu")',
    ),
    ("epochs=50", "epochs=1"),
    ("--nproc_per_node=4", "--nproc_per_node=2"),
]
# added to fit, bench and torchrun commands that do not give them: the toy CLIP (the default model needs a
# download), one epoch on the CPU
FAST = {"--model": "ueo-toy-rn", "--pretrained": "toyworld", "--epochs": "1", "--batch-size": "16", "--device": "cpu"}
STANDS_ON = ("make demo", "make test", "make install", "pip install -e .", "pip install ueo wds", "pip install ueo hf")


def readme_blocks() -> list[tuple[str, str]]:
    """(language, text) of every ```bash and ```python block of the README, in order."""
    blocks, language, lines = [], None, []
    for line in README.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            if language is None:
                language, lines = line[3:].strip(), []
            else:
                if language in ("bash", "python"):
                    blocks.append((language, "\n".join(lines)))
                language = None
            continue
        if language is not None:
            lines.append(line)
    return blocks


def commands(text: str) -> list[list[str]]:
    """The commands of a bash block: continuation lines joined, comments dropped, ``[...]`` options given."""
    for old, new in SUBSTITUTIONS:
        text = text.replace(old, new)
    result = []
    for line in text.replace("\\\n", " ").splitlines():
        words = shlex.split(line.replace("[", " ").replace("]", " "), comments=True)
        if words:
            result.append([os.path.expandvars(word) for word in words])  # $PWD, as the shell expands it
    return result


def image(path: Path, colour=(200, 30, 30), size=(40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A folder holding what the README's commands read."""
    root = tmp_path_factory.mktemp("readme")
    for name in ("photos", "labeled"):
        write_photos(root / name, sizes=[(120, 90), (90, 120), (160, 60)], classes=("cat", "dog", "horse"))
    write_photos(root / "new_photos" / "any", sizes=[(100, 80), (80, 100)])
    (root / "names.txt").write_text("zebra\nhorse\nteapot\nfox\n", encoding="utf-8")  # a vocabulary
    for name in ("a.jpg", "b.jpg"):
        tw.render(tw.TARGET_STYLE, 0, len(name), seed=0).save(root / name)
    write_shards(root / "shards")

    def classes(benchmark):
        return (CLASSES / f"{benchmark}.txt").read_text().split()

    for k, name in enumerate(classes("office31")):
        for j in range(2):
            image(root / "DATA" / "office31" / "amazon" / "images" / name / f"{j}.jpg", (8 * k, 90, 40 * j))
    for k, name in enumerate(classes("officehome")):
        image(root / "DATA" / "office-home" / "Art" / name / "0.jpg", (4 * k, 200, 10))
    lists = root / "DATA" / "domainnet" / "lists"
    lists.mkdir(parents=True)
    for split, count in (("train", 2), ("test", 1)):
        lines = []
        for k, name in enumerate(classes("domainnet")):
            for j in range(count):
                relative = f"sketch/{name}/{split}{j}.png"
                image(root / "DATA" / "domainnet" / relative, (k % 256, 3 * j, 120), size=(24, 24))
                lines.append(f"{relative} {k}")
        (lists / f"sketch_{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def write_shards(folder: Path, count: int = 100) -> None:
    """WebDataset shards 0000..0099 (webdataset's own writer), a toy image each, with classnames.txt."""
    import io

    import webdataset as wds

    folder.mkdir()
    names = tw.CLASS_NAMES[:4]
    (folder / "classnames.txt").write_text("\n".join(names) + "\n")
    for i in range(count):
        buffer = io.BytesIO()
        tw.render(tw.TARGET_STYLE, i % 4, i, seed=1).save(buffer, format="PNG")
        with wds.TarWriter(str(folder / f"{i:04d}.tar")) as sink:
            sink.write({"__key__": f"{i:06d}", "png": buffer.getvalue(), "cls": str(i % 4).encode()})


def run_command(words: list[str], cwd: Path) -> None:
    program, args = words[0], words[1:]
    if any(" ".join(words).startswith(prefix) for prefix in STANDS_ON):
        return
    if program == "chromium":
        if shutil.which("chromium") is None and not os.environ.get("UEO_REQUIRE_BROWSER"):
            pytest.skip("chromium is not installed here (.ci/run installs it)")
        demo = ["demo", "--scenarios", "opda", "--epochs", "1", "--methods", "zeroshot", "ueo"]
        demo += ["--out", "demo-out", "--overwrite", "--quiet"]
        assert main(demo) == 0
        subprocess.run(words, cwd=cwd, check=True, capture_output=True, timeout=120)
        assert Image.open(cwd / "report.png").size == (1200, 3000)
        return
    if program == "torchrun":
        module = args.index("-m")
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", *args[:module], *args[module:]]
        command += [item for flag, value in FAST.items() if flag not in args for item in (flag, value)] + ["--quiet"]
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return
    assert program == "ueo", f"a README command this test does not know how to run: {words}"
    if args[0] in ("fit", "bench"):
        args += [item for flag, value in FAST.items() if flag not in args for item in (flag, value)]
    if args[0] not in ("export", "report", "splits"):
        args.append("--quiet")
    assert main(args) == 0, words


BLOCKS = readme_blocks()


def marks(language: str, text: str) -> list:
    """The suites a block belongs to: browser (chromium), distributed (torchrun), slow (it trains; every
    Python block, since they continue one another and the first one trains)."""
    found = [pytest.mark.browser] if "chromium" in text else []
    found += [pytest.mark.distributed] if "torchrun" in text else []
    trains = language == "python" or any(word in text for word in ("ueo fit", "ueo bench", "ueo demo"))
    return found + ([pytest.mark.slow] if trains else [])


@pytest.fixture(scope="module")
def python_names(workspace):
    """What the README's Python blocks take as given: the user's class names and images."""
    train, test = tw.scenario("opda", per_class=3, test_per_class=3)
    return {
        "class_names": tw.CLASS_NAMES[: tw.NUM_KNOWN],
        "train_images": train,
        "test_images": test,
        "other_images": test,
        "images": [Image.open(workspace / "a.jpg"), Image.open(workspace / "b.jpg")],
    }


@pytest.mark.parametrize("position", [pytest.param(i, marks=marks(*block)) for i, block in enumerate(BLOCKS)])
def test_readme_block_runs(position, workspace, python_names, monkeypatch, capsys):
    language, text = BLOCKS[position]
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("PWD", str(workspace))
    if language == "bash":
        for words in commands(text):
            run_command(words, workspace)
        return
    for old, new in SUBSTITUTIONS:
        text = text.replace(old, new)
    exec(compile(text, f"README block {position}", "exec"), python_names)  # the blocks continue one another
    capsys.readouterr()


def test_the_readme_has_the_blocks_this_test_runs():
    assert len(BLOCKS) >= 5 and any(language == "python" for language, _ in BLOCKS)
