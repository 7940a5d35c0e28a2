"""Tables across runs: finding runs, reading their metrics.json (refusing damaged ones), the mean ± std
over seeds per setting, paired differences between methods, and table.md / table.csv."""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ..files import write_text
from .record import RUN_KEYS, TABLE_METRICS, record_problem
from .runfiles import write_csv


def find_runs(paths: Iterable) -> list[Path]:
    """metrics.json files under each path (a run folder, or a folder of runs)."""
    found = []
    for path in map(Path, paths):
        if path.is_file() and path.name == "metrics.json":
            found.append(path)
        elif path.is_dir():
            found += sorted(path.rglob("metrics.json"))
    return found


def collect(paths: Iterable) -> tuple[list[dict], list[tuple[str, str]]]:
    """(rows, left out): one row per run — what defines it (benchmark, domain, scenario, method, model,
    weights, settings, the data it was made of), its seed and its adapted test metrics — and (path, why)
    for each metrics.json that gives no row: unreadable or damaged, a run without labeled test images, or
    a run already counted (the same folder given twice, or a copy of a run: the same record)."""
    rows, left_out = [], []
    seen_files: set[str] = set()
    seen_runs: dict[str, str] = {}
    for path in find_runs(paths):
        real = os.path.realpath(path)
        if real in seen_files:
            continue  # the same file, reached twice (a folder and its parent, or one given twice)
        seen_files.add(real)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            left_out.append((str(path), f"not a readable metrics.json: {error}"))
            continue
        problem = record_problem(data)
        if problem:
            left_out.append((str(path), problem))
            continue
        adapted = data.get("adapted") or {}
        if all(adapted.get(m) is None for m in TABLE_METRICS):
            left_out.append((str(path), "no metrics: the run had no labeled test images"))
            continue
        run = data.get("run") if isinstance(data.get("run"), dict) else {}
        identity = hashlib.sha256(json.dumps([run, adapted], sort_keys=True, default=str).encode("utf-8")).hexdigest()
        if identity in seen_runs:
            left_out.append((str(path), f"the same run as {seen_runs[identity]} (a copy, or given twice)"))
            continue
        seen_runs[identity] = str(path.parent)
        settings = run.get("settings") if isinstance(run.get("settings"), dict) else {}
        rows.append(
            {
                **{k: str(run.get(k, "-")) for k in RUN_KEYS},
                "model": _model_label(run.get("model"), run.get("pretrained"), run.get("weights")),
                "settings": " ".join(f"{k}={v}" for k, v in sorted(settings.items())) or "-",
                "data": str(run.get("data_fingerprint") or run.get("data") or run.get("domain", "-")),
                "data_path": str(run.get("data") or ""),
                "seed": run.get("seed", "-"),
                **{m: adapted.get(m) for m in TABLE_METRICS},
                "path": str(path.parent),
            }
        )
    return rows, left_out


def _model_label(model, pretrained, weights=None) -> str:
    """The model and its weights, in a table cell: the tag or file name, with a short digest of a file's
    contents (two files of one name are different weights). Random weights are drawn from the run's seed,
    so runs over seeds are runs over random models: they are grouped."""
    if not model:
        return "-"
    if isinstance(weights, dict) and "sha256_ends" in weights:
        return f"{model} ({weights.get('file')} {str(weights['sha256_ends'])[:8]})"
    return f"{model} ({Path(str(pretrained)).name})" if pretrained else f"{model} (random weights)"


def mean_std(values: Sequence[float]):
    """(mean, population std) of the values; (None, None) when there are none."""
    if not values:
        return None, None
    return float(np.mean(values)), float(np.std(values))


def paired_difference(a: Sequence[float], b: Sequence[float]) -> dict:
    """The difference of two methods paired by seed: {"mean", "se", "differs", "n"} of a_i - b_i, where se
    is the standard error of the mean (sample std / sqrt(n)) and "differs" says whether the mean is more
    than two standard errors from zero (None with fewer than two pairs)."""
    if len(a) != len(b):
        raise ValueError(f"paired values need as many of each: {len(a)} and {len(b)}")
    diffs = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = len(diffs)
    if n < 2:
        return {"mean": float(diffs.mean()) if n else None, "se": None, "differs": None, "n": n}
    se = float(diffs.std(ddof=1) / np.sqrt(n))
    return {"mean": float(diffs.mean()), "se": se, "differs": bool(abs(diffs.mean()) > 2 * se), "n": n}


