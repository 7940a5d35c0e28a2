"""`ueo eval`, `ueo predict` (use an adapted state), `ueo splits`, `ueo report` and `ueo demo`."""

from __future__ import annotations

import time
from pathlib import Path

from .. import protocols, report, tables
from ..classifier import EXPORT_FILES, Classifier
from ..config import FitConfig
from ..errors import ConfigError, IncompatibleError
from ..fastpath import decoded_short_side
from ..images import SKIPPED_COLUMNS, ImageFiles
from ..inference import evaluate
from ..sources import read_images
from ..state import AdaptedState
from ..webreport import write_run_report
from ..webtable import write_table_page
from .common import (
    check_not_inside,
    choose_threshold,
    clear_outputs,
    decode_cache,
    describe_threshold,
    discover_into,
    discovery_names,
    drop_unreadable,
    flag_errors,
    labeled_images,
    load_bundle,
    say,
    say_done,
    say_or_warn,
    take_out,
    threshold_spec,
    warn,
)
from .options import flag_names
from .stop import interruptible


def state_and_bundle(args):
    """(adapted state, bundle of the model it belongs to; --model/--pretrained override what it records)."""
    path = Path(args.adapted)
    if not path.is_file():
        raise ConfigError(f"--adapted {path}: no such file.")
    with flag_errors("--adapted"):
        state = AdaptedState.load(path)
    model = args.model or state.model
    pretrained = args.pretrained if args.pretrained is not None else state.pretrained
    if isinstance(pretrained, str) and pretrained.lower() == "none":
        pretrained = None
    with flag_errors("--adapted"):
        state.check_model(model)
    bundle = load_bundle(model, pretrained, args.device, seed=state.seed)  # the weights it was learned on
    with flag_errors("--adapted"):
        state.check_compatible(bundle)
    return state, bundle


def apply_state(args, images_flag: str, labeled: bool, stop) -> tuple[Path, dict]:
    """What eval, predict and discover share: check everything, read the state and the images, score them
    (and, for the report, score them zero-shot too), choose the threshold, write predictions.csv and (unless
    --no-discover) what the class list misses. Returns (the output folder, the contents of metrics.json)."""
    started = time.monotonic()
    threshold_spec(args.threshold, args.tpr)
    with flag_names({"eval_batch_size": "--batch-size"}):
        FitConfig(eval_batch_size=args.batch_size).validate()
    if args.tpr is not None and not args.val:
        raise ConfigError("--tpr needs labeled validation images: pass --val.")
    vocabulary = discovery_names(args.vocabulary) if args.discover else None
    spec = getattr(args, images_flag.lstrip("-"))
    check_not_inside(Path(args.out) if args.out else None, {images_flag: spec, "--val": args.val})
    out = take_out(args.out, args.overwrite)
    state, bundle = state_and_bundle(args)
    names = state.class_names
    if labeled:
        listed = labeled_images(spec, names, args.root, images_flag)
    else:
        with flag_errors(f"{images_flag} {spec}"):
            listed = read_images(spec, names, args.root, warn=say_or_warn)
    val = labeled_images(args.val, names, args.root, "--val") if args.val else None
    store = decode_cache(args)
    side = decoded_short_side(bundle.views)
    images, skipped = drop_unreadable(listed, args.strict, stop, store=store, short_side=side, progress=not args.quiet)
    if args.overwrite:
        clear_outputs(out)
    report.write_csv(out / "skipped.csv", skipped, SKIPPED_COLUMNS)
    score = dict(batch_size=args.batch_size, progress=not args.quiet, should_stop=stop, cache=store or False)
    _, outputs = evaluate(bundle, ImageFiles(images, store), adapted=state, features=args.discover, **score)
    val_outputs = None
    if val is not None and args.tpr is not None:
        val_files = ImageFiles(drop_unreadable(val, args.strict, stop, store=store, short_side=side)[0], store)
        _, val_outputs = evaluate(bundle, val_files, adapted=state, **score)
    threshold = choose_threshold(
        args.threshold,
        scores=outputs.scores.numpy(),
        source=f"these {len(images)} images' scores",
        num_known=len(names),
        fitted=state.threshold,
        tpr=args.tpr,
        val_outputs=val_outputs,
    )
    zeroshot = (
        None
        if args.no_report
        else evaluate(bundle, ImageFiles(images, store), class_names=names, init=state.init, **score)[1]
    )
    predictions = report.write_predictions(
        out,
        images,
        outputs,
        class_names=names,
        threshold=threshold["threshold"],
        num_known=len(names),
        zeroshot=zeroshot,
        fitted=state.threshold,
    )
    discovery = (
        discover_into(
            out,
            outputs,
            bundle,
            state,
            threshold["threshold"],
            vocabulary,
            cache_dir=store.root if store is not None else None,
            paths=images.paths,
            seed=state.seed,
            progress=not args.quiet,
            should_stop=stop,
        )
        if args.discover
        else None
    )
    metrics = {
        "class_names": names,
        "predictions": predictions,
        "threshold": threshold,
        "num_skipped": len(skipped),
        "source": str(args.adapted),
        "run": {"model": state.model, "pretrained": state.pretrained, "method": state.info.get("method", "-")},
    }
    if discovery is not None:
        metrics["discovery"] = discovery
    if images.labeled:
        metrics["adapted"] = outputs.metrics(len(names))
        if zeroshot is not None:
            metrics["zeroshot"] = zeroshot.metrics(len(names))
    metrics["seconds"] = round(time.monotonic() - started, 1)
    return out, metrics


