"""Pieces that several commands share: messages, output folders, labeled inputs, predictions, thresholds."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .. import report
from ..data import ImageList, check_images, read_images
from ..distributed import is_main
from ..errors import ConfigError, DataError, UeoError, WeightsUnavailableError
from ..metrics import known_mask, open_set_metrics
from ..predict import decide, otsu_threshold, parse_threshold


def say(quiet: bool, message: str) -> None:
    """Print on rank 0 only; with --quiet, to stderr (stdout stays for results)."""
    if is_main():
        print(message, file=sys.stderr if quiet else sys.stdout, flush=True)


def sayer(args) -> Callable[[str], None]:
    return lambda message: say(getattr(args, "quiet", False), message)


@contextlib.contextmanager
def about(flag: str):
    """Name the command-line flag in the message of a ueo error raised inside."""
    try:
        yield
    except UeoError as error:
        error.args = (f"{flag}: {error}",)
        raise


def prepare_out(out, overwrite: bool, resumable: bool = False) -> Path:
    """The output folder, created; an existing non-empty one only with ``overwrite``."""
    if not out:
        raise ConfigError("--out is required: the folder for the results.")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        hint = f" (or --resume {out})" if resumable else ""
        raise ConfigError(f"--out {out} is not empty; pass --overwrite to write into it{hint}.")
    if is_main():
        out.mkdir(parents=True, exist_ok=True)
    return out


def load_bundle(model: str, pretrained: str | None, device: str | None, seed: int = 0):
    from ..clip import load_clip

    try:
        return load_clip(model, pretrained=pretrained, device=device, seed=seed)
    except WeightsUnavailableError as error:
        error.args = (
            f"{error}\nOn the command line: --model NAME --pretrained /path/to/open_clip_model.safetensors, "
            "or --model local-dir:/path/to/folder.",
        )
        raise


def require_known(images: ImageList, num_known: int, what: str) -> None:
    """Labeled images must include at least one image of a known class."""
    if images.labeled and not any(0 <= label < num_known for label in images.labels):
        raise DataError(
            f"{what}: no image of any known class (labels 0..{num_known - 1}); "
            "check the class names against the folder names or list labels."
        )


def labeled_images(spec, names: Sequence[str], root, flag: str) -> ImageList:
    """Images that must carry labels, at least one of them of a known class."""
    with about(f"{flag} {spec}"):
        images = read_images(spec, names, root)
    if not images.labeled:
        raise DataError(f"{flag} {spec}: no labels found (use class sub-folders or a list file with labels).")
    require_known(images, len(names), flag)
    return images


def checked(images: ImageList, strict: bool, say_: Callable[[str], None]) -> tuple[ImageList, list[dict]]:
    """Drop unreadable images (or stop at the first, with --strict)."""
    try:
        return check_images(images, strict=strict, warn=say_)
    except DataError as error:
        if strict:
            error.args = (f"{error} Remove it, or run without --strict to skip unreadable images.",)
        raise


def threshold_from(spec, scores, source: str) -> dict:
    """{"threshold", "rule"} from --threshold: a number, or 'auto' = Otsu on ``scores`` (described by ``source``)."""
    with about("--threshold"):
        fixed = parse_threshold(spec)
    if fixed is not None:
        return {"threshold": fixed, "rule": "given"}
    return {"threshold": otsu_threshold(scores), "rule": f"otsu on {source}"}


def write_predictions(
    out: Path, images: ImageList, outputs, class_names: Sequence[str], threshold: float, num_known: int
) -> dict:
    """predictions.csv (+ plots and open-set metrics when labeled). Returns what goes into metrics.json."""
    predictions, scores = outputs.predictions.numpy(), outputs.scores.numpy()
    decided = decide(predictions, scores, class_names, threshold)
    rows = []
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
        rows.append(row)
    columns = (
        ["path", "label", "prediction", "score", "top1"] if images.labeled else ["path", "prediction", "score", "top1"]
    )
    report.write_csv(out / "predictions.csv", rows, columns)
    summary = {
        "threshold": threshold,
        "num_images": len(rows),
        "num_predicted_unknown": int(sum(d == "unknown" for d in decided)),
    }
    if images.labeled:
        labels = outputs.labels.numpy()
        summary["open_set"] = open_set_metrics(labels, predictions, scores, num_known, threshold)
        known = known_mask(labels, num_known)
        if known.any() and (~known).any():
            report.plot_roc(labels, scores, num_known, out / "roc.png")
        report.plot_scores(labels, scores, num_known, threshold, out / "scores.png")
        if known.any():
            report.plot_confusion(labels, predictions, class_names, out / "confusion.png")
    return summary


def summary_line(metrics: dict) -> str:
    def pct(row, key):
        return "-" if not row or row.get(key) is None else f"{100 * row[key]:.1f}"

    zs, ad = metrics.get("zeroshot"), metrics.get("adapted")
    return (
        f"zero-shot  PACC {pct(zs, 'pacc')}  AUROC {pct(zs, 'auroc')}  HM {pct(zs, 'hm')}\n"
        f"adapted    PACC {pct(ad, 'pacc')}  AUROC {pct(ad, 'auroc')}  HM {pct(ad, 'hm')}"
    )