GROUP_KEYS = (*RUN_KEYS, "model", "settings")


def summarise(rows: Sequence[dict]) -> list[dict]:
    """Group runs that differ only in their seed (same benchmark, domain, scenario, method, model, weights,
    settings and data): mean and std over the seeds of each metric, in %. Two groups whose data differ
    but share a domain name (e.g. Office-31's amazon/images and webcam/images) are told apart by as many
    trailing parts of their data's path as it takes."""
    groups = defaultdict(list)
    for row in rows:
        key = tuple(row[k] for k in GROUP_KEYS) + (row.get("data", row["domain"]),)
        groups[key].append(row)
    names = _distinct_names({key: members[0] for key, members in groups.items()})
    table = []
    for key, members in sorted(groups.items(), key=lambda kv: (names[kv[0]], *map(str, kv[0]))):
        entry = dict(zip(GROUP_KEYS, key), runs=len(members))
        entry["domain"] = names[key]
        for metric in TABLE_METRICS:
            entry[metric], entry[f"{metric}_std"] = mean_std(
                [100 * r[metric] for r in members if r.get(metric) is not None]
            )
        table.append(entry)
    return table


def _distinct_names(first_rows: dict) -> dict:
    """{group key: its domain as shown}: the domain name, or, where groups of other data share it, the
    shortest trailing part of each one's data path that tells them apart."""

    def place(row) -> tuple:  # (the scenario's adaptation set differs by design: not a clash)
        return row["benchmark"], row["domain"], row.get("scenario")

    by_name = defaultdict(set)
    for row in first_rows.values():
        by_name[place(row)].add(row.get("data", row["domain"]))
    names = {}
    for key, row in first_rows.items():
        clash = [r for r in first_rows.values() if place(r) == place(row)]
        if len(by_name[place(row)]) < 2 or not row.get("data_path"):
            names[key] = row["domain"]
            continue
        parts = Path(row["data_path"]).parts
        for depth in range(1, len(parts) + 1):
            mine = "/".join(parts[-depth:])
            others = {"/".join(Path(r["data_path"]).parts[-depth:]) for r in clash if r.get("data") != row.get("data")}
            if mine not in others:
                break
        names[key] = mine
    return names


def cell(mean, std, runs: int) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    return f"{mean:.1f}" if runs == 1 else f"{mean:.1f} ± {std:.1f}"


def identity_columns(table: Sequence[dict]) -> list[str]:
    """The identity columns: model always, settings only when the runs differ in them."""
    return ["model"] + (["settings"] if len({e["settings"] for e in table}) > 1 else [])


def to_markdown(table: Sequence[dict]) -> str:
    extra = identity_columns(table)
    header = [*RUN_KEYS, "runs", *(m.upper() for m in TABLE_METRICS), *extra]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for entry in table:
        cells = [str(entry[k]) for k in RUN_KEYS] + [str(entry["runs"])]
        cells += [cell(entry[m], entry[f"{m}_std"], entry["runs"]) for m in TABLE_METRICS]
        cells += [str(entry[k]) for k in extra]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_fields() -> list[str]:
    return [*GROUP_KEYS, "runs", *(f for m in TABLE_METRICS for f in (m, f"{m}_std"))]


def write_tables(rows: Sequence[dict], path) -> str:
    """The table of ``rows`` as Markdown at ``path`` (.md) and as CSV beside it; returns the Markdown."""
    table = summarise(rows)
    markdown = to_markdown(table)
    path = Path(path)
    md_path = path if path.suffix == ".md" else path.with_suffix(".md")
    write_text(md_path, markdown)
    write_csv(md_path.with_suffix(".csv"), table, csv_fields())
    return markdown
