"""report.html's section on a label-free selection (``select="auto"``): every candidate with each
validator's score and, when the test images are labeled, its test metrics; the plot beside (selection.png)."""

from __future__ import annotations

from html import escape
from pathlib import Path

from .runfiles import candidate_label


def selection_section(metrics: dict, run_dir: Path) -> str:
    """The candidates of a label-free selection: every validator's score, the test metrics when labeled."""
    selection = metrics.get("selection")
    if not selection:
        return ""
    candidates = selection["candidates"]
    names = list(candidates[0]["scores"])
    tests = [k for k in ("pacc", "auroc", "hm") if any((c.get("test") or {}).get(k) is not None for c in candidates)]

    def cell(value, scale=1.0):
        return "-" if value is None else f"{scale * value:.4g}"

    rows = "".join(
        f'<tr class="{"ok" if i == selection["chosen"] else ""}"><td>{escape(candidate_label(c))}'
        + (" (diverged)" if c["diverged"] else "")
        + ("<strong> chosen</strong>" if i == selection["chosen"] else "")
        + "</td>"
        + "".join(f"<td>{cell(c['scores'].get(n))}</td>" for n in names)
        + "".join(f"<td>{cell((c.get('test') or {}).get(k), 100)}</td>" for k in tests)
        + "</tr>"
        for i, c in enumerate(candidates)
    )
    head = "".join(f"<th>{escape(n)}</th>" for n in names) + "".join(f"<th>test {k.upper()} (%)</th>" for k in tests)
    plot = '<img src="selection.png" alt="validators and test metrics per candidate">'
    return (
        f'<section id="selection"><h2>Choosing without labels</h2><p>The {len(candidates)} candidates, scored on '
        f"the adaptation set by each validator (higher is better); {escape(selection['validator'])} chose. "
        + ("The test metrics use labels the choice never saw." if tests else "")
        + f"</p><table><tr><th>candidate</th>{head}</tr>{rows}</table>"
        + (f'<div class="plots">{plot}</div>' if (run_dir / "selection.png").is_file() else "")
        + "</section>"
    )
