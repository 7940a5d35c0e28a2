"""ueo: adapt CLIP to an unlabeled image collection (Universal Entropy Optimization).

Commands: fit, eval, predict, splits, report, bench, demo.  `ueo COMMAND --help` shows each one's options.
Exit codes: 0 success, 2 bad input (data, classes, weights, options), 3 training diverged.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Dict, List, Optional

import yaml

from . import __version__
from .data import DataError

FIT_DEFAULTS = {
    "model": "ViT-B-16", "pretrained": "openai", "device": None, "data": None, "root": None, "test": None,
    "test_root": None, "val": None, "classes": None, "benchmark": None, "domain": None, "scenario": None,
    "lists": None, "method": "ueo", "tune": "both", "rule": "official", "epochs": 50, "batch_size": 64,
    "lr_prompt": 1e-4, "lr_norm": 1e-4, "trade": 1.0, "weights": "fixed", "seed": 2023, "eval_every": 10,
    "eval_batch_size": 256, "num_workers": 0, "fast": "auto", "threshold": "auto", "tpr": None, "out": None,
}
ENGINE_KEYS = ("method", "tune", "rule", "epochs", "batch_size", "lr_prompt", "lr_norm", "trade", "weights",
               "seed", "eval_every", "eval_batch_size", "num_workers")


class UsageError(Exception):
    """Bad options or input; printed without a traceback, exit code 2."""


def _is_main() -> bool:
    """Rank 0 (or no torch.distributed): the one process that prints and writes outputs. Before the process
    group exists, torchrun's RANK variable tells."""
    import os

    from .engine import _dist

    rank, world = _dist()
    return rank == 0 if world > 1 else int(os.environ.get("RANK", "0")) == 0


def _say(args, message: str) -> None:
    if _is_main():
        print(message, file=sys.stderr if getattr(args, "quiet", False) else sys.stdout, flush=True)


def _init_distributed(device: Optional[str]) -> Optional[str]:
    """Under torchrun (WORLD_SIZE > 1): join the process group (NCCL on GPUs, gloo on CPU) and return this
    rank's device."""
    import os

    import torch

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch.distributed.is_initialized():
        return device
    use_cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    torch.distributed.init_process_group("nccl" if use_cuda else "gloo")
    return device or "cpu"


# ----------------------------------------------------------------------------------------------- options
def _add(parser, flag, key, help_text, **kwargs):
    default = FIT_DEFAULTS.get(key)
    parser.add_argument(flag, dest=key, default=None, help=f"{help_text} (default: {default})", **kwargs)


def _add_fit_options(p: argparse.ArgumentParser) -> None:
    _add(p, "--model", "model", "open_clip model name, 'hf-hub:org/repo' or 'local-dir:/path'")
    _add(p, "--pretrained", "pretrained", "weights tag or checkpoint file; 'none' for random weights")
    _add(p, "--device", "device", "cpu, cuda, cuda:1 (default: cuda when available)")
    _add(p, "--data", "data", "unlabeled images: a folder (recursive) or a list file")
    _add(p, "--root", "root", "folder that list-file paths are relative to (default: the list's folder)")
    _add(p, "--test", "test", "labeled test images: folder with class sub-folders, or a list file")
    _add(p, "--test-root", "test_root", "root for --test list paths (default: --root)")
    _add(p, "--val", "val", "labeled validation images for --tpr")
    _add(p, "--classes", "classes", "class names: a file (one per line) or a,b,c")
    _add(p, "--benchmark", "benchmark", "a benchmark instead of --data/--classes",
         choices=["office31", "officehome", "visda", "domainnet"])
    _add(p, "--domain", "domain", "benchmark domain")
    _add(p, "--scenario", "scenario", "class-shift scenario", choices=["cda", "pda", "oda", "opda", "csda"])
    _add(p, "--lists", "lists", "folder with the official list files of the benchmark")
    _add(p, "--method", "method", "objective", choices=["ueo", "infomax", "entropy", "oracle", "zeroshot"])
    _add(p, "--tune", "tune", "what learns", choices=["prompt", "norm", "both"])
    _add(p, "--rule", "rule", "which norm affines: official ('bn'/'ln' in the name) or all-norms",
         choices=["official", "all-norms"])
    _add(p, "--epochs", "epochs", "adaptation epochs", type=int)
    _add(p, "--batch-size", "batch_size", "images per step", type=int)
    _add(p, "--lr-prompt", "lr_prompt", "learning rate of the prompt context", type=float)
    _add(p, "--lr-norm", "lr_norm", "learning rate of the norm affines", type=float)
    _add(p, "--trade", "trade", "weight of the marginal-entropy term", type=float)
    _add(p, "--weights", "weights", "UEO weights: fixed (zero-shot, once) or epoch (recomputed)",
         choices=["fixed", "epoch"])
    _add(p, "--seed", "seed", "random seed", type=int)
    _add(p, "--eval-every", "eval_every", "evaluate every N epochs (0: zero-shot and last only)", type=int)
    _add(p, "--eval-batch-size", "eval_batch_size", "images per evaluation batch", type=int)
    _add(p, "--num-workers", "num_workers", "DataLoader worker processes", type=int)
    _add(p, "--fast", "fast", "decode images once into a uint8 cache and augment batches on the device "
         "(auto: on CUDA)", choices=["auto", "on", "off"])
    _add(p, "--threshold", "threshold", "unknown threshold: auto (Otsu on the adaptation set's scores) or a number")
    _add(p, "--tpr", "tpr", "choose the threshold accepting this fraction of known --val images", type=float)
    _add(p, "--out", "out", "output folder")
    p.add_argument("--config", default=None, help="YAML file with any of these options; flags override it")
    p.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --out folder")
    p.add_argument("--strict", action="store_true", help="stop at the first unreadable image instead of skipping it")
    p.add_argument("--quiet", action="store_true", help="no progress bars; logs only")


