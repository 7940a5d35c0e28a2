"""A run's files: JSON written so that any reader accepts it, CSV files (history.csv, predictions.csv, what
the class list misses), the plots (ROC, score histograms, confusion, loss). metrics.json's record is built
in ``ueo.record``; tables across runs in ``ueo.tables``; the pages in ``ueo.webreport``/``ueo.webtable``."""

from __future__ import annotations

import csv
import itertools
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import UNKNOWN
from ..data import ImageList
from ..files import atomic_path, write_text
from ..method import auroc, cumulative_counts, known_mask, open_set_metrics
from ..model import Threshold, decide


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

    known = known_mask(labels, num_known)
    tps, fps = cumulative_counts(known, scores)
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


CONFUSION_PLOT_CLASSES = 200  # above, a K x K picture is unreadable and costly: the page lists the largest cells


def plot_confusion(labels, predictions, class_names: Sequence[str], path) -> None:
    """Row-normalised confusion matrix of the known-class samples (none over CONFUSION_PLOT_CLASSES classes)."""
    k = len(class_names)
    if k > CONFUSION_PLOT_CLASSES:
        return
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
        names = [name.replace("$", r"\$") for name in class_names]  # plain text, not matplotlib's maths
        ax.set_xticks(range(k), names, rotation=90, fontsize=7)
        ax.set_yticks(range(k), names, fontsize=7)
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


def candidate_label(candidate: dict) -> str:
    """A candidate of a selection, in a few characters: "zero-shot" or "lr 0.001 ep 5"."""
    return "zero-shot" if candidate["zeroshot"] else f"lr {candidate['lr_prompt']:g} ep {candidate['epoch']}"


def plot_selection(selection: dict, path) -> None:
    """Each validator's score per candidate (rescaled to [0, 1] per validator: their units differ), the test
    PACC and AUROC below when the candidates have them, the chosen candidate marked."""
    candidates = selection["candidates"]
    labeled = any(c.get("test") for c in candidates)
    plt = pyplot()
    fig, axes = plt.subplots(2 if labeled else 1, 1, figsize=(max(6, 0.45 * len(candidates)), 6 if labeled else 3.4))
    axes = np.atleast_1d(axes)
    x = np.arange(len(candidates))
    for name in candidates[0]["scores"]:
        values = np.array([np.nan if c["scores"].get(name) is None else c["scores"][name] for c in candidates])
        low, high = np.nanmin(values), np.nanmax(values)
        axes[0].plot(x, (values - low) / (high - low) if high > low else values * 0 + 1, "o-", lw=1, label=name)
    axes[0].set(ylabel="validator (rescaled)", title=f"Candidates, chosen by {selection['validator']}")
    if labeled:
        for key in ("pacc", "auroc"):
            tested = [np.nan if (c.get("test") or {}).get(key) is None else 100 * c["test"][key] for c in candidates]
            axes[1].plot(x, tested, "s-", lw=1, label=f"test {key.upper()}")
        axes[1].set(ylabel="%")
    for ax in axes:
        ax.axvline(selection["chosen"], color="black", ls="--", lw=1)
        ax.set_xticks(x, [candidate_label(c) for c in candidates], rotation=60, fontsize=7)
        ax.legend(fontsize=7)
    _save(fig, path)
    plt.close(fig)


def write_predictions(
    out: Path, images: ImageList, outputs, *, class_names: Sequence[str], threshold: Threshold, zeroshot=None
) -> dict:
    """predictions.csv (+ plots and open-set metrics when labeled), with the zero-shot model's decisions
    beside the adapted ones when ``zeroshot`` outputs are given and the threshold carries the zero-shot
    cut. Returns what goes into metrics.json."""
    num_known = len(class_names)
    predictions, scores = outputs.predictions.numpy(), outputs.scores.numpy()
    decided = decide(predictions, scores, class_names, threshold.value)
    columns = ["path", *(["label"] if images.labeled else []), "prediction", "score", "top1"]
    zs_cut = threshold.zeroshot if zeroshot is not None else None
    compared = zs_cut is not None
    if zs_cut is not None:
        zs_scores = zeroshot.scores.numpy()
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
            if compared:
                row.update(zeroshot_prediction=zs_decided[i], zeroshot_score=f"{zs_scores[i]:.6f}")
            yield row

    write_csv(out / "predictions.csv", rows(), columns)
    summary: dict[str, Any] = {
        "threshold": threshold.value,
        "num_images": len(images.paths),
        "num_predicted_unknown": int(sum(d == UNKNOWN for d in decided)),
    }
    if compared:
        summary["zeroshot_threshold"] = threshold.zeroshot
        summary["num_changed_by_adaptation"] = int(sum(a != b for a, b in zip(decided, zs_decided)))
    if images.labeled:
        labels = outputs.labels.numpy()
        summary["open_set"] = open_set_metrics(labels, predictions, scores, num_known, threshold.value)
        known = known_mask(labels, num_known)
        if known.any() and (~known).any():
            plot_roc(labels, scores, num_known, out / "roc.png")
        plot_scores(labels, scores, num_known, threshold.value, out / "scores.png")
        if known.any():
            plot_confusion(labels, predictions, class_names, out / "confusion.png")
    return summary


def write_discovery(out, discovery) -> None:
    """absent.csv, discovered.csv and suggested_classes.txt of a ``discovery.Discovery``, in the folder ``out``."""
    out = Path(out)
    rows = [
        {
            "class": c.name,
            "share": f"{c.share:.6f}",
            "decided": c.decided,
            "verdict": "too few images" if discovery.too_few else "absent" if c.absent else "present",
        }
        for c in discovery.absent
    ]
    write_csv(out / "absent.csv", rows, ["class", "share", "decided", "verdict"])
    paths = discovery.paths or []

    def place(i):
        return paths[i] if i < len(paths) else str(i)

    found = []
    for g in discovery.groups:
        label = "|".join(n for n, _ in g.names) if g.names else ""
        for rank, i in enumerate(g.members, start=1):
            found.append(
                {"path": place(i), "group": g.number, "names": label, "looks_like": g.looks_like or "", "rank": rank}
            )
    found += [{"path": place(i), "group": "other", "names": "", "looks_like": "", "rank": ""} for i in discovery.other]
    write_csv(out / "discovered.csv", found, ["path", "group", "names", "looks_like", "rank"])
    header = f"# ueo: the listed classes corrected by what this collection shows. {discovery.summary}\n"
    lines = [header, *[c + "\n" for c in discovery.changes], *[n + "\n" for n in discovery.suggested_classes]]
    write_text(out / "suggested_classes.txt", "".join(lines))
