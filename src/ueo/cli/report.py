"""`ueo report`: one table across runs (table.md, table.csv, table.html), or each run's page again (--html)."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError, IncompatibleError
from ..outputs import tables, write_run_report, write_table_page
from .messages import flag_errors, say, warn

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
