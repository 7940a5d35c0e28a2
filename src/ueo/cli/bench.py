"""`ueo bench`: a grid of fit runs (domains x scenarios x methods x seeds) over one benchmark, then its table."""

from __future__ import annotations

from pathlib import Path

from .. import protocols, tables
from ..checkpoint import load_checkpoint
from ..errors import ConfigError
from ..webtable import write_table_page
from .common import decode_cache, flag_errors, say, summary_line, warn
from .fit import run_fit
from .options import absolute_paths, resolve_config


def once(values: list, flag: str) -> list:
    """The values in order, each once (a run given twice would be counted twice as two seeds)."""
    unique = list(dict.fromkeys(values))
    if len(unique) < len(values):
        repeated = ", ".join(str(v) for v in unique if values.count(v) > 1)
        warn(f"warning: {flag} names {repeated} more than once; each is run once")
    return unique


def cmd_bench(args) -> int:
    base = absolute_paths(resolve_config(args))
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
    store = decode_cache(base)  # one cache for the whole grid: each image is decoded once
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
                        **base,
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
                        store=store,
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