def resolve_config(args) -> Dict:
    """Defaults < YAML config < flags given on the command line."""
    config = dict(FIT_DEFAULTS)
    if getattr(args, "config", None):
        try:
            loaded = yaml.safe_load(Path(args.config).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as error:
            raise UsageError(f"--config {args.config}: {error}") from None
        if not isinstance(loaded, dict):
            raise UsageError(f"--config {args.config}: expected a mapping of option: value.")
        unknown = [k for k in loaded if k.replace("-", "_") not in FIT_DEFAULTS]
        if unknown:
            raise UsageError(f"--config {args.config}: unknown option(s) {unknown}.")
        config.update({k.replace("-", "_"): v for k, v in loaded.items()})
    config.update({k: v for k, v in vars(args).items() if k in FIT_DEFAULTS and v is not None})
    if isinstance(config.get("pretrained"), str) and config["pretrained"].lower() == "none":
        config["pretrained"] = None
    return config


def _prepare_out(out, overwrite: bool) -> Path:
    if not out:
        raise UsageError("--out is required: the folder for the results.")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"--out {out} is not empty; pass --overwrite to write into it (or --resume {out}).")
    if _is_main():
        out.mkdir(parents=True, exist_ok=True)
    return out


# -------------------------------------------------------------------------------------------------- data
def _load_inputs(config: Dict, say):
    """(known class names, adaptation ImageList, test ImageList or None, val ImageList or None, run identity)."""
    from . import data, protocols

    if config["benchmark"]:
        for key in ("domain", "scenario", "root"):
            if not config[key]:
                raise UsageError(f"--benchmark needs --{key}.")
        split = protocols.build_split(config["benchmark"], config["domain"], config["scenario"], config["root"],
                                      config["lists"], warn=say)
        run = {"benchmark": split.benchmark, "domain": split.domain, "scenario": split.scenario}
        return split.known_classes, split.train, split.test, _optional_images(config, "val", split.known_classes), run
    if not config["data"] or not config["classes"]:
        raise UsageError("Give --data and --classes (or --benchmark, --domain, --scenario, --root).")
    names = data.parse_class_names(config["classes"])
    train = data.read_images(config["data"], names, config["root"])
    _require_known(train, len(names), "--data")
    run = {"benchmark": "-", "domain": Path(config["data"]).name, "scenario": "-"}
    return names, train, _optional_images(config, "test", names), _optional_images(config, "val", names), run


def _optional_images(config, key, names):
    if not config.get(key):
        return None
    return _labeled_images(config[key], names, config.get("test_root") or config.get("root"), f"--{key}")


def _labeled_images(spec, names, root, flag: str):
    """Images that must carry labels, at least one of them a known class."""
    from .data import read_images

    images = read_images(spec, names, root)
    if not images.labeled:
        raise DataError(f"{flag} {spec}: no labels found (use class sub-folders or a list file with labels).")
    _require_known(images, len(names), flag)
    return images


