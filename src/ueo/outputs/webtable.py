"""table.html: the mean ± std table across runs (``ueo report``, ``ueo bench``, the demo), with a chart per
metric (scenario groups x methods, error bars = std over seeds). A static page, no script."""

from __future__ import annotations

import base64
import io
from html import escape
from pathlib import Path

from ..files import write_text
from .runfiles import pyplot
from .tables import TABLE_METRICS, cell, identity_columns
from .webreport import STYLE


def chart(table: list[dict], metric: str) -> str:
    """A bar chart (PNG, embedded) of one metric: groups = benchmark/domain/scenario, bars = methods,
    error bars = std over seeds."""
    plt = pyplot()
    groups = sorted({(e["benchmark"], e["domain"], e["scenario"]) for e in table})
    methods = sorted({(e["method"], e["model"]) for e in table})
    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(groups) * max(1, len(methods)) / 2), 3.4))
    for m, method in enumerate(methods):
        entries = [
            next(
                (
                    e
                    for e in table
                    if (e["benchmark"], e["domain"], e["scenario"]) == g and (e["method"], e["model"]) == method
                ),
                None,
            )
            for g in groups
        ]
        values = [e[metric] if e and e[metric] is not None else 0 for e in entries]
        errors = [e[f"{metric}_std"] if e and e[f"{metric}_std"] is not None else 0 for e in entries]
        label = method[0] if len(methods) == len({x[0] for x in methods}) else f"{method[0]} · {method[1]}"
        ax.bar([g + m * width for g in range(len(groups))], values, width, yerr=errors, capsize=3, label=label)
    varying = [i for i in range(3) if len({g[i] for g in groups}) > 1] or [2]  # (what all share goes unsaid)
    ax.set_xticks(
        [g + width * (len(methods) - 1) / 2 for g in range(len(groups))],
        ["/".join(str(g[i]) for i in varying if g[i] != "-") or "-" for g in groups],
        rotation=20,
        fontsize=8,
    )
    ax.set(ylabel=f"{metric.upper()} (%)", title=metric.upper())
    ax.legend(fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}" alt="{metric} chart">'


def write_table_page(table: list[dict], path) -> Path:
    """table.html: the mean ± std table and one chart per metric, self-contained."""
    extra = identity_columns(table)
    head = "".join(
        f"<th>{escape(h)}</th>"
        for h in ("benchmark", "domain", "scenario", "method", "runs", *(m.upper() for m in TABLE_METRICS), *extra)
    )
    body = "".join(
        "<tr>"
        + "".join(f"<td>{escape(str(e[k]))}</td>" for k in ("benchmark", "domain", "scenario", "method", "runs"))
        + "".join(f"<td>{escape(cell(e[m], e[f'{m}_std'], e['runs']))}</td>" for m in TABLE_METRICS)
        + "".join(f"<td>{escape(str(e[k]))}</td>" for k in extra)
        + "</tr>"
        for e in table
    )
    charts = "".join(chart(table, m) for m in TABLE_METRICS if any(e[m] is not None for e in table))
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>ueo runs</title><style>{STYLE}'
        f"</style></head><body><h1>Runs: mean ± std over seeds (%)</h1><table>{head}{body}</table>"
        f'<section id="charts"><h2>Charts</h2><div class="plots">{charts}</div></section></body></html>\n'
    )
    path = Path(path)
    write_text(path, page)
    return path
