"""Run outputs (metrics.json, history.csv, predictions.csv, plots) and tables across runs."""

from __future__ import annotations

import csv
import itertools
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from .data import ImageList
from .files import atomic_path, write_text
from .metrics import known_mask, open_set_metrics
from .predict import UNKNOWN, decide, otsu_threshold

TABLE_METRICS = ("pacc", "auroc", "hm", "gacc", "fpr95", "aupr_in", "aupr_out")
RUN_KEYS = ("benchmark", "domain", "scenario", "method")


def write_json(path, data) -> None:
    """JSON that any reader accepts: a NaN or an infinity is a bug, never written."""
    write_text(path, json.dumps(data, indent=2, default=_plain, allow_nan=False) + "\n")


def _plain(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def write_csv(path, rows: Iterable[dict], fieldnames: Sequence[str]) -> None:
    """A CSV file written atomically, row by row (``rows`` may be a generator: nothing is held in memory)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", errors="surrogateescape", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fieldnames), extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def write_history(folder: Path, history: Sequence[dict]) -> None:
    """history.csv: the loss and learning rates of every step (FitResult.history)."""
    write_csv(folder / "history.csv", history, ["step", "epoch", "loss", "lr_prompt", "lr_norm"])


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def plot_roc(labels, scores, num_known: int, path) -> None:
    """ROC curve, known (positive) vs unknown, by score."""
    from .metrics import _curve, auroc

    known = known_mask(labels, num_known)
    tps, fps = _curve(known, scores)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(np.r_[0, fps / fps[-1]], np.r_[0, tps / tps[-1]], lw=2, label=f"AUROC {100 * auroc(known, scores):.1f}")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    ax.set(
        xlabel="false-positive rate (unknown accepted)",
        ylabel="true-positive rate (known accepted)",
        title="Known vs unknown",
    )
    ax.legend(loc="lower right")
    _save(fig, path)
    plt.close(fig)


def plot_scores(labels, scores, num_known: int, threshold, path) -> None:
    """Histograms of the scores of known and unknown samples, threshold marked."""
    known = known_mask(labels, num_known)
    scores = np.asarray(scores)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.linspace(scores.min(), scores.max() + 1e-9, 40)
    ax.hist(scores[known], bins=bins, alpha=0.6, label=f"known ({known.sum()})")
    ax.hist(scores[~known], bins=bins, alpha=0.6, label=f"unknown ({(~known).sum()})")
    if threshold is not None:
        ax.axvline(threshold, color="black", ls="--", label=f"threshold {threshold:.4f}")
    ax.set(xlabel="score (MCM)", ylabel="images")
    ax.legend()
    _save(fig, path)
    plt.close(fig)


def plot_confusion(labels, predictions, class_names: Sequence[str], path) -> None:
    """Row-normalised confusion matrix of the known-class samples."""
    k = len(class_names)
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    known = known_mask(labels, k)
    matrix = np.zeros((k, k))
    np.add.at(matrix, (labels[known], predictions[known]), 1)
    matrix = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    plt = pyplot()
    size = min(4 + 0.25 * k, 20)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1)
    if k <= 40:
        ax.set_xticks(range(k), class_names, rotation=90, fontsize=7)
        ax.set_yticks(range(k), class_names, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title="Known classes (row-normalised)")
    _save(fig, path)
    plt.close(fig)


def plot_loss(history: Sequence[dict], path) -> None:
    """The loss at every step, with the epochs marked."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot([h["step"] for h in history], [h["loss"] for h in history], lw=1)
    ends = [h["step"] for h, nxt in itertools.pairwise(history) if nxt["epoch"] != h["epoch"]]
    for step in ends:
        ax.axvline(step, color="grey", lw=0.5, alpha=0.5)
    ax.set(xlabel="step", ylabel="loss", title="Training loss")
    _save(fig, path)
    plt.close(fig)


def write_predictions(
    out: Path,
    images: ImageList,
    outputs,
    class_names: Sequence[str],
    threshold: float,
    num_known: int,
    zeroshot=None,
    fitted: dict | None = None,
) -> dict:
    """predictions.csv (+ plots and open-set metrics when labeled), with the zero-shot model's decisions
    beside the adapted ones when ``zeroshot`` outputs are given (cut by :func:`zeroshot_threshold` of the
    adapted state's threshold record ``fitted``). Returns what goes into metrics.json."""
    predictions, scores = outputs.predictions.numpy(), outputs.scores.numpy()
    decided = decide(predictions, scores, class_names, threshold)
    columns = ["path", *(["label"] if images.labeled else []), "prediction", "score", "top1"]
    if zeroshot is not None:
        zs_scores = zeroshot.scores.numpy()
        zs_cut = zeroshot_threshold(fitted, zeroshot)
        zs_decided = decide(zeroshot.predictions.numpy(), zs_scores, class_names, zs_cut)
        columns += ["zeroshot_prediction", "zeroshot_score"]

    def rows():  # made one at a time as the file is written
        for i, path in enumerate(images.paths):
            label = int(images.labels[i])
            row = {
                "path": str(path),
                "prediction": decided[i],
                "score": f"{scores[i]:.6f}",
                "top1": class_names[int(predictions[i])],
            }
            if images.labeled:
                row["label"] = (
                    class_names[label]
                    if 0 <= label < num_known
                    else images.unknown_names.get(label, f"unknown:{label}" if label >= 0 else "unknown")
                )
            if zeroshot is not None:
                row.update(zeroshot_prediction=zs_decided[i], zeroshot_score=f"{zs_scores[i]:.6f}")
            yield row

    write_csv(out / "predictions.csv", rows(), columns)
    summary = {
        "threshold": threshold,
        "num_images": len(images.paths),
        "num_predicted_unknown": int(sum(d == UNKNOWN for d in decided)),
    }
    if zeroshot is not None:
        summary["zeroshot_threshold"] = zs_cut
        summary["num_changed_by_adaptation"] = int(sum(a != b for a, b in zip(decided, zs_decided)))
    if images.labeled:
        labels = outputs.labels.numpy()
        summary["open_set"] = open_set_metrics(labels, predictions, scores, num_known, threshold)
        known = known_mask(labels, num_known)
        if known.any() and (~known).any():
            plot_roc(labels, scores, num_known, out / "roc.png")
        plot_scores(labels, scores, num_known, threshold, out / "scores.png")
        if known.any():
            plot_confusion(labels, predictions, class_names, out / "confusion.png")
    return summary


def zeroshot_threshold(state_threshold: dict | None, zeroshot_outputs) -> float:
    """The zero-shot decisions' threshold: the one fit chose by the same rule on the zero-shot scores of
    the adaptation set, else Otsu's rule on the zero-shot scores at hand."""
    stored = (state_threshold or {}).get("zeroshot")
    return float(stored) if stored is not None else otsu_threshold(zeroshot_outputs.scores.numpy())


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
    weights, settings), its seed and its adapted test metrics — and (path, why) for each metrics.json that
    gives no row (unreadable, or a run without labeled test images)."""
    rows, left_out = [], []
    for path in find_runs(paths):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            left_out.append((str(path), f"not a readable metrics.json: {error}"))
            continue
        adapted = data.get("adapted") if isinstance(data, dict) else None
        if not isinstance(adapted, dict) or all(adapted.get(m) is None for m in TABLE_METRICS):
            left_out.append((str(path), "no metrics: the run had no labeled test images"))
            continue
        run = data.get("run") if isinstance(data.get("run"), dict) else {}
        settings = run.get("settings") if isinstance(run.get("settings"), dict) else {}
        rows.append(
            {
                **{k: run.get(k, "-") for k in RUN_KEYS},
                "model": _model_label(run.get("model"), run.get("pretrained")),
                "settings": " ".join(f"{k}={v}" for k, v in sorted(settings.items())) or "-",
                "seed": run.get("seed", "-"),
                **{m: adapted.get(m) for m in TABLE_METRICS},
                "path": str(path.parent),
            }
        )
    return rows, left_out


def _model_label(model, pretrained) -> str:
    if not model:
        return "-"
    return f"{model} ({Path(str(pretrained)).name})" if pretrained else f"{model} (random weights)"


def mean_std(values: Sequence[float]):
    """(mean, population std) of the values; (None, None) when there are none."""
    if not values:
        return None, None
    return float(np.mean(values)), float(np.std(values))


GROUP_KEYS = (*RUN_KEYS, "model", "settings")


def summarise(rows: Sequence[dict]) -> list[dict]:
    """Group runs that differ only in their seed (same benchmark, domain, scenario, method, model, weights
    and settings): mean and std over the seeds of each metric, in %."""
    groups = defaultdict(list)
    for row in rows:
        groups[tuple(row[k] for k in GROUP_KEYS)].append(row)
    table = []
    for key, members in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
        entry = dict(zip(GROUP_KEYS, key), runs=len(members))
        for metric in TABLE_METRICS:
            entry[metric], entry[f"{metric}_std"] = mean_std(
                [100 * r[metric] for r in members if r.get(metric) is not None]
            )
        table.append(entry)
    return table


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