def _require_known(images, num_known: int, what: str) -> None:
    """Labeled images must include at least one image of a known class."""
    if images.labeled and not any(0 <= label < num_known for label in images.labels):
        raise DataError(f"{what}: no image of any known class (labels 0..{num_known - 1}); "
                        "check the class names against the folder names or list labels.")


def _load_bundle(model, pretrained, device):
    from .clip import load_clip

    return load_clip(model, pretrained=pretrained, device=device)


# ----------------------------------------------------------------------------------------------- outputs
def _write_predictions(out: Path, images, outputs, class_names, threshold, num_known) -> Dict:
    """predictions.csv (+ plots and open-set metrics when labeled). Returns what goes into metrics.json."""
    from . import report
    from .metrics import known_mask, open_set_metrics
    from .predict import decide

    predictions, scores = outputs.predictions.numpy(), outputs.scores.numpy()
    decided = decide(predictions, scores, class_names, threshold)
    rows = []
    for i, path in enumerate(images.paths):
        label = int(images.labels[i])
        row = {"path": str(path), "prediction": decided[i], "score": f"{scores[i]:.6f}",
               "top1": class_names[int(predictions[i])]}
        if images.labeled:
            row["label"] = (class_names[label] if 0 <= label < num_known
                            else images.unknown_names.get(label, f"unknown:{label}" if label >= 0 else "unknown"))
        rows.append(row)
    fields_ = ["path", "label", "prediction", "score", "top1"] if images.labeled else ["path", "prediction", "score", "top1"]
    report.write_csv(out / "predictions.csv", rows, fields_)
    summary = {"threshold": threshold, "num_images": len(rows),
               "num_predicted_unknown": int(sum(d == "unknown" for d in decided))}
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


def _threshold(spec, scores, source: str) -> Dict:
    """{"threshold", "rule"} from --threshold: a number, or 'auto' = Otsu on ``scores`` (described by ``source``)."""
    from .predict import otsu_threshold, parse_threshold

    try:
        fixed = parse_threshold(spec)
    except ValueError as error:
        raise UsageError(str(error)) from None
    if fixed is not None:
        return {"threshold": fixed, "rule": "given"}
    return {"threshold": otsu_threshold(scores), "rule": f"otsu on {source}"}


def _choose_threshold(config, bundle, adapted, train_scores, val_dataset) -> Dict:
    """The unknown threshold: --tpr on --val (checked to exist before training), else :func:`_threshold`."""
    from .engine import evaluate
    from .metrics import known_mask
    from .predict import threshold_at_tpr

    if config.get("tpr") is None:
        return _threshold(config["threshold"], train_scores, "the adaptation set")
    _, out = evaluate(bundle, None, val_dataset, adapted=adapted, batch_size=config["eval_batch_size"])
    known = known_mask(out.labels.numpy(), len(adapted.class_names))
    try:
        value = threshold_at_tpr(out.scores.numpy()[known], config["tpr"])
    except ValueError as error:
        raise UsageError(str(error)) from None
    return {"threshold": value, "rule": f"tpr {config['tpr']} on --val"}