def finish(args, out: Path, metrics: dict) -> None:
    """report.html (unless --no-report), then metrics.json: written last, it means everything was written."""
    if not args.no_report:
        write_run_report(out, metrics)
    report.write_json(out / "metrics.json", metrics)


def cmd_eval(args) -> int:
    with interruptible(args.out) as stop:
        out, metrics = apply_state(args, "--test", labeled=True, stop=stop)
        stop.check("writing the outputs")
        finish(args, out, metrics)
    say_done(metrics, out)
    return 0


def cmd_predict(args) -> int:
    with interruptible(args.out) as stop:
        out, metrics = apply_state(args, "--data", labeled=False, stop=stop)
        stop.check("writing the outputs")
        finish(args, out, metrics)
    summary = metrics["predictions"]
    say(
        f"{summary['num_images']} images, {summary['num_predicted_unknown']} predicted unknown; "
        f"{describe_threshold(metrics['threshold'])}\nwrote {out / 'predictions.csv'}"
        + ("" if args.no_report else f" and {out / 'report.html'}")
    )
    return 0


def cmd_discover(args) -> int:
    args.discover = True
    with interruptible(args.out) as stop:
        out, metrics = apply_state(args, "--data", labeled=False, stop=stop)
        stop.check("writing the outputs")
        finish(args, out, metrics)
    say(
        f"wrote {out / 'absent.csv'}, {out / 'discovered.csv'} and {out / 'suggested_classes.txt'}"
        + ("" if args.no_report else f"; open {out / 'report.html'}")
    )
    return 0


def cmd_export(args) -> int:
    out = take_out(args.out, args.overwrite)
    with interruptible(out) as stop:
        state, bundle = state_and_bundle(args)
        classifier = Classifier(bundle, state)
        stop.check("loading the model")
        # (replaces only the export's own files; a stop request heard while writing waits for them to be complete)
        classifier.export(out, overwrite=args.overwrite)
    say(
        f"wrote {', '.join(EXPORT_FILES)} to {out}: open_clip alone runs the adapted model "
        f"({len(classifier.classes)} classes, threshold {classifier.threshold:.4f}); see {out / 'README.md'}"
    )
    return 0


def cmd_splits(args) -> int:
    out = Path(args.out)
    sizes = {}
    images = protocols.domain_images(
        args.benchmark, args.domain, args.root, args.lists, check_files=not args.no_check, warn=say_or_warn
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


TABLE_HEADER = "| benchmark | domain | scenario | method | runs |"


def cmd_report(args) -> int:
    if args.html:
        return rebuild_pages(args)
    path = Path(args.out)
    if path.suffix.lower() not in (".md", ""):
        raise ConfigError(f"--out {path}: the table is Markdown (.md), with a .csv beside it; name a .md file.")
    md_path = path.with_suffix(".md")
    for target in (md_path, md_path.with_suffix(".csv"), md_path.with_suffix(".html")):
        if target.exists() and not args.overwrite and not _is_table(target):
            raise ConfigError(
                f"--out {path}: {target} exists and is not a table of `ueo report`; choose another "
                "--out, or pass --overwrite to replace it."
            )
    rows, left_out = tables.collect(args.runs)
    for where, reason in left_out:
        warn(f"left out: {where} ({reason})")
    if not rows:
        raise ConfigError(f"No run with metrics under {' '.join(args.runs)}.")
    print(tables.write_tables(rows, md_path), end="")
    write_table_page(tables.summarise(rows), md_path.with_suffix(".html"))
    print(
        f"{len(rows)} run{'s' * (len(rows) != 1)}; wrote {md_path}, {md_path.with_suffix('.csv')} and "
        f"{md_path.with_suffix('.html')}"
    )
    return 0


def rebuild_pages(args) -> int:
    """`ueo report --html RUN...`: report.html of each run folder, from the files the run wrote."""
    folders = [p.parent for p in tables.find_runs(args.runs) if (p.parent / "predictions.csv").is_file()]
    if not folders:
        raise ConfigError(f"No run folder (metrics.json with predictions.csv) under {' '.join(args.runs)}.")
    for folder in folders:
        with flag_errors(f"{folder}"):
            try:
                page = write_run_report(folder)
            except (ValueError, KeyError) as error:  # a damaged metrics.json or predictions.csv
                raise IncompatibleError(f"cannot read the run's files ({error}).") from None
        say(f"wrote {page}")
    return 0


def _is_table(path: Path) -> bool:
    try:
        first = path.read_text(encoding="utf-8").splitlines()[:1]
    except (OSError, UnicodeDecodeError):
        return False
    if path.suffix == ".html":  # table.html of `ueo report` (a run's report.html is not one)
        return bool(first) and "<title>ueo runs</title>" in first[0]
    return bool(first) and (
        first[0].startswith(TABLE_HEADER) or first[0].startswith("benchmark,domain,scenario,method")
    )


def cmd_demo(args) -> int:
    from ..demo import DEMO_OUTPUTS, run_demo

    with flag_names({"epochs": "--epochs", "seed": "--seeds"}):
        for seed in args.seeds:
            FitConfig(epochs=args.epochs, seed=seed).validate()
    out = take_out(args.out, args.overwrite)
    if args.overwrite:
        clear_outputs(out, DEMO_OUTPUTS)
    return run_demo(out, quiet=args.quiet, seeds=args.seeds, epochs=args.epochs, scenarios=args.scenarios)
