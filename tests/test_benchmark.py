"""Keep the throughput benchmark alive: a tiny CPU run must complete and write its JSON."""

import json
import subprocess
import sys
from pathlib import Path


def test_throughput_benchmark_runs_on_cpu(tmp_path):
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "throughput.py"
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(script), "--model", "ueo-tiny-vit", "--classes", "12", "--images", "24",
                           "--min-side", "40", "--max-side", "90", "--batch-size", "8", "--steps", "2", "--workers", "0",
                           "--device", "cpu", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    for key in ("ueo_fit_img_s", "reference_fit_img_s", "ueo_eval_img_s", "reference_eval_img_s",
                "ueo_first_pass_img_s", "fit_ratio", "eval_ratio", "image_forward_gflop"):
        assert result[key] > 0, key
    assert result["fit_ratio"] == result["ueo_fit_img_s"] / result["reference_fit_img_s"]