# -------------------------------------------------------------------------------------------------- fit
def run_fit(config: Dict, out: Path, say, quiet: bool, strict: bool = False, resume: Optional[Dict] = None) -> Dict:
    """The whole fit job for a resolved config; rank 0 writes every output into ``out``; returns metrics.json.

    Every check (options, class names, data, weights, prompts, image files) runs before any compute.
    A checkpoint is written after every epoch and on SIGINT/SIGTERM (TrainingInterrupted is raised then).
    """
    import signal

    from . import report
    from .data import ImageFiles, check_images
    from .engine import FitConfig, NonFiniteLoss, TrainingInterrupted, evaluate, fit, save_checkpoint
    from .predict import parse_threshold
    from .prompts import PromptLearner

    choice = {True: "on", False: "off"}.get(config["fast"], str(config["fast"]).lower())  # YAML reads on/off as booleans
    fast = {"auto": None, "on": True, "off": False}.get(choice)
    if fast is None and choice != "auto":
        raise UsageError(f"--fast must be auto, on or off, got {config['fast']!r}.")
    fit_config = FitConfig(**{k: config[k] for k in ENGINE_KEYS}, fast=fast, progress=not quiet and _is_main())
    try:
        fit_config.validate()
        parse_threshold(config["threshold"])
    except ValueError as error:
        raise UsageError(str(error)) from None
    class_names, train_list, test_list, val_list, run = _load_inputs(config, say)
    if config["tpr"] is not None and val_list is None:
        raise UsageError("--tpr needs labeled validation images: pass --val.")
    bundle = _load_bundle(config["model"], config["pretrained"], config["device"])
    try:
        PromptLearner(bundle, class_names, init=FitConfig.init)
    except ValueError as error:
        raise UsageError(str(error)) from None

    skipped = []
    checked = {}
    for name, images in (("adaptation", train_list), ("test", test_list), ("validation", val_list)):
        if images is not None:
            checked[name], bad = check_images(images, strict=strict, warn=say)
            skipped += [{**row, "set": name} for row in bad]
    train_list, test_list, val_list = checked["adaptation"], checked.get("test"), checked.get("validation")
    say(f"{len(class_names)} known classes, {len(train_list)} adaptation images"
        + (f", {len(test_list)} test images" if test_list is not None else "")
        + (f"; skipped {len(skipped)} unreadable file(s), listed in skipped.csv" if skipped else ""))
    if _is_main():
        write_config(out, config)
        report.write_csv(out / "skipped.csv", skipped, ["set", "path", "reason"])

    train_ds = ImageFiles(train_list)
    test_ds = ImageFiles(test_list) if test_list is not None else None
    stop = {"signal": None}

    def on_signal(signum, frame):
        stop["signal"] = signum

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        result = fit(bundle, class_names, train_ds, test=test_ds, config=fit_config, resume=resume,
                     checkpoint=(lambda c: save_checkpoint(out / "checkpoint.safetensors", c)) if _is_main() else None,
                     should_stop=lambda: stop["signal"] is not None)
    except NonFiniteLoss as error:
        if _is_main():
            error.last_good.save(out / "adapted.safetensors")
        raise FloatingPointError(f"{error} Wrote it to {out / 'adapted.safetensors'}.") from None
    except TrainingInterrupted as error:
        raise Interrupted(f"{error}: continue with `ueo fit --resume {out}`", stop["signal"]) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    train_out = result.outputs.get("train")
    if train_out is None:  # only when the adaptation set was not scored during fit
        _, train_out = evaluate(bundle, None, train_ds, adapted=result.adapted, batch_size=config["eval_batch_size"])
    threshold = _choose_threshold(config, bundle, result.adapted, train_out.scores.numpy(),
                                  ImageFiles(val_list) if val_list is not None else None)
    metrics = {
        "run": {**run, "method": config["method"], "seed": config["seed"], "model": config["model"],
                "pretrained": config["pretrained"]},
        "zeroshot": result.metrics.get("zeroshot"), "adapted": result.metrics.get("adapted"),
        "evaluations": result.evaluations, "threshold": threshold,
        "num_adaptation_images": len(train_list), "num_test_images": len(test_list) if test_list is not None else 0,
        "num_skipped": len(skipped), "tuned_parameters": sum(result.tuned_parameters.values()),
        "ueo_version": __version__,
    }
    if _is_main():
        result.adapted.save(out / "adapted.safetensors")
        report.write_csv(out / "history.csv", result.history, ["step", "epoch", "loss", "lr_prompt", "lr_norm"])
        target, outputs = (test_list, result.outputs["test"]) if test_list is not None else (train_list, train_out)
        metrics["predictions"] = _write_predictions(out, target, outputs, class_names, threshold["threshold"],
                                                    len(class_names))
        report.write_json(out / "metrics.json", metrics)
    return metrics


class Interrupted(Exception):
    """A run stopped by SIGINT/SIGTERM after saving its checkpoint."""

    def __init__(self, message: str, signum):
        super().__init__(message)
        self.signum = signum


def write_config(out: Path, config: Dict) -> None:
    from .files import write_text

    write_text(out / "config.yaml", yaml.safe_dump(config, sort_keys=False))


