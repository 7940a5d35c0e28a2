"""index.html, the demo's front page: on its first screen the methods x scenarios table (PACC, AUROC, HM),
UEO minus each other method paired by seed, and the charts; then what the class list misses, and the way
into each run's page. A static page in the style of report.html, no script."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from pathlib import Path

from ..files import write_text
from .webreport import STYLE
from .webtable import chart

SHOWN = ("pacc", "auroc", "hm")
FRONT_STYLE = ".num{text-align:right;font-variant-numeric:tabular-nums}.best{font-weight:600}"


def _cell(row: dict, key: str, best: bool) -> str:
    if row.get(key) is None:
        return '<td class="num muted">-</td>'
    std = row.get(f"{key}_std")
    spread = f" ± {100 * std:.1f}" if std is not None and len(row.get("seeds", [])) > 1 else ""
    return f'<td class="num{" best" if best else ""}">{100 * row[key]:.1f}{spread}</td>'


def results_table(table: dict[str, dict[str, dict]]) -> str:
    """Methods x scenarios: mean (± std over seeds) of PACC, AUROC and HM in %, the best of each column bold."""
    scenarios = list(table)
    methods = list(dict.fromkeys(m for rows in table.values() for m in rows))
    head = "<tr><th rowspan=2>method</th>" + "".join(f"<th colspan=3>{escape(s)}</th>" for s in scenarios) + "</tr>"
    head += "<tr>" + "".join(f"<th>{k.upper()}</th>" for _ in scenarios for k in SHOWN) + "</tr>"
    best = {
        (s, k): max((r[k] for r in table[s].values() if r.get(k) is not None), default=None)
        for s in scenarios
        for k in SHOWN
    }
    body = ""
    for method in methods:
        cells = ""
        for s in scenarios:
            row = table[s].get(method, {})
            cells += "".join(_cell(row, k, row.get(k) is not None and row.get(k) == best[(s, k)]) for k in SHOWN)
        body += f"<tr><th>{escape(method)}</th>{cells}</tr>"
    return f"<table>{head}{body}</table>"


def gaps_table(gaps: list[dict]) -> str:
    """UEO minus each method, paired by seed: mean ± standard error in points, and whether it differs."""
    if not gaps:
        return (
            '<p class="muted">One seed: no paired comparison. Run <code>ueo demo --seeds 0 1 2 3 4</code> for UEO '
            "minus each method, paired by seed, with its standard error.</p>"
        )
    rows = "".join(
        f"<tr><td>{escape(g['scenario'])}</td><td>UEO − {escape(g['method'])}</td><td>{g['metric'].upper()}</td>"
        f'<td class="num">{100 * g["mean"]:+.2f} ± {100 * g["se"]:.2f}</td><td class="num">{g["n"]}</td>'
        f'<td class="{"ok" if g["differs"] and g["mean"] > 0 else "bad" if g["differs"] else "muted"}">'
        f"{'differs' if g['differs'] else 'does not differ'}</td></tr>"
        for g in gaps
    )
    return (
        "<table><tr><th>scenario</th><th>difference</th><th>metric</th><th>mean ± s.e. (points)</th><th>seeds</th>"
        f"<th>beyond 2 s.e.?</th></tr>{rows}</table>"
    )


def misses_table(table: dict[str, dict[str, dict]]) -> str:
    """Per scenario, what UEO's discovery says the class list misses, against the truth."""
    rows = []
    for scenario, methods in table.items():
        truth = (methods.get("ueo") or {}).get("discovery")
        if truth is None:
            continue
        groups = "; ".join(
            f"{g['size']} images: " + (f"looks like {g['looks_like']}" if g["looks_like"] else " | ".join(g["names"]))
            for g in truth["groups"]
        )
        named = ", ".join(
            f"{name} → group {v['group']} ({'first name' if v['top1'] else 'in its 3 names' if v['top3'] else 'not named'})"
            for name, v in truth["named"].items()
        )
        rows.append(
            f"<tr><td>{escape(scenario)}</td><td>{escape(', '.join(truth['absent_flagged']) or 'none')}</td>"
            f"<td>{escape(', '.join(truth['absent_truth']) or 'none')}</td><td>{escape(groups or 'none')}</td>"
            f"<td>{escape(named or 'no unknown class in the adaptation set')}</td></tr>"
        )
    if not rows:
        return ""
    return (
        "<h2>What the class list misses (UEO, adaptation set)</h2><table><tr><th>scenario</th><th>flagged absent</th>"
        "<th>truly absent</th><th>groups of unknown images (names)</th><th>true unknown classes → their group</th>"
        f"</tr>{''.join(rows)}</table>"
    )


def write_front_page(
    out: Path, scenarios: Sequence[str], table: dict, summary: list[dict], seed: int, gaps: list[dict], style: str
) -> Path:
    """index.html of a demo folder: ``table`` the demo's {scenario: {method: row}}, ``summary`` the runs'
    table (``tables.summarise``) for the charts, ``gaps`` UEO minus each method (``demo.compare``)."""
    charts = "".join(chart(summary, m) for m in SHOWN if any(e[m] is not None for e in summary))
    methods = list(dict.fromkeys(m for rows in table.values() for m in rows))
    links = "".join(
        f'<li><a href="{escape(s)}/ueo/seed{seed}/report.html">{escape(s)}: UEO, what it decided</a></li>'
        for s in scenarios
        if "ueo" in table.get(s, {})
    )
    seeds = len(next(iter(next(iter(table.values())).values()))["seeds"]) if table else 0
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>ueo demo: the toy world, {escape(style)}'
        f"</title><style>{STYLE}{FRONT_STYLE}</style></head><body>"
        f"<h1>ueo demo: the toy CLIP adapts to the unseen {escape(style)} style</h1>"
        f"<p>{len(methods)} methods × {len(table)} class-shift scenarios, {seeds} seed(s) each; PACC, AUROC and HM in "
        "% on the test set (mean ± std over seeds; the best of each column in bold).</p>"
        f"{results_table(table)}"
        f"<h2>UEO minus each method, paired by seed</h2>{gaps_table(gaps)}"
        f'<section id="charts"><h2>Charts</h2><div class="plots">{charts}</div></section>'
        f"{misses_table(table)}"
        f'<h2>The runs</h2><ul>{links}<li><a href="table.html">every run in one table</a></li></ul>'
        "</body></html>\n"
    )
    write_text(out / "index.html", page)
    return out / "index.html"
