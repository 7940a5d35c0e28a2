"""What the commands say: messages on stdout, warnings on stderr (rank 0 only), flags named in errors, and
the lines that end fit and eval."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from ..errors import UeoError
from ..method import is_main
from ..model import Threshold
from ..outputs import check_lines


def say(message: str) -> None:
    """A message for the user (rank 0 only), on stdout."""
    if is_main():
        print(message, flush=True)


def warn(message: str) -> None:
    """A warning (rank 0 only), on stderr."""
    if is_main():
        print(message, file=sys.stderr, flush=True)


def say_or_warn(message: str) -> None:
    (warn if message.startswith("warning") else say)(message)


@contextlib.contextmanager
def flag_errors(flag: str):
    """Name the command-line flag in the message of a ueo error raised inside."""
    try:
        yield
    except UeoError as error:
        error.args = (f"{flag}: {error}",)
        raise


def say_done(metrics: dict, out: Path) -> None:
    """The end of fit and eval: the metrics, the threshold and where the outputs are."""
    say(summary_line(metrics))
    for line in check_lines(metrics):
        (warn if line.startswith("warning") else say)(line)
    say(f"{Threshold.from_record(metrics['threshold']).describe()}\noutputs in {out}")


def summary_line(metrics: dict) -> str:
    zs, ad = metrics.get("zeroshot"), metrics.get("adapted")
    if not ad or all(ad.get(k) is None for k in ("pacc", "auroc")):
        return "no metrics: they need labeled test images (--test with class sub-folders or a labeled list file)"

    def pct(row, key):
        return "-" if not row or row.get(key) is None else f"{100 * row[key]:.1f}"

    lines = [f"zero-shot  PACC {pct(zs, 'pacc')}  AUROC {pct(zs, 'auroc')}  HM {pct(zs, 'hm')}"] if zs else []
    lines.append(f"adapted    PACC {pct(ad, 'pacc')}  AUROC {pct(ad, 'auroc')}  HM {pct(ad, 'hm')}")
    if ad.get("auroc") is None:
        lines.append("(AUROC and HM need unknown-class images among the test images)")
    return "\n".join(lines)