def _summary_line(metrics: Dict) -> str:
    def pct(row, key):
        return "-" if not row or row.get(key) is None else f"{100 * row[key]:.1f}"

    zs, ad = metrics.get("zeroshot"), metrics.get("adapted")
    return (f"zero-shot  PACC {pct(zs, 'pacc')}  AUROC {pct(zs, 'auroc')}  HM {pct(zs, 'hm')}\n"
            f"adapted    PACC {pct(ad, 'pacc')}  AUROC {pct(ad, 'auroc')}  HM {pct(ad, 'hm')}")


def cmd_fit(args) -> int:
    resume = None
    if args.resume:
        from .engine import load_checkpoint

        run_dir = Path(args.resume)
        if not (run_dir / "checkpoint.safetensors").is_file() or not (run_dir / "config.yaml").is_file():
            raise UsageError(f"--resume {run_dir}: no checkpoint.safetensors and config.yaml there.")
        if (run_dir / "metrics.json").is_file():
            _say(args, f"{run_dir} already holds a finished run (metrics.json); nothing to resume.")
            return 0
        args.config, args.out = str(run_dir / "config.yaml"), str(run_dir)
        config = resolve_config(args)
        try:
            resume = load_checkpoint(run_dir / "checkpoint.safetensors")
        except Exception as error:  # a damaged file: say so rather than show a traceback
            raise UsageError(f"--resume {run_dir}: unreadable checkpoint ({error}).") from None
        out = run_dir
        _say(args, f"resuming {run_dir} at epoch {resume['meta']['epoch']}, "
                   f"step {len(resume['meta']['history'])}")
    else:
        config = resolve_config(args)
        out = _prepare_out(config["out"], args.overwrite)
    config["device"] = _init_distributed(config["device"])
    say = (lambda m: _say(args, m))
    try:
        metrics = run_fit(config, out, say, args.quiet, strict=args.strict, resume=resume)
    except ValueError as error:  # a checkpoint that does not fit the settings, model or classes
        if resume is None:
            raise
        raise UsageError(f"--resume {out}: {error}") from None
    say(_summary_line(metrics))
    say(f"threshold {metrics['threshold']['threshold']:.4f} ({metrics['threshold']['rule']}); outputs in {out}")
    return 0


# ---------------------------------------------------------------------------------------- eval / predict
def _load_adapted(args):
    from .tuning import AdaptedState

    path = Path(args.adapted)
    if not path.is_file():
        raise UsageError(f"--adapted {path}: no such file.")
    try:
        state = AdaptedState.load(path)
    except Exception as error:  # safetensors raises its own error types for damaged files
        raise UsageError(f"--adapted {path}: not a readable ueo adapted state ({error}).") from None
    model = args.model or state.model
    pretrained = args.pretrained if args.pretrained is not None else state.pretrained
    if isinstance(pretrained, str) and pretrained.lower() == "none":
        pretrained = None
    try:
        state.check_compatible(model, pretrained)
    except ValueError as error:
        raise UsageError(str(error)) from None
    return state, _load_bundle(model, pretrained, args.device)


def _checked(args, images, out: Path):
    """Drop unreadable images (or stop, with --strict); list them in out/skipped.csv."""
    from . import report
    from .data import check_images

    images, skipped = check_images(images, strict=args.strict, warn=lambda m: _say(args, m))
    report.write_csv(out / "skipped.csv", skipped, ["path", "reason"])
    return images, skipped


def cmd_eval(args) -> int:
    from . import report
    from .data import ImageFiles
    from .engine import evaluate

    out = _prepare_out(args.out, args.overwrite)
    state, bundle = _load_adapted(args)
    images, skipped = _checked(args, _labeled_images(args.test, state.class_names, args.root, "--test"), out)
    metrics, outputs = evaluate(bundle, None, ImageFiles(images), adapted=state, batch_size=args.batch_size,
                                progress=not args.quiet)
    threshold = _threshold(args.threshold, outputs.scores.numpy(), "the test scores")
    predictions = _write_predictions(out, images, outputs, state.class_names, threshold["threshold"],
                                     len(state.class_names))
    report.write_json(out / "metrics.json", {"adapted": metrics, "predictions": predictions, "threshold": threshold,
                                             "num_skipped": len(skipped), "source": str(args.adapted)})
    _say(args, _summary_line({"adapted": metrics}).splitlines()[1] + f"\noutputs in {out}")
    return 0


