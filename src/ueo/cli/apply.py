"""`ueo eval`, `ueo predict` and `ueo discover` (apply an adapted state to images) and `ueo export`."""

from __future__ import annotations

import time
from pathlib import Path

from ..classifier import EXPORT_FILES, Classifier
from ..config import FitConfig
from ..data import read_images
from ..errors import ConfigError
from ..images import SKIPPED_COLUMNS
from ..method import evaluate
from ..model import AdaptedState, Threshold, choose_threshold
from ..outputs import apply_record, write_run_report
from ..outputs import runfiles as report
from ..views import decoded_short_side
from .inputs import decode_cache, discovery_names, labeled_images, load_bundle, readable_files, threshold_spec
from .messages import flag_errors, say, say_done, say_or_warn, warn
from .options import flag_names
from .outputs import check_not_inside, clear_outputs, discover_into, take_out
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
    cache = decode_cache(args)
    side = decoded_short_side(bundle.views)
    files, skipped = readable_files(
        listed, args.strict, cache=cache, short_side=side, should_stop=stop, progress=not args.quiet
    )
    if args.overwrite:
        clear_outputs(out)
    report.write_csv(out / "skipped.csv", skipped, SKIPPED_COLUMNS)
    score = dict(batch_size=args.batch_size, progress=not args.quiet, should_stop=stop, cache=cache or False)
    _, outputs = evaluate(bundle, files, adapted=state, features=args.discover, **score)
    val_pair = None
    if val is not None and args.tpr is not None:
        val_files, _ = readable_files(val, args.strict, cache=cache, short_side=side, should_stop=stop)
        _, val_outputs = evaluate(bundle, val_files, adapted=state, **score)
        val_pair = (val_outputs.labels.numpy(), val_outputs.scores.numpy())
    zeroshot = None if args.no_report else evaluate(bundle, files, class_names=names, init=state.init, **score)[1]
    with flag_errors("--tpr" if args.tpr is not None else "--threshold"):
        threshold = choose_threshold(
            args.threshold,
            scores=outputs.scores.numpy(),
            source=f"these {len(files)} images' scores",
            num_known=len(names),
            fitted=state.threshold,
            tpr=args.tpr,
            val=val_pair,
            zeroshot_scores=zeroshot.scores.numpy() if zeroshot is not None else None,
            warn=warn,
        )
    predictions = report.write_predictions(
        out, files.images, outputs, class_names=names, threshold=threshold, zeroshot=zeroshot
    )
    discovery = (
        discover_into(
            out,
            outputs,
            bundle,
            state,
            threshold.value,
            vocabulary,
            cache_dir=cache.root if cache is not None else None,
            paths=files.images.paths,
            seed=state.seed,
            progress=not args.quiet,
            should_stop=stop,
        )
        if args.discover
        else None
    )
    labeled = files.images.labeled
    return out, apply_record(
        class_names=names,
        predictions=predictions,
        threshold=threshold,
        num_skipped=len(skipped),
        source=str(args.adapted),
        state=state,
        adapted=outputs.metrics(len(names)) if labeled else None,
        zeroshot=zeroshot.metrics(len(names)) if labeled and zeroshot is not None else None,
        discovery=discovery,
        seconds=time.monotonic() - started,
    )


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
        f"{Threshold.from_record(metrics['threshold']).describe()}\nwrote {out / 'predictions.csv'}"
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
