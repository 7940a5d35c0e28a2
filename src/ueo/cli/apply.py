"""`ueo eval`, `ueo predict` (use an adapted state), `ueo splits`, `ueo report` and `ueo demo`."""

from __future__ import annotations

from pathlib import Path

from .. import protocols, report
from ..data import ImageFiles, read_images
from ..errors import ConfigError
from ..inference import evaluate
from ..state import AdaptedState
from .common import (
    about,
    checked,
    labeled_images,
    load_bundle,
    prepare_out,
    say,
    sayer,
    summary_line,
    threshold_from,
    write_predictions,
)


def load_adapted(args):
    """(adapted state, bundle of the model it belongs to; --model/--pretrained override what it records)."""
    path = Path(args.adapted)
    if not path.is_file():
        raise ConfigError(f"--adapted {path}: no such file.")
    with about("--adapted"):
        state = AdaptedState.load(path)
    model = args.model or state.model
    pretrained = args.pretrained if args.pretrained is not None else state.pretrained
    if isinstance(pretrained, str) and pretrained.lower() == "none":
        pretrained = None
    state.check_compatible(model, pretrained)
    return state, load_bundle(model, pretrained, args.device)


def cmd_eval(args) -> int:
    out = prepare_out(args.out, args.overwrite)
    state, bundle = load_adapted(args)
    images, skipped = checked(
        labeled_images(args.test, state.class_names, args.root, "--test"), args.strict, sayer(args)
    )
    report.write_csv(out / "skipped.csv", skipped, ["path", "reason"])
    metrics, outputs = evaluate(
        bundle, None, ImageFiles(images), adapted=state, batch_size=args.batch_size, progress=not args.quiet
    )
    threshold = threshold_from(args.threshold, outputs.scores.numpy(), "the test scores")
    predictions = write_predictions(
        out, images, outputs, state.class_names, threshold["threshold"], len(state.class_names)
    )
    report.write_json(
        out / "metrics.json",
        {
            "adapted": metrics,
            "predictions": predictions,
            "threshold": threshold,
            "num_skipped": len(skipped),
            "source": str(args.adapted),
        },
    )
    say(args.quiet, summary_line({"adapted": metrics}).splitlines()[1] + f"\noutputs in {out}")
    return 0


def cmd_predict(args) -> int:
    out = prepare_out(args.out, args.overwrite)
    state, bundle = load_adapted(args)
    with about(f"--data {args.data}"):
        listed = read_images(args.data, state.class_names, args.root)
    images, skipped = checked(listed, args.strict, sayer(args))
    report.write_csv(out / "skipped.csv", skipped, ["path", "reason"])
    _, outputs = evaluate(
        bundle, None, ImageFiles(images), adapted=state, batch_size=args.batch_size, progress=not args.quiet
    )
    chosen = threshold_from(args.threshold, outputs.scores.numpy(), "these images' scores")
    threshold = chosen["threshold"]
    summary = write_predictions(out, images, outputs, state.class_names, threshold, len(state.class_names))
    summary["threshold_rule"] = chosen["rule"]
    summary["num_skipped"] = len(skipped)
    if images.labeled:
        summary["metrics"] = outputs.metrics(len(state.class_names))
    report.write_json(out / "metrics.json", summary)
    say(
        args.quiet,
        f"{summary['num_images']} images, {summary['num_predicted_unknown']} predicted unknown "
        f"(threshold {threshold:.4f}); wrote {out / 'predictions.csv'}",
    )
    return 0


def cmd_splits(args) -> int:
    out = Path(args.out)
    sizes = {}
    images = protocols.domain_images(
        args.benchmark, args.domain, args.root, args.lists, check_files=not args.no_check, warn=sayer(args)
    )
    for scenario in protocols.SCENARIOS:
        split = protocols.build_split(args.benchmark, args.domain, scenario, args.root, images=images)
        protocols.write_list(split.train, args.root, out / f"{split.domain}_{scenario}_train.txt")
        sizes[f"{scenario} train"] = len(split.train)
    protocols.write_list(split.test, args.root, out / f"{split.domain}_test.txt")
    sizes["test"] = len(split.test)
    report.write_json(out / "sizes.json", sizes)
    print(
        f"{args.benchmark} / {split.domain}: known classes per scenario = "
        f"{protocols.get_benchmark(args.benchmark).known} (csda: all)"
    )
    for name, count in sizes.items():
        print(f"  {name:<12} {count:>8,}")
    print(f"wrote the list files to {out}")
    return 0


def cmd_report(args) -> int:
    rows = report.collect(args.runs)
    if not rows:
        raise ConfigError(f"No metrics.json with adapted metrics under {args.runs}.")
    print(report.write_tables(rows, Path(args.out)), end="")
    print(f"{len(rows)} runs; wrote {Path(args.out).with_suffix('.md')} and .csv")
    return 0


def cmd_demo(args) -> int:
    from ..demo import run_demo

    return run_demo(args.out, quiet=args.quiet, seeds=args.seeds, epochs=args.epochs, scenarios=args.scenarios)
