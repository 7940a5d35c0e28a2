"""`ueo fit` (one run) and `ueo bench` (a grid of runs over a benchmark)."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from .. import __version__, protocols, report
from ..checkpoint import load_checkpoint, save_checkpoint
from ..config import FitConfig
from ..data import ImageFiles, ImageList, parse_class_names, read_images
from ..distributed import init_from_environment, is_main
from ..errors import ConfigError, DivergedError, TrainingInterrupted
from ..files import write_text
from ..inference import evaluate
from ..metrics import known_mask
from ..predict import parse_threshold, threshold_at_tpr
from ..prompts import PromptLearner
from ..training import fit
from .common import (
    about,
    checked,
    labeled_images,
    load_bundle,
    prepare_out,
    require_known,
    say,
    summary_line,
    threshold_from,
    write_predictions,
)
from .options import fit_config, resolve_config


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
    bundle: object = None


def cmd_fit(args) -> int:
    resume = None
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "checkpoint.safetensors").is_file() or not (run_dir / "config.yaml").is_file():
            raise ConfigError(f"--resume {run_dir}: no checkpoint.safetensors and config.yaml there.")
        if (run_dir / "metrics.json").is_file():
            say(args.quiet, f"{run_dir} already holds a finished run (metrics.json); nothing to resume.")
            return 0
        args.config, args.out = str(run_dir / "config.yaml"), str(run_dir)
        config = resolve_config(args)
        with about(f"--resume {run_dir}"):
            resume = load_checkpoint(run_dir / "checkpoint.safetensors")
        out = run_dir
        say(args.quiet, f"resuming {run_dir} at epoch {resume['meta']['epoch']}, step {len(resume['meta']['history'])}")
    else:
        config = resolve_config(args)
        out = prepare_out(config["out"], args.overwrite, resumable=True)
    config["device"] = init_from_environment(config["device"])
    with about(f"--resume {out}") if resume is not None else contextlib.nullcontext():
        metrics = run_fit(config, out, args.quiet, strict=args.strict, resume=resume)
    say(args.quiet, summary_line(metrics))
    say(
        args.quiet,
        f"threshold {metrics['threshold']['threshold']:.4f} ({metrics['threshold']['rule']}); outputs in {out}",
    )
    return 0


def run_fit(config: dict, out: Path, quiet: bool, strict: bool = False, resume: dict | None = None) -> dict:
    """The whole fit job for a resolved config; rank 0 writes every output into ``out``; returns metrics.json.

    Every check (options, class names, data, weights, prompts, image files) runs before any compute.
    A checkpoint is written after every epoch and on SIGINT/SIGTERM (TrainingInterrupted is raised then).
    """
    job = prepare(config, lambda m: say(quiet, m), strict, progress=not quiet and is_main())
    if is_main():
        write_text(out / "config.yaml", yaml.safe_dump(config, sort_keys=False))
        report.write_csv(out / "skipped.csv", job.skipped, ["set", "path", "reason"])
    result = train(job, out, resume)
    return write_outputs(job, result, out)


def prepare(config: dict, say_: Callable[[str], None], strict: bool, progress: bool) -> FitJob:
    """Check the options, read the class names and the data, load the model, check every image."""
    settings = fit_config(config, progress)
    with about("--threshold"):
        parse_threshold(config["threshold"])
    class_names, train_list, test_list, val_list, run = load_inputs(config, say_)
    if config["tpr"] is not None and val_list is None:
        raise ConfigError("--tpr needs labeled validation images: pass --val.")
    bundle = load_bundle(config["model"], config["pretrained"], config["device"], seed=settings.seed)
    with about("--classes"):
        PromptLearner(bundle, class_names, init=settings.init)  # every prompt fits the text context
    skipped, kept = [], {}
    for name, images in (("adaptation", train_list), ("test", test_list), ("validation", val_list)):
        if images is not None:
            kept[name], bad = checked(images, strict, say_)
            skipped += [{**row, "set": name} for row in bad]
    job = FitJob(
        config,
        settings,
        class_names,
        kept["adaptation"],
        kept.get("test"),
        kept.get("validation"),
        run,
        skipped,
        bundle,
    )
    say_(
        f"{len(class_names)} known classes, {len(job.train)} adaptation images"
        + (f", {len(job.test)} test images" if job.test is not None else "")
        + (f"; skipped {len(skipped)} unreadable file(s), listed in skipped.csv" if skipped else "")
    )
    return job


def load_inputs(config: dict, say_: Callable[[str], None]):
    """(known class names, adaptation images, test images or None, validation images or None, run identity)."""
    if config["benchmark"]:
        for key in ("domain", "scenario", "root"):
            if not config[key]:
                raise ConfigError(f"--benchmark needs --{key}.")
        split = protocols.build_split(
            config["benchmark"], config["domain"], config["scenario"], config["root"], config["lists"], warn=say_
        )
        run = {"benchmark": split.benchmark, "domain": split.domain, "scenario": split.scenario}
        return split.known_classes, split.train, split.test, optional_images(config, "val", split.known_classes), run
    if not config["data"] or not config["classes"]:
        raise ConfigError("Give --data and --classes (or --benchmark, --domain, --scenario, --root).")
    with about("--classes"):
        names = parse_class_names(config["classes"])
    with about(f"--data {config['data']}"):
        train = read_images(config["data"], names, config["root"])
    require_known(train, len(names), "--data")
    run = {"benchmark": "-", "domain": Path(config["data"]).name, "scenario": "-"}
    return names, train, optional_images(config, "test", names), optional_images(config, "val", names), run


def optional_images(config: dict, key: str, names) -> ImageList | None:
    if not config.get(key):
        return None
    return labeled_images(config[key], names, config.get("test_root") or config.get("root"), f"--{key}")


@contextlib.contextmanager
def stop_on_signals():
    """SIGINT/SIGTERM set a flag instead of killing the process: training stops at the next step, saves a
    checkpoint, and raises TrainingInterrupted."""
    stop: dict = {"signal": None}

    def on_signal(signum, frame):
        stop["signal"] = signum

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def train(job: FitJob, out: Path, resume: dict | None):
    """fit, with checkpoints after every epoch and on SIGINT/SIGTERM; a diverged run keeps its last good state."""
    test = ImageFiles(job.test) if job.test is not None else None
    with stop_on_signals() as stop:
        try:
            return fit(
                job.bundle,
                job.class_names,
                ImageFiles(job.train),
                test=test,
                config=job.settings,
                resume=resume,
                should_stop=lambda: stop["signal"] is not None,
                checkpoint=(lambda c: save_checkpoint(out / "checkpoint.safetensors", c)) if is_main() else None,
            )
        except DivergedError as error:
            if is_main():
                error.last_good.save(out / "adapted.safetensors")
            error.args = (f"{error} Wrote it to {out / 'adapted.safetensors'}.",)
            raise
        except TrainingInterrupted as error:
            error.args = (f"{error}: continue with `ueo fit --resume {out}`",)
            error.signum = stop["signal"]
            raise


def choose_threshold(job: FitJob, adapted, train_scores) -> dict:
    """The unknown threshold: --tpr on --val, else --threshold (a number, or Otsu on the adaptation set)."""
    config = job.config
    if config.get("tpr") is None:
        return threshold_from(config["threshold"], train_scores, "the adaptation set")
    _, out = evaluate(job.bundle, None, ImageFiles(job.val), adapted=adapted, batch_size=config["eval_batch_size"])
    known = known_mask(out.labels.numpy(), len(adapted.class_names))
    with about("--tpr"):
        value = threshold_at_tpr(out.scores.numpy()[known], config["tpr"])
    return {"threshold": value, "rule": f"tpr {config['tpr']} on --val"}


def write_outputs(job: FitJob, result, out: Path) -> dict:
    """adapted.safetensors, history.csv, predictions.csv (+ plots) and metrics.json; returns the metrics."""
    config = job.config
    train_out = result.outputs.get("train")
    if train_out is None:  # only when the adaptation set was not scored during fit
        _, train_out = evaluate(
            job.bundle, None, ImageFiles(job.train), adapted=result.adapted, batch_size=config["eval_batch_size"]
        )
    threshold = choose_threshold(job, result.adapted, train_out.scores.numpy())
    metrics = {
        "run": {
            **job.run,
            "method": config["method"],
            "seed": config["seed"],
            "model": config["model"],
            "pretrained": config["pretrained"],
        },
        "zeroshot": result.metrics.get("zeroshot"),
        "adapted": result.metrics.get("adapted"),
        "evaluations": result.evaluations,
        "threshold": threshold,
        "num_adaptation_images": len(job.train),
        "num_test_images": len(job.test) if job.test is not None else 0,
        "num_skipped": len(job.skipped),
        "tuned_parameters": sum(result.tuned_parameters.values()),
        "ueo_version": __version__,
    }
    if is_main():
        result.adapted.save(out / "adapted.safetensors")
        report.write_csv(out / "history.csv", result.history, ["step", "epoch", "loss", "lr_prompt", "lr_norm"])
        target, outputs = (job.test, result.outputs["test"]) if job.test is not None else (job.train, train_out)
        metrics["predictions"] = write_predictions(
            out, target, outputs, job.class_names, threshold["threshold"], len(job.class_names)
        )
        report.write_json(out / "metrics.json", metrics)
    return metrics


def cmd_bench(args) -> int:
    base = resolve_config(args)
    benchmark = base["benchmark"]
    if not benchmark:
        raise ConfigError("bench needs --benchmark (and --root).")
    out = Path(base["out"] or "bench")
    out.mkdir(parents=True, exist_ok=True)
    domains = args.domains or list(protocols.get_benchmark(benchmark).domains)
    run_dirs = []
    for domain in domains:
        for scenario in args.scenarios:
            for method in args.methods:
                for seed in args.seeds:
                    run_dir = out / benchmark / domain / scenario / method / f"seed{seed}"
                    run_dirs.append(run_dir)
                    if (run_dir / "metrics.json").is_file() and not args.overwrite:
                        say(args.quiet, f"skip {run_dir} (done)")
                        continue
                    run_dir.mkdir(parents=True, exist_ok=True)
                    config = {
                        **base,
                        "benchmark": benchmark,
                        "domain": domain,
                        "scenario": scenario,
                        "method": method,
                        "seed": seed,
                        "out": str(run_dir),
                    }
                    say(args.quiet, f"== {benchmark} {domain} {scenario} {method} seed {seed}")
                    say(args.quiet, summary_line(run_fit(config, run_dir, args.quiet, strict=args.strict)))
    print(report.write_tables(report.collect(run_dirs), out / "table.md"), end="")
    print(f"wrote {out / 'table.md'} and {out / 'table.csv'}")
    return 0