def cmd_predict(args) -> int:
    from . import report
    from .data import ImageFiles, read_images
    from .engine import evaluate

    out = _prepare_out(args.out, args.overwrite)
    state, bundle = _load_adapted(args)
    images, skipped = _checked(args, read_images(args.data, state.class_names, args.root), out)
    _, outputs = evaluate(bundle, None, ImageFiles(images), adapted=state, batch_size=args.batch_size,
                          progress=not args.quiet)
    chosen = _threshold(args.threshold, outputs.scores.numpy(), "these images' scores")
    threshold = chosen["threshold"]
    summary = _write_predictions(out, images, outputs, state.class_names, threshold, len(state.class_names))
    summary["threshold_rule"] = chosen["rule"]
    summary["num_skipped"] = len(skipped)
    if images.labeled:
        summary["metrics"] = outputs.metrics(len(state.class_names))
    report.write_json(out / "metrics.json", summary)
    _say(args, f"{summary['num_images']} images, {summary['num_predicted_unknown']} predicted unknown "
               f"(threshold {threshold:.4f}); wrote {out / 'predictions.csv'}")
    return 0


# --------------------------------------------------------------------------------------- splits / report
def cmd_splits(args) -> int:
    from . import protocols

    out = Path(args.out)
    sizes = {}
    images = protocols.domain_images(args.benchmark, args.domain, args.root, args.lists,
                                     check_files=not args.no_check, warn=lambda m: _say(args, m))
    for scenario in protocols.SCENARIOS:
        split = protocols.build_split(args.benchmark, args.domain, scenario, args.root, images=images)
        protocols.write_list(split.train, args.root, out / f"{split.domain}_{scenario}_train.txt")
        sizes[f"{scenario} train"] = len(split.train)
    protocols.write_list(split.test, args.root, out / f"{split.domain}_test.txt")
    sizes["test"] = len(split.test)
    from .report import write_json

    write_json(out / "sizes.json", sizes)
    print(f"{args.benchmark} / {split.domain}: known classes per scenario = "
          f"{protocols.get_benchmark(args.benchmark).known} (csda: all)")
    for name, count in sizes.items():
        print(f"  {name:<12} {count:>8,}")
    print(f"wrote the list files to {out}")
    return 0


def write_table(rows, out_path: Path) -> str:
    from . import report
    from .files import write_text

    table = report.summarise(rows)
    markdown = report.to_markdown(table)
    out_path = Path(out_path)
    md_path = out_path if out_path.suffix == ".md" else out_path.with_suffix(".md")
    write_text(md_path, markdown)
    report.write_csv(md_path.with_suffix(".csv"), table, report.csv_fields())
    return markdown


def cmd_report(args) -> int:
    from . import report

    rows = report.collect(args.runs)
    if not rows:
        raise UsageError(f"No metrics.json with adapted metrics under {args.runs}.")
    print(write_table(rows, Path(args.out)), end="")
    print(f"{len(rows)} runs; wrote {Path(args.out).with_suffix('.md')} and .csv")
    return 0


def cmd_bench(args) -> int:
    from . import protocols

    base = resolve_config(args)
    out = Path(args.out or "bench")
    out.mkdir(parents=True, exist_ok=True)
    domains = args.domains or list(protocols.get_benchmark(args.benchmark).domains)
    metrics_paths = []
    for domain in domains:
        for scenario in args.scenarios:
            for method in args.methods:
                for seed in args.seeds:
                    run_dir = out / args.benchmark / domain / scenario / method / f"seed{seed}"
                    if (run_dir / "metrics.json").is_file() and not args.overwrite:
                        _say(args, f"skip {run_dir} (done)")
                        metrics_paths.append(run_dir)
                        continue
                    run_dir.mkdir(parents=True, exist_ok=True)
                    config = {**base, "benchmark": args.benchmark, "domain": domain, "scenario": scenario,
                              "method": method, "seed": seed, "out": str(run_dir)}
                    _say(args, f"== {args.benchmark} {domain} {scenario} {method} seed {seed}")
                    metrics = run_fit(config, run_dir, lambda m: _say(args, m), args.quiet, strict=args.strict)
                    _say(args, _summary_line(metrics))
                    metrics_paths.append(run_dir)
    from . import report

    print(write_table(report.collect(metrics_paths), out / "table.md"), end="")
    print(f"wrote {out / 'table.md'} and {out / 'table.csv'}")
    return 0


# ------------------------------------------------------------------------------------------------- demo
def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args.out, quiet=args.quiet, seeds=args.seeds, epochs=args.epochs, scenarios=args.scenarios)


