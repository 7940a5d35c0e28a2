"""`ueo fit`: one run, resumable at every point (`ueo bench` runs a grid of these)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config import PROMPT_CONTEXT, FitConfig
from ..data import ImageList, fingerprint
from ..errors import ConfigError, DivergedError, Interrupted
from ..files import write_text
from ..images import SKIPPED_COLUMNS, ImageFiles
from ..method import (
    check_resumable,
    evaluate,
    fit,
    init_from_environment,
    is_main,
    load_checkpoint,
    run_identity,
    save_checkpoint,
)
from ..model import PromptLearner, configure_tuning, parse_threshold, resolve_rule
from ..outputs import fit_record, write_run_report
from ..outputs import runfiles as report
from ..views import decoded_short_side
from .configfile import given_options, resolve_config
from .inputs import (
    check_device,
    decode_cache,
    discovery_names,
    load_bundle,
    load_inputs,
    readable_files,
    threshold_spec,
)
from .messages import flag_errors, say, say_done
from .options import RESUME_OVERRIDES, absolute_paths, fit_config
from .outputs import check_not_inside, clear_outputs, discover_into, take_out
from .stop import StopRequest


@dataclass
class FitJob:
    """A checked fit job: settings, class names, data (readable images only), the model."""

    config: dict
    settings: FitConfig
    class_names: list[str]
    train: ImageList
    test: ImageList | None
    val: ImageList | None
    run: dict  # what the run is, for tables: benchmark, domain, scenario
    skipped: list[dict]
    bundle: Any = None
    identity: dict = field(default_factory=dict)
    cache: Any = None  # the decode cache (None: each image decoded when its batch comes, or the plain path)
    vocabulary: list[str] | None = None  # the candidate names for the groups of unknown images
    cache_dir: Path | None = None  # where the vocabulary's text features are kept (None: nowhere)

    prepared: list[ImageFiles] = field(default_factory=list)  # the sets as the check pass left them

    def files(self, images: ImageList) -> ImageFiles:
        """The images of a set, with the pixels the check pass made of them."""
        return next((f for f in self.prepared if f.images is images), None) or ImageFiles(images, self.cache)

    @property
    def reading(self):
        """How the library reads the images (its ``cache=``): through the command's decode cache, or
        (--no-cache, --fast off) each decoded from its file when its batch comes."""
        return self.cache if self.cache is not None else False


def cmd_fit(args) -> int:
    if args.resume:
        return resume(args)
    config = absolute_paths(resolve_config(args))
    if not config["out"]:
        raise ConfigError("--out is required: the folder for the results.")
    out = Path(config["out"])
    config["device"] = init_from_environment(config["device"])
    metrics = run_fit(
        config,
        out,
        strict=args.strict,
        overwrite=args.overwrite,
        quiet=args.quiet,
        report_html=not args.no_report,
        cache=decode_cache(config),
    )
    say_done(metrics, out)
    return 0


def resume(args) -> int:
    """Continue the run in --resume DIR as it was configured (its config.yaml), from its checkpoint, or
    from the start when it stopped before training began; a finished run is left as it is."""
    run_dir = Path(args.resume)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"--resume {run_dir}: no config.yaml there (is it a folder written by `ueo fit`?).")
    changed = sorted(set(given_options(args)) - set(RESUME_OVERRIDES))
    if args.config or args.overwrite or changed:
        flags = (
            [f"--{k.replace('_', '-')}" for k in changed]
            + ["--config"] * bool(args.config)
            + ["--overwrite"] * args.overwrite
        )
        raise ConfigError(
            f"--resume continues {run_dir} as it was configured (its config.yaml, in its folder); "
            f"{', '.join(flags)} cannot be given with it (only {', '.join('--' + k.replace('_', '-') for k in RESUME_OVERRIDES)})."
        )
    if (run_dir / "metrics.json").is_file():
        say(f"{run_dir} already holds a finished run (metrics.json); nothing to resume.")
        return 0
    with flag_errors(f"--resume {run_dir}"):
        config = resolve_config(args, config_file=run_dir / "config.yaml")
        checkpoint = (
            load_checkpoint(run_dir / "checkpoint.safetensors")
            if (run_dir / "checkpoint.safetensors").is_file()
            else None
        )
    config["device"] = init_from_environment(config["device"])
    if checkpoint is None:
        say(f"resuming {run_dir}: no checkpoint yet, starting its training from the beginning")
    else:
        meta = checkpoint["meta"]
        say(f"resuming {run_dir} at epoch {meta['epoch']}, step {len(meta['history'])}")
    metrics = run_fit(
        config,
        run_dir,
        strict=args.strict,
        checkpoint=checkpoint,
        quiet=args.quiet,
        report_html=not args.no_report,
        cache=decode_cache(config),
        resuming=True,
    )
    say_done(metrics, run_dir)
    return 0


def run_fit(
    config: dict,
    out: Path,
    *,
    strict: bool = False,
    checkpoint: dict | None = None,
    overwrite: bool = False,
    quiet: bool = False,
    report_html: bool = True,
    cache=None,
    resuming: bool = False,
) -> dict:
    """The whole fit job for a resolved config; rank 0 writes every output into ``out``; returns metrics.json.
    ``out`` is taken (locked) before any work; it must be empty unless ``overwrite`` (its earlier outputs are
    removed once every check has passed) or ``resuming`` (it holds the run being finished).

    Every check (options, class names, data, weights, prompts, image files, the checkpoint) runs before
    anything is written. A checkpoint is written after every epoch; SIGINT/SIGTERM stop the run at any
    phase with Interrupted, and ``ueo fit --resume`` finishes it with the same outputs.
    """
    started = time.monotonic()
    check_not_inside(out, {"--data": config["data"], "--test": config["test"], "--val": config["val"]})
    out = take_out(out, overwrite, resumable=True, resuming=resuming)
    new = checkpoint is None and not (out / "config.yaml").is_file()
    stop = StopRequest()
    try:
        with stop.installed():
            job = prepare(config, strict, should_stop=stop, progress=not quiet, cache=cache)
            if checkpoint is not None:
                with flag_errors(f"--resume {out}"):
                    check_resumable(checkpoint, job.settings, job.class_names, job.bundle.name, job.identity)
            stop.check("checking the inputs")
            if overwrite:
                clear_outputs(out)
            if is_main():
                if new or overwrite:
                    write_text(out / "config.yaml", yaml.safe_dump(config, sort_keys=False))
                report.write_csv(out / "skipped.csv", job.skipped, ["set", *SKIPPED_COLUMNS])
            result = train(job, out, checkpoint, stop)
            stop.check("writing the outputs")
            return write_outputs(job, result, out, stop, started, report_html)
    except Interrupted as error:
        started = (out / "config.yaml").is_file()
        hint = (
            f"continue with `ueo fit --resume {out}`" if started else "nothing was written; run the same command again"
        )
        error.args = (f"{error}; {hint}",)
        error.signum = stop.signum
        raise


def prepare(config: dict, strict: bool, should_stop=None, progress: bool = True, cache=None) -> FitJob:
    """Check the options, read the class names and the data, load the model, check every image."""
    settings = fit_config(config, progress=progress and is_main())
    cache_dir = cache.root if cache is not None else None
    cache = None if settings.fast is False else cache  # the plain path decodes as it goes
    vocabulary = discovery_names(config["vocabulary"]) if config["discover"] else None
    threshold_spec(config["threshold"], config["tpr"])
    if parse_threshold(config["threshold"]) == "fitted":
        raise ConfigError(
            "--threshold fitted is for `ueo eval` and `ueo predict`; fit chooses the threshold "
            "(auto, a number, or --tpr with --val)."
        )
    check_device(config["device"])
    class_names, train_list, test_list, val_list, run = load_inputs(config)
    if config["tpr"] is not None and val_list is None:
        raise ConfigError("--tpr needs labeled validation images: pass --val.")
    if settings.method == "tpt" and test_list is None:
        raise ConfigError(
            "--method tpt tunes the prompt for each test image and trains nothing on --data: give the images to "
            "predict with --test (or a --benchmark)."
        )
    bundle = load_bundle(config["model"], config["pretrained"], config["device"], seed=settings.seed)
    with flag_errors("--classes"):
        learner = PromptLearner(bundle, class_names, init=settings.init)  # every prompt fits the text context
    with flag_errors("--rule"):
        tuning = describe_tuning(bundle.model, learner, settings)
    skipped, kept = [], {}
    for name, images in (("adaptation", train_list), ("test", test_list), ("validation", val_list)):
        if images is not None:  # each image checked and decoded once: what fit then reads
            kept[name], bad = readable_files(
                images,
                strict,
                cache=cache,
                short_side=decoded_short_side(bundle.views),
                should_stop=should_stop,
                progress=progress,
            )
            skipped += [{**row, "set": name} for row in bad]
    job = FitJob(
        config,
        settings,
        class_names,
        kept["adaptation"].images,
        kept["test"].images if "test" in kept else None,
        kept["validation"].images if "validation" in kept else None,
        run,
        skipped,
        bundle,
        cache=cache,
        vocabulary=vocabulary,
        cache_dir=cache_dir,
        prepared=list(kept.values()),
    )
    files = {"adaptation_files": fingerprint(job.train), "test_files": fingerprint(job.test) if job.test else None}
    job.identity = run_identity(bundle, job.train, job.test, files)
    say(tuning)
    say(
        f"{len(class_names)} known classes, {len(job.train)} adaptation images"
        + (f", {len(job.test)} test images" if job.test is not None else "")
        + (f"; skipped {len(skipped)} unreadable file(s), listed in skipped.csv" if skipped else "")
    )
    return job


def describe_tuning(model, learner: PromptLearner, settings: FitConfig) -> str:
    """What will learn, in a line; refuses a rule that selects nothing (saying which rule would)."""
    try:
        tuned = configure_tuning(model, learner, settings.tune, resolve_rule(model, settings.rule))
    finally:
        model.requires_grad_(False)
    prompt = tuned.pop(PROMPT_CONTEXT, None)
    parts = [f"the prompt context ({prompt.numel():,} values)"] if prompt is not None else []
    if tuned:
        rule = resolve_rule(model, settings.rule)
        chosen = f"rule {rule!r}" + (
            " (auto: the bn-ln rule selects nothing here)" if settings.rule == "auto" and rule != "bn-ln" else ""
        )
        parts.append(f"the image encoder's norm affines by {chosen} ({sum(p.numel() for p in tuned.values()):,})")
    return "tuning " + " and ".join(parts)


def train(job: FitJob, out: Path, checkpoint: dict | None, stop: StopRequest):
    """fit, with checkpoints after every epoch and on a stop request; a diverged run keeps its last good state."""
    test = job.files(job.test) if job.test is not None else None
    try:
        return fit(
            job.bundle,
            job.class_names,
            job.files(job.train),
            test=test,
            config=job.settings,
            resume=checkpoint,
            should_stop=stop,
            identity=job.identity,
            checkpoint=(lambda c: save_checkpoint(out / "checkpoint.safetensors", c)) if is_main() else None,
            cache=job.reading,
            threshold=parse_threshold(job.config["threshold"]),
            tpr=job.config["tpr"],
            val=job.files(job.val) if job.val is not None else None,
        )
    except DivergedError as error:
        if is_main():
            error.last_good.save(out / "adapted.safetensors")
        error.args = (f"{error} Wrote it to {out / 'adapted.safetensors'}.",)
        raise


def write_outputs(job: FitJob, result, out: Path, stop: StopRequest, started: float, report_html: bool = True) -> dict:
    """adapted.safetensors, history.csv (+ loss.png), predictions.csv (+ plots), what the class list misses
    (absent.csv, discovered.csv, suggested_classes.txt), report.html and, last, metrics.json; returns the
    metrics."""
    config = job.config
    stop.check("writing the outputs")
    metrics = fit_record(
        run={
            **job.run,
            "method": config["method"],
            "seed": config["seed"],
            "model": config["model"],
            "pretrained": config["pretrained"],
            "weights": job.bundle.identity,
            "data": str(Path(config["root"]) / job.run["domain"]) if config["benchmark"] else config["data"],
            "data_fingerprint": job.identity.get("adaptation_files"),
        },
        settings=config,
        class_names=job.class_names,
        result=result,
        num_adaptation_images=len(job.train),
        num_test_images=len(job.test) if job.test is not None else 0,
        num_skipped=len(job.skipped),
    )
    # Scoring joins the collectives under torch.distributed: every rank does it; rank 0 alone writes.
    split, target = ("test", job.test) if job.test is not None else ("train", job.train)
    found = None
    if config["discover"]:  # on the adaptation set: its features are gathered, rank 0 alone clusters
        _, found = evaluate(
            job.bundle,
            job.files(job.train),
            adapted=result.adapted,
            batch_size=config["eval_batch_size"],
            cache=job.reading,
            should_stop=stop,
            features=True,
            method="zeroshot" if config["method"] == "tpt" else None,  # (TPT tunes for test images only)
        )
    outputs = result.outputs.get(split)
    if outputs is None and split == "train" and found is not None:
        outputs = found  # (its features are kept too: one pass serves both)
    if outputs is None:  # a resumed run whose training had finished: score the images again
        _, outputs = evaluate(
            job.bundle,
            job.files(target),
            adapted=result.adapted,
            batch_size=config["eval_batch_size"],
            cache=job.reading,
        )
    compare = report_html and result.threshold.zeroshot is not None  # the zero-shot model's decisions beside
    zeroshot = result.zeroshot_outputs.get(split) if compare else None
    if zeroshot is None and compare:  # (a resumed run: the zero-shot pass was before the interruption)
        _, zeroshot = evaluate(
            job.bundle,
            job.files(target),
            class_names=job.class_names,
            batch_size=config["eval_batch_size"],
            cache=job.reading,
        )
    stop.check("writing the outputs")
    if is_main():
        if found is not None:
            metrics["discovery"] = discover_into(
                out,
                found,
                job.bundle,
                result.adapted,
                result.threshold.value,
                job.vocabulary,
                cache_dir=job.cache_dir,
                paths=job.train.paths,
                seed=config["seed"],
                progress=job.settings.progress,
                should_stop=stop,
            )
        result.adapted.save(out / "adapted.safetensors")
        report.write_history(out, result.history)
        if result.history:
            report.plot_loss(result.history, out / "loss.png")
        if result.selection is not None:
            report.plot_selection(result.selection, out / "selection.png")
        metrics["predictions"] = report.write_predictions(
            out, target, outputs, class_names=job.class_names, threshold=result.threshold, zeroshot=zeroshot
        )
        metrics["seconds"] = round(time.monotonic() - started, 1)
        if report_html:
            write_run_report(out, metrics)
        report.write_json(out / "metrics.json", metrics)  # last: a run with metrics.json is finished
    return metrics
