"""Keep the throughput benchmark alive: a tiny CPU run must complete and write its JSON; it uses only
ueo's public names."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # whole fits, exports and subprocess runs (`make test-quick` leaves them out)

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_throughput_benchmark_runs_on_cpu(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "throughput.py"),
            "--model",
            "ueo-tiny-vit",
            "--classes",
            "12",
            "--images",
            "24",
            "--min-side",
            "40",
            "--max-side",
            "90",
            "--batch-size",
            "8",
            "--steps",
            "2",
            "--epochs",
            "1",
            "6",
            "--workers",
            "0",
            "--device",
            "cpu",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    for key in (
        "ueo_fit_img_s",
        "ueo_fit_end_to_end_img_s",
        "reference_fit_img_s",
        "ueo_eval_img_s",
        "reference_eval_img_s",
        "ueo_compute_only_img_s",
        "reference_compute_only_img_s",
        "image_forward_gflop",
    ):
        assert result[key] > 0, key
    assert (result["model"], result["images"], result["batch_size"]) == ("ueo-tiny-vit", 24, 8)


def test_benchmarks_use_public_names_only():
    for script in BENCHMARKS.glob("*.py"):
        tree = ast.parse(script.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ueo"):
                assert not [a.name for a in node.names if a.name.startswith("_")], (script.name, node.module)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "sys":
                assert node.attr != "path", f"{script.name} patches sys.path"