# ----------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(prog="ueo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"ueo {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fit", help="adapt CLIP to unlabeled images; write the adapted state, metrics, predictions")
    _add_fit_options(p)
    p.add_argument("--resume", default=None, metavar="DIR",
                   help="continue an interrupted run from DIR/checkpoint.safetensors with DIR/config.yaml")
    p.set_defaults(func=cmd_fit)

    for name, helptext, func in (("eval", "evaluate an adapted state on labeled test images", cmd_eval),
                                 ("predict", "predict a class or 'unknown' for each image", cmd_predict)):
        p = sub.add_parser(name, help=helptext, formatter_class=fmt)
        p.add_argument("--adapted", required=True, help="adapted.safetensors written by `ueo fit`")
        p.add_argument("--test" if name == "eval" else "--data", required=True,
                       help="folder or list file" + (" with labels" if name == "eval" else ""))
        p.add_argument("--root", default=None, help="folder that list-file paths are relative to")
        p.add_argument("--out", required=True, help="output folder")
        p.add_argument("--threshold", default="auto", help="'auto' (Otsu on these images' scores) or a number")
        p.add_argument("--model", default=None, help="override the model recorded in the state")
        p.add_argument("--pretrained", default=None, help="override the weights recorded in the state")
        p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
        p.add_argument("--batch-size", type=int, default=256, help="images per batch")
        p.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty --out folder")
        p.add_argument("--strict", action="store_true", help="stop at the first unreadable image")
        p.add_argument("--quiet", action="store_true", help="logs only")
        p.set_defaults(func=func)

    p = sub.add_parser("splits", help="write the list files of every scenario of a benchmark domain", formatter_class=fmt)
    p.add_argument("--benchmark", required=True, help="office31 | officehome | visda | domainnet")
    p.add_argument("--domain", required=True, help="benchmark domain")
    p.add_argument("--root", required=True, help="dataset root")
    p.add_argument("--lists", default=None, help="folder with the official list files")
    p.add_argument("--out", required=True, help="output folder for the list files")
    p.add_argument("--no-check", action="store_true", help="do not check that the listed files exist")
    p.add_argument("--quiet", action="store_true", help="logs only")
    p.set_defaults(func=cmd_splits)

    p = sub.add_parser("report", help="one table across runs (mean ± std over seeds)", formatter_class=fmt)
    p.add_argument("runs", nargs="+", help="run folders, or folders holding runs")
    p.add_argument("--out", default="table.md", help="table path (.md; a .csv is written beside it)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("bench", help="run a protocol grid (domains x scenarios x methods x seeds) and report")
    _add_fit_options(p)
    p.add_argument("--domains", nargs="+", default=None, help="domains (default: all of the benchmark)")
    p.add_argument("--scenarios", nargs="+", default=["cda", "pda", "oda", "opda"], help="scenarios")
    p.add_argument("--methods", nargs="+", default=["zeroshot", "ueo"], help="methods")
    p.add_argument("--seeds", nargs="+", type=int, default=[2023], help="seeds")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("demo", help="offline demo on the toy world: zero-shot, entropy, InfoMax and UEO",
                       formatter_class=fmt)
    p.add_argument("--out", default="demo-out", help="output folder (demo.json, tables, plots)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], help="adaptation seeds")
    p.add_argument("--epochs", type=int, default=10, help="adaptation epochs")
    p.add_argument("--scenarios", nargs="+", default=["cda", "pda", "oda", "opda"],
                   choices=["cda", "pda", "oda", "opda"], help="scenarios to run")
    p.add_argument("--quiet", action="store_true", help="logs only")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    from .clip import WeightsUnavailableError

    logging.basicConfig(level=logging.CRITICAL)  # open_clip logs on the root logger; ueo prints its own messages
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UsageError, DataError, WeightsUnavailableError, ValueError) as error:  # engine ValueErrors are input errors
        print(f"ueo {args.command}: error: {error}", file=sys.stderr)
        return 2
    except FloatingPointError as error:
        print(f"ueo {args.command}: training stopped: {error}", file=sys.stderr)
        return 3
    except Interrupted as error:
        if _is_main():
            print(f"ueo {args.command}: interrupted, {error}", file=sys.stderr)
        return 128 + int(error.signum or 2)
    except KeyboardInterrupt:
        print(f"ueo {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
