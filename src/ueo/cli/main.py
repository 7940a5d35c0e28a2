"""ueo: adapt CLIP to an unlabeled image collection (Universal Entropy Optimization).

Commands: fit, eval, predict, discover, export, splits, report, bench, demo, cache.  `ueo COMMAND --help` shows each one's options.
Exit codes: 0 done, 1 a bug in ueo (reported with its traceback), 2 bad input (data, class names,
weights, options, states), 3 training diverged, 128+N stopped by signal N (a checkpoint was saved).
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys
import traceback
import warnings

from ..config import DEMO_METHODS, METHODS
from ..errors import DivergedError, Interrupted, UeoError
from ..experiments import SHIFT_SCENARIOS
from ..version import __version__
from .options import NO_DISCOVER_HELP, SCENARIO_CHOICES, VOCABULARY_HELP, add_cache_options, add_fit_options

# command -> (module, function): imported only when the command runs, so that --help stays fast
COMMANDS = {
    "fit": ("fit", "cmd_fit"),
    "bench": ("bench", "cmd_bench"),
    "eval": ("apply", "cmd_eval"),
    "predict": ("apply", "cmd_predict"),
    "discover": ("apply", "cmd_discover"),
    "export": ("apply", "cmd_export"),
    "splits": ("bench", "cmd_splits"),
    "report": ("report", "cmd_report"),
    "demo": ("bench", "cmd_demo"),
    "cache": ("store", "cmd_cache"),
}
# errno values that say the machine refused (not that ueo has a bug)
ENVIRONMENT_ERRORS = {
    errno.ENOSPC,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EDQUOT,
    errno.EEXIST,
    errno.ENAMETOOLONG,
    errno.ENOENT,
    errno.EMFILE,
    errno.EIO,
}
BUG_REPORT = "This is a bug in ueo, not a problem with your input: please report it with the traceback above."


def build_parser() -> argparse.ArgumentParser:
    """The parser: one sub-parser a command (``add_<command>``, in the order of ``ueo --help``)."""
    parser = argparse.ArgumentParser(
        prog="ueo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"ueo {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (
        add_fit,
        add_apply,
        add_cache,
        add_export,
        add_splits,
        add_report,
        add_bench,
        add_demo,
    ):
        add(sub)
    return parser


def add_fit(sub) -> None:
    p = sub.add_parser(
        "fit",
        help="adapt CLIP to unlabeled images; write the adapted state, metrics, predictions",
        description="Adapt a CLIP to unlabeled images (--data and --classes, or a --benchmark "
        "protocol) and write the adapted state, metrics and predictions into --out.",
    )
    add_fit_options(p)
    p.add_argument(
        "--resume",
        default=None,
        metavar="DIR",
        help="continue an interrupted run from DIR/checkpoint.safetensors with DIR/config.yaml",
    )


def add_apply(sub) -> None:
    defaults = argparse.ArgumentDefaultsHelpFormatter
    for name, help_text in (
        ("eval", "evaluate an adapted state on labeled test images"),
        ("predict", "predict a class or 'unknown' for each image"),
        ("discover", "say which listed classes seem absent from images and what their unknown images are"),
    ):
        p = sub.add_parser(
            name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".", formatter_class=defaults
        )
        p.add_argument("--adapted", required=True, help="adapted.safetensors written by `ueo fit`")
        p.add_argument(
            "--test" if name == "eval" else "--data",
            required=True,
            help="folder or list file" + (" with labels" if name == "eval" else ""),
        )
        p.add_argument("--root", default=None, help="folder that list-file paths are relative to")
        p.add_argument("--out", required=True, help="output folder")
        p.add_argument(
            "--threshold",
            default="fitted",
            help="'fitted' (the one chosen by `ueo fit`, stored in the state: the same decision for an "
            "image whatever else is scored with it), 'auto' (Otsu on these images' scores) or a number "
            "(scores lie in [1/K, 1] and sit just above 1/K)",
        )
        p.add_argument(
            "--tpr",
            type=float,
            default=None,
            help="instead, the threshold that accepts this fraction of the known --val images",
        )
        p.add_argument("--val", default=None, help="labeled validation images, for --tpr")
        p.add_argument("--model", default=None, help="override the model recorded in the state")
        p.add_argument("--pretrained", default=None, help="override the weights recorded in the state")
        p.add_argument("--device", default=None, help="cpu, cuda, ... (None: cuda when available)")
        p.add_argument("--batch-size", type=int, default=256, help="images per batch")
        p.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --out folder")
        p.add_argument("--strict", action="store_true", help="stop at the first unreadable image")
        p.add_argument("--quiet", action="store_true", help="logs only")
        p.add_argument(
            "--no-report",
            action="store_true",
            help="write no report.html (and skip the zero-shot pass it compares with)",
        )
        p.add_argument("--vocabulary", default="default", help=VOCABULARY_HELP)
        if name != "discover":
            p.add_argument("--no-discover", dest="discover", action="store_false", help=NO_DISCOVER_HELP)
        add_cache_options(p)


def add_cache(sub) -> None:
    defaults = argparse.ArgumentDefaultsHelpFormatter
    p = sub.add_parser(
        "cache",
        help="see the decode cache (info), remove its stale entries (prune), remove it (clear), set its bound",
        description="The decode cache keeps each image decoded once, for later runs. info: where it is, its "
        "size and bound, shards, images per geometry, last use. prune: remove damaged shards, older versions and "
        "the entries of files that no longer exist or have changed. clear: remove every shard. bound SIZE: keep "
        "SIZE (e.g. 20GB) as its bound (bound alone: show it). Shards in use by a running ueo are never removed, "
        "and only a folder that ueo tagged as its cache is touched.",
        formatter_class=defaults,
    )
    p.add_argument("action", choices=("info", "prune", "clear", "bound"))
    p.add_argument("size", nargs="?", default=None, help="with bound: the new bound, e.g. 20GB, 500MB, 2GiB")
    p.add_argument("--cache-dir", default=None, help="the cache (default: $UEO_CACHE_DIR, else ~/.cache/ueo)")


def add_export(sub) -> None:
    defaults = argparse.ArgumentDefaultsHelpFormatter
    p = sub.add_parser(
        "export",
        help="write the adapted model for open_clip alone (weights, classifier, README)",
        description="Write what runs the adapted model with open_clip alone: the whole CLIP with the adapted "
        "norms merged in, the known classes' text features with the threshold, and a README with the code.",
        formatter_class=defaults,
    )
    p.add_argument("--adapted", required=True, help="adapted.safetensors written by `ueo fit`")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--model", default=None, help="override the model recorded in the state")
    p.add_argument("--pretrained", default=None, help="override the weights recorded in the state")
    p.add_argument("--device", default="cpu", help="where to compute the text features")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export in --out")


def add_splits(sub) -> None:
    defaults = argparse.ArgumentDefaultsHelpFormatter
    p = sub.add_parser(
        "splits",
        help="write the list files of every scenario of a benchmark domain",
        description="Write the adaptation and test list files of every scenario of a benchmark "
        "domain, and print their sizes.",
        formatter_class=defaults,
    )
    p.add_argument("--benchmark", required=True, help="office31 | officehome | visda | domainnet")
    p.add_argument("--domain", required=True, help="benchmark domain")
    p.add_argument("--root", required=True, help="dataset root")
    p.add_argument("--lists", default=None, help="folder with the official list files")
    p.add_argument("--out", required=True, help="output folder for the list files")
    p.add_argument("--no-check", action="store_true", help="do not check that the listed files exist")
    p.add_argument("--quiet", action="store_true", help="logs only")


def add_report(sub) -> None:
    defaults = argparse.ArgumentDefaultsHelpFormatter
    p = sub.add_parser(
        "report",
        help="one table across runs (mean ± std over seeds)",
        description="Collect the metrics.json of runs into one table (mean ± std over seeds).",
        formatter_class=defaults,
    )
    p.add_argument("runs", nargs="+", help="run folders, or folders holding runs")
    p.add_argument("--out", default="table.md", help="table path (.md; a .csv is written beside it)")
    p.add_argument("--overwrite", action="store_true", help="replace files at --out that are not ueo tables")
    p.add_argument("--html", action="store_true", help="instead, rebuild report.html of each run folder given")


def add_bench(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="run a protocol grid (domains x scenarios x methods x seeds) and report",
        description="Run every domain x scenario x method x seed of a benchmark (runs already "
        "done are skipped) and write the table.",
    )
    add_fit_options(p)
    p.add_argument("--domains", nargs="+", default=None, help="domains (default: all of the benchmark)")
    p.add_argument(
        "--scenarios",
        nargs="+",
        default=list(SHIFT_SCENARIOS),
        choices=SCENARIO_CHOICES,
        help=f"scenarios (default: {' '.join(SHIFT_SCENARIOS)})",
    )
    p.add_argument(
        "--methods",
        nargs="+",
        default=["zeroshot", "ueo"],
        choices=METHODS,
        help="methods, each with its recipe where the options are silent (default: zeroshot ueo)",
    )
    p.add_argument("--seeds", nargs="+", type=int, default=[2023], help="seeds (default: 2023)")


def add_demo(sub) -> None:
    defaults = argparse.ArgumentDefaultsHelpFormatter
    p = sub.add_parser(
        "demo",
        help="offline demo on the toy world: UEO beside zero-shot, entropy, InfoMax, UPL and POUF",
        description="Adapt the shipped toy CLIP to the unseen painting style of the toy world, offline, with "
        "UEO and the methods it is compared with, and write index.html: the table, UEO minus each method paired "
        "by seed, the charts and what the class list misses.",
        formatter_class=defaults,
    )
    p.add_argument("--out", default="demo-out", help="output folder (demo.json, tables, plots)")
    p.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier demo in --out")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="adaptation seeds")
    p.add_argument("--epochs", type=int, default=10, help="adaptation epochs of UEO and its variants")
    p.add_argument(
        "--methods",
        nargs="+",
        default=list(DEMO_METHODS),
        choices=[m for m in METHODS if m != "oracle"],
        help="methods (the baselines with their published recipes; tent and tpt on request: they would take the demo past 5 minutes on 2 CPU cores)",
    )
    p.add_argument(
        "--scenarios",
        nargs="+",
        default=list(SHIFT_SCENARIOS),
        choices=SHIFT_SCENARIOS,
        help="scenarios to run",
    )
    p.add_argument("--quiet", action="store_true", help="logs only")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.CRITICAL)  # open_clip logs on the root logger; ueo prints its own messages
    module, function = COMMANDS[args.command]
    prefix = f"ueo {args.command}:"
    try:
        command = getattr(importlib.import_module(f".{module}", __package__), function)
        with warnings.catch_warnings():
            warnings.showwarning = said  # the library's warnings, as the command's own lines
            return command(args)
    except DivergedError as error:
        print(f"{prefix} training stopped: {error}", file=sys.stderr)
        return 3
    except Interrupted as error:
        from ..method import is_main

        if is_main():
            print(f"{prefix} interrupted, {error}", file=sys.stderr)
        return 128 + int(getattr(error, "signum", None) or 2)
    except UeoError as error:
        print(f"{prefix} error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # the file system refused (full disk, read-only, a path under a file, ...)
        if error.errno not in ENVIRONMENT_ERRORS:
            return bug(prefix)
        where = f" {error.filename}" if error.filename else ""
        print(
            f"{prefix} error: cannot write or read{where}: {error.strerror or error}. Files written before are kept"
            + ("; once this is fixed, `ueo fit --resume` finishes the run." if args.command == "fit" else "."),
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(
            f"{prefix} interrupted at once; the files written before (and the last checkpoint) are kept",
            file=sys.stderr,
        )
        return 130
    except Exception:
        return bug(prefix)
    finally:
        from .outputs import release_locks

        release_locks()


def said(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning of the library (``warnings.warn``), said as the command says its own (rank 0, stderr)."""
    from .messages import warn

    warn(f"warning: {message}")


def bug(prefix: str) -> int:
    traceback.print_exc()
    print(f"{prefix} {BUG_REPORT}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
