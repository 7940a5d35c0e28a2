"""The experiments: `ueo bench` (a grid of fit runs, domains x scenarios x methods x seeds, then its table),
`ueo splits` (a benchmark domain's list files) and `ueo demo` (the toy world)."""

from __future__ import annotations

from pathlib import Path

from ..config import FitConfig
from ..errors import ConfigError
from ..experiments import DEMO_OUTPUTS, protocols, run_demo
from ..method import load_checkpoint
from ..outputs import runfiles as report
from ..outputs import tables, write_table_page
from .configfile import resolve_config
from .fit import run_fit
from .inputs import decode_cache
from .messages import flag_errors, say, say_or_warn, summary_line, warn
from .options import absolute_paths, flag_names
from .outputs import clear_outputs, take_out


def once(values: list, flag: str) -> list:
    """The values in order, each once (a run given twice would be counted twice as two seeds)."""
    unique = list(dict.fromkeys(values))
    if len(unique) < len(values):
        repeated = ", ".join(str(v) for v in unique if values.count(v) > 1)
        warn(f"warning: {flag} names {repeated} more than once; each is run once")
    return unique


def cmd_bench(args) -> int:
    base = absolute_paths(resolve_config(args))  # (each method's own: its recipe where the options are silent)
    benchmark = base["benchmark"]
    if not benchmark:
        raise ConfigError("bench needs --benchmark (and --root).")
    out = Path(base["out"] or "bench")
    domains = once(args.domains or list(protocols.get_benchmark(benchmark).domains), "--domains")
    scenarios, methods, seeds = (
        once(args.scenarios, "--scenarios"),
        once(args.methods, "--methods"),
        once(args.seeds, "--seeds"),
    )
    cache = decode_cache(base)  # one cache for the whole grid: each image is decoded once
    run_dirs = []
    for domain in domains:
        for scenario in scenarios:
            for method in methods:
                for seed in seeds:
                    run_dir = out / benchmark / domain / scenario / method / f"seed{seed}"
                    run_dirs.append(run_dir)
                    if (run_dir / "metrics.json").is_file() and not args.overwrite:
                        say(f"skip {run_dir} (done)")
                        continue
                    config = {
                        **absolute_paths(resolve_config(args, method=method)),
                        "benchmark": benchmark,
                        "domain": domain,
                        "scenario": scenario,
                        "method": method,
                        "seed": seed,
                        "out": str(run_dir),
                    }
                    checkpoint = None
                    if (run_dir / "checkpoint.safetensors").is_file() and not args.overwrite:
                        with flag_errors(f"{run_dir}"):
                            checkpoint = load_checkpoint(run_dir / "checkpoint.safetensors")
                        say(f"== {benchmark} {domain} {scenario} {method} seed {seed} (resuming)")
                    else:
                        say(f"== {benchmark} {domain} {scenario} {method} seed {seed}")
                    metrics = run_fit(
                        config,
                        run_dir,
                        strict=args.strict,
                        checkpoint=checkpoint,
                        overwrite=checkpoint is None,
                        quiet=args.quiet,
                        report_html=not args.no_report,
                        cache=cache,
                        resuming=checkpoint is not None,
                    )
                    say(summary_line(metrics))
    rows, left_out = tables.collect(run_dirs)
    print(tables.write_tables(rows, out / "table.md"), end="")
    write_table_page(tables.summarise(rows), out / "table.html")
    for path, reason in left_out:
        warn(f"left out of the table: {path} ({reason})")
    print(f"wrote {out / 'table.md'}, {out / 'table.csv'} and {out / 'table.html'}")
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


def cmd_demo(args) -> int:

    with flag_names({"epochs": "--epochs", "seed": "--seeds"}):
        for seed in args.seeds:
            FitConfig(epochs=args.epochs, seed=seed).validate()
    out = take_out(args.out, args.overwrite)
    if args.overwrite:
        clear_outputs(out, DEMO_OUTPUTS)
    methods = once(args.methods, "--methods")
    return run_demo(
        out, quiet=args.quiet, seeds=args.seeds, epochs=args.epochs, scenarios=args.scenarios, methods=methods
    )
