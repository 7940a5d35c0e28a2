"""The page people look at: report.html of a run folder (fit, eval, predict, discover); table.html across
runs is ``ueo.webtable``'s.

The page opens offline in any browser: no network, no script, no framework. It is built from
the files the run wrote (metrics.json, predictions.csv, history.csv, skipped.csv, the plots), so
``ueo report --html RUN`` can rebuild it. Thumbnails are small JPEGs in ``thumbs/`` (named by a hash of
the image's path, so no file name reaches an attribute), and every gallery is bounded: a run over
100k images still gives a page of a few MB. Every text from the data (paths, class names) is escaped.
"""

from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from html import escape
from pathlib import Path

from ..config import UNKNOWN
from ..files import write_text
from .record import check_lines, record_problem
from .thumbs import Thumbs
from .webselection import selection_section

PER_GALLERY = 12  # images shown in each gallery
PER_CELL = 4  # examples of one confusion-matrix cell
MAX_CELLS = 120  # cells that get examples (the largest)
MATRIX_CLASSES = 40  # above this many classes the confusion matrix is listed as its largest cells

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:0 16px 40px;color:#222}
h1{font-size:24px}h2{margin-top:36px;border-bottom:1px solid #ddd;padding-bottom:4px}h3{margin:18px 0 6px}
nav a{margin-right:12px}table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 7px}
th{background:#f4f4f4;text-align:left}.gallery{display:flex;flex-wrap:wrap;gap:8px}
figure{margin:0;width:124px;font-size:11px;word-break:break-all}figure img{width:112px;height:112px;
object-fit:contain;background:#eee;display:block}.ok{color:#17752a}.bad{color:#b3261e}.muted{color:#777}
.matrix td{text-align:right;min-width:22px}.matrix a{text-decoration:none}.plots img{max-width:560px;margin:6px}
"""


def _read_csv(path: Path) -> list[dict]:

    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        return list(csv.DictReader(f))


def _figure(thumbs: Thumbs, row: dict, caption: str) -> str:
    link = thumbs(row["path"])
    image = (
        f'<img src="{escape(link)}" alt="{escape(Path(row["path"]).name)}" loading="lazy">'
        if link
        else '<div class="muted">(image not readable)</div>'
    )
    return f'<figure title="{escape(row["path"])}">{image}<figcaption>{caption}</figcaption></figure>'


def _gallery(thumbs: Thumbs, rows: list[dict], caption, limit: int = PER_GALLERY) -> str:
    shown = rows[:limit]
    more = f'<p class="muted">{len(rows) - len(shown)} more not shown.</p>' if len(rows) > len(shown) else ""
    figures = "".join(_figure(thumbs, r, caption(r)) for r in shown)
    return f'<div class="gallery">{figures}</div>{more}' if shown else '<p class="muted">none</p>'


def _score(row: dict, key: str = "score") -> float:
    return float(row[key])


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _summary(metrics: dict, rows: list[dict], run_dir: Path) -> str:
    run = metrics.get("run", {})
    threshold = metrics.get("threshold") or {}
    tuning = metrics.get("tuning", {})
    items = [
        ("images decided", f"{len(rows):,}"),
        ("adaptation images", f"{metrics['num_adaptation_images']:,}" if "num_adaptation_images" in metrics else None),
        ("test images", f"{metrics['num_test_images']:,}" if metrics.get("num_test_images") else None),
        (
            "unreadable files skipped",
            f'{metrics.get("num_skipped", 0):,} (<a href="skipped.csv">skipped.csv</a>)'
            if metrics.get("num_skipped")
            else "0",
        ),
        ("model and weights", escape(f"{run.get('model', '-')} ({run.get('pretrained', '-')})")),
        ("method", escape(str(run.get("method", "-")))),
        ("settings", escape(", ".join(f"{k} {v}" for k, v in run.get("settings", {}).items())) or None),
        (
            "tuned",
            escape(f"{metrics.get('tuned_parameters', 0):,} values; norm rule {tuning.get('rule')}")
            if tuning
            else None,
        ),
        (
            "threshold",
            escape(f"{threshold.get('threshold', 0):.4f} ({threshold.get('rule')}: {threshold.get('source')})")
            if threshold
            else None,
        ),
        ("time taken", f"{metrics['seconds']:.0f} s" if "seconds" in metrics else None),
        ("adapted state", escape(str(metrics["source"])) if "source" in metrics else None),
    ]
    table = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in items if v is not None)
    zs, ad = metrics.get("zeroshot"), metrics.get("adapted")
    scores = ""
    if ad and any(ad.get(k) is not None for k in ("pacc", "auroc")):
        keys = ("pacc", "gacc", "auroc", "fpr95", "hm")
        head = "".join(f"<th>{k.upper()}</th>" for k in keys)
        lines = ([("zero-shot", zs)] if zs else []) + [("adapted", ad)]
        body = "".join(
            f"<tr><th>{name}</th>" + "".join(f"<td>{_pct(m.get(k))}</td>" for k in keys) + "</tr>" for name, m in lines
        )
        scores = f"<h3>Metrics (%)</h3><table><tr><th></th>{head}</tr>{body}</table>"
    elif not any("label" in r for r in rows[:1]):
        scores = '<p class="muted">No labels: metrics need labeled test images.</p>'
    return f'<section id="summary"><h2>Summary</h2><table>{table}</table>{scores}</section>'


def _galleries(thumbs: Thumbs, rows: list[dict], classes: list[str]) -> str:
    by_class = defaultdict(list)
    for row in sorted(rows, key=lambda r: -_score(r)):
        by_class[row["prediction"]].append(row)
    parts = ['<section id="classes"><h2>What each class received</h2><p>Most confident first.</p>']
    for index, name in enumerate(classes):
        members = by_class.get(name, [])
        parts.append(f'<h3 id="class-{index}">{escape(name)} <span class="muted">({len(members)})</span></h3>')
        parts.append(_gallery(thumbs, members, lambda r: f"{_score(r):.4f}" + _truth(r)))
    unknown = sorted(by_class.get(UNKNOWN, []), key=_score)
    parts.append(
        f'</section><section id="unknown"><h2>Unknown <span class="muted">({len(unknown)})</span></h2>'
        "<p>Least known-looking first; the caption is the score and the closest known class.</p>"
    )
    parts.append(_gallery(thumbs, unknown, lambda r: f"{_score(r):.4f} {escape(r['top1'])}" + _truth(r)))
    return "".join(parts) + "</section>"


def _truth(row: dict) -> str:
    if "correct" not in row:
        return ""
    return f'<br><span class="{"ok" if row["correct"] else "bad"}">{escape(row["label"])}</span>'


def _borderline(thumbs: Thumbs, rows: list[dict], threshold: float) -> str:
    above = sorted((r for r in rows if _score(r) >= threshold), key=_score)
    below = sorted((r for r in rows if _score(r) < threshold), key=lambda r: -_score(r))
    caption = lambda r: f"{_score(r):.4f} {escape(r['top1'])}" + _truth(r)  # noqa: E731
    return (
        f'<section id="borderline"><h2>Borderline decisions</h2><p>The images closest to the threshold '
        f"({threshold:.4f}): check these first.</p><h3>Just accepted</h3>{_gallery(thumbs, above, caption)}"
        f"<h3>Just rejected as unknown</h3>{_gallery(thumbs, below, caption)}</section>"
    )


def _changed(thumbs: Thumbs, rows: list[dict]) -> str:
    if not rows or "zeroshot_prediction" not in rows[0]:
        return '<section id="changed"><h2>What adaptation changed</h2><p class="muted">No zero-shot decisions here.</p></section>'
    kinds: dict[str, list[dict]] = {"unknown → a class": [], "a class → unknown": [], "a class → another class": []}
    for row in rows:
        before, after = row["zeroshot_prediction"], row["prediction"]
        if before == after:
            continue
        kind = (
            "unknown → a class"
            if before == UNKNOWN
            else "a class → unknown"
            if after == UNKNOWN
            else "a class → another class"
        )
        kinds[kind].append(row)
    count = sum(len(v) for v in kinds.values())
    parts = [
        f'<section id="changed"><h2>What adaptation changed</h2><p>{count} of {len(rows)} decisions changed '
        "between zero-shot and adapted (caption: before → after).</p>"
    ]
    for kind, members in kinds.items():
        members.sort(key=lambda r: -abs(_score(r) - _score(r, "zeroshot_score")))
        parts.append(f"<h3>{escape(kind)} <span class='muted'>({len(members)})</span></h3>")
        parts.append(
            _gallery(
                thumbs, members, lambda r: f"{escape(r['zeroshot_prediction'])} → {escape(r['prediction'])}" + _truth(r)
            )
        )
    return "".join(parts) + "</section>"


def _confusion(thumbs: Thumbs, rows: list[dict], classes: list[str], plot: bool = True) -> str:
    """Rows: the true class (unknown classes together); columns: the decision. Cells link to examples."""
    names = [*classes, UNKNOWN]
    truth = lambda r: r["label"] if r["label"] in classes else UNKNOWN  # noqa: E731
    cells = defaultdict(list)
    for row in rows:
        cells[(names.index(truth(row)), names.index(row["prediction"]))].append(row)
    shown = sorted(cells, key=lambda c: -len(cells[c]))[:MAX_CELLS]
    link = lambda c: f'<a href="#cell-{c[0]}-{c[1]}">{len(cells[c])}</a>' if c in shown else str(len(cells[c]))  # noqa: E731
    if len(classes) <= MATRIX_CLASSES:
        head = "".join(f"<th>{escape(n)}</th>" for n in names)
        body = "".join(
            f"<tr><th>{escape(a)}</th>"
            + "".join(f"<td>{link((i, j)) if (i, j) in cells else ''}</td>" for j in range(len(names)))
            + "</tr>"
            for i, a in enumerate(names)
        )
        matrix = f'<table class="matrix"><tr><th>true \\ decided</th>{head}</tr>{body}</table>'
    else:
        largest = [c for c in shown if c[0] != c[1]][:60]
        matrix = (
            "<p>The largest confusions (true → decided):</p><table>"
            + "".join(
                f"<tr><td>{escape(names[i])}</td><td>{escape(names[j])}</td><td>{link((i, j))}</td></tr>"
                for i, j in largest
            )
            + "</table>"
        )
    examples = "".join(
        f'<h3 id="cell-{i}-{j}">{escape(names[i])} → {escape(names[j])} <span class="muted">({len(cells[(i, j)])})'
        f"</span></h3>"
        + _gallery(thumbs, sorted(cells[(i, j)], key=lambda r: -_score(r)), lambda r: f"{_score(r):.4f}", PER_CELL)
        for i, j in sorted(shown)
    )
    return (
        '<section id="confusion"><h2>Confusion</h2><p>Every cell with a link shows its examples below.</p>'
        + matrix
        + (
            '<p><img src="confusion.png" alt="confusion matrix of the known classes" style="max-width:100%"></p>'
            if plot
            else ""
        )
        + f'</section><section id="confusion-examples"><h2>Examples of each cell</h2>{examples}</section>'
    )


def _mistakes(rows: list[dict], classes: list[str]) -> str:
    counts = Counter(r["label"] for r in rows if r["label"] in classes)
    wrong = Counter(r["label"] for r in rows if r["label"] in classes and r["prediction"] != r["label"])
    unknown_rows = [r for r in rows if r["label"] not in classes]
    body = "".join(
        f"<tr><td>{escape(n)}</td><td>{counts[n]}</td><td>{wrong[n]}</td><td>{_pct(1 - wrong[n] / counts[n])}</td>"
        f'<td><a href="#class-{classes.index(n)}">gallery</a></td></tr>'
        for n in sorted(counts, key=lambda n: -wrong[n] / counts[n])
    )
    accepted = sum(r["prediction"] != UNKNOWN for r in unknown_rows)
    return (
        f'<section id="mistakes"><h2>Mistakes per class</h2><p>{accepted} of {len(unknown_rows)} images of '
        "unknown classes were accepted as a known class.</p><table><tr><th>class</th><th>images</th>"
        f"<th>wrong</th><th>right (%)</th><th></th></tr>{body}</table></section>"
    )


def _lead(metrics: dict) -> str:
    """The first screen's sentences: whether adapting helped by the label-free check, what the class list
    misses."""
    parts = [
        f'<p id="check" class="{"bad" if line.startswith("warning") else ""}"><strong>{escape(line)}</strong>'
        + (' <a href="#selection">Details</a>' if metrics.get("selection") else "")
        + "</p>"
        for line in check_lines(metrics)
    ]
    found = metrics.get("discovery")
    if found:
        parts.append(
            f'<p id="what-changed"><strong>{escape(found["summary"])}</strong> '
            '<a href="#discovery">Details</a> · <a href="suggested_classes.txt">suggested_classes.txt</a></p>'
        )
    return "".join(parts)


def _discovery(thumbs: Thumbs, metrics: dict, run_dir: Path) -> str:
    """The listed classes that seem absent, and the groups of unknown images with their names and galleries
    (most central first), from absent.csv and discovered.csv."""
    found = metrics.get("discovery")
    if not found:
        return ""
    absent = [r for r in _read_csv(run_dir / "absent.csv") if r.get("verdict") == "absent"]
    rows = "".join(
        f"<tr><td>{escape(r['class'])}</td><td>{100 * float(r['share']):.2f}</td><td>{escape(r['decided'])}</td></tr>"
        for r in absent
    )
    if found.get("absent_verdict") == "too few images":
        table = '<p class="muted">Too few images were accepted as known to tell whether a listed class is absent.</p>'
    elif rows:
        table = f"<table><tr><th>class</th><th>share (%)</th><th>decided</th></tr>{rows}</table>"
    else:
        table = '<p class="muted">Every listed class seems present.</p>'
    members = defaultdict(list)
    for row in _read_csv(run_dir / "discovered.csv"):
        members[row["group"]].append(row)
    parts = [
        f'<section id="discovery"><h2>What the class list misses</h2><p>{escape(found["summary"])}</p>'
        f'<h3>Listed classes that seem absent <span class="muted">({len(absent)})</span></h3>{table}'
        '<p class="muted">All classes with their shares: <a href="absent.csv">absent.csv</a>.</p>'
        f"<h3>Groups among the {found.get('num_unknown', 0)} images decided unknown</h3>"
    ]
    if not found["groups"]:
        parts.append('<p class="muted">No group.</p>')
    for group in found["groups"]:
        names = ", ".join(f"{escape(str(n))} ({float(s):.3f})" for n, s in group.get("names") or [])
        title = (
            f"looks like {escape(group['looks_like'])}, below the threshold"
            if group.get("looks_like")
            else names or "not named"
        )
        parts.append(
            f'<h3 id="group-{int(group["group"])}">Group {int(group["group"])}: {title} '
            f'<span class="muted">({int(group["size"])} images)</span></h3>'
            + (f'<p class="muted">names: {names}</p>' if group.get("looks_like") and names else "")
            + _gallery(thumbs, members.get(str(group["group"]), []), lambda r: escape(Path(r["path"]).name))
        )
    if found.get("num_other"):
        parts.append(f'<h3>Other <span class="muted">({found["num_other"]} images in no group)</span></h3>')
        parts.append(_gallery(thumbs, members.get("other", []), lambda r: escape(Path(r["path"]).name)))
    parts.append(
        '<p>Listed classes, corrected: <a href="suggested_classes.txt">suggested_classes.txt</a> (works as --classes).</p>'
    )
    return "".join(parts) + "</section>"


def _plots(run_dir: Path) -> str:
    names = {
        "roc.png": "ROC: known vs unknown",
        "scores.png": "score histograms and the threshold",
        "loss.png": "the loss at every step",
    }
    images = "".join(f'<img src="{n}" alt="{escape(t)}">' for n, t in names.items() if (run_dir / n).is_file())
    return f'<section id="plots"><h2>Plots</h2><div class="plots">{images}</div></section>' if images else ""


def write_run_report(run_dir, metrics: dict | None = None) -> Path:
    """report.html (+ thumbs/) of a run folder, from the files the run wrote and its ``metrics`` (default:
    its metrics.json; a run writes the page before metrics.json, so that metrics.json, written last,
    means that everything was written). Returns the page's path. ValueError names a damaged field."""
    run_dir = Path(run_dir)
    if metrics is None:
        metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    problem = record_problem(metrics)
    if problem:
        raise ValueError(f"metrics.json: {problem}")
    rows = _read_csv(run_dir / "predictions.csv")
    classes = metrics.get("class_names") or sorted({r["top1"] for r in rows})
    threshold = float((metrics.get("threshold") or {}).get("threshold", 0.0))
    for row in rows:  # a labeled decision is right when it names the class, or "unknown" for an unknown class
        if "label" in row:
            row["correct"] = row["prediction"] == (row["label"] if row["label"] in classes else UNKNOWN)
    thumbs = Thumbs(run_dir)
    page = _page(run_dir, metrics, rows, classes, threshold, thumbs)
    if thumbs.fetch_pending():  # images that only a stream gives: read in one pass, then the page again
        page = _page(run_dir, metrics, rows, classes, threshold, thumbs)
    write_text(run_dir / "report.html", page)
    return run_dir / "report.html"


def run_title(metrics: dict, run_dir: Path) -> str:
    """What a run is, in words: its method, data and scenario, and seed ("ueo run: <folder>" when unknown)."""
    run = metrics.get("run") or {}
    if not run.get("method"):
        return f"ueo run: {run_dir.name}"
    place = "/".join(str(run[k]) for k in ("benchmark", "domain") if run.get(k)) or str(run.get("data") or "")
    scenario = f", {run['scenario']}" if run.get("scenario") else ""
    seed = f", seed {run['seed']}" if run.get("seed") is not None else ""
    return f"{run['method']} on {place}{scenario}{seed}"


def _page(run_dir: Path, metrics: dict, rows: list[dict], classes: list[str], threshold: float, thumbs: Thumbs) -> str:
    labeled = bool(rows) and "label" in rows[0]
    sections = [
        ("summary", _summary(metrics, rows, run_dir)),
        ("selection", selection_section(metrics, run_dir)),
        ("discovery", _discovery(thumbs, metrics, run_dir)),
        ("classes", _galleries(thumbs, rows, classes)),
        ("unknown", ""),
        ("borderline", _borderline(thumbs, rows, threshold)),
        ("changed", _changed(thumbs, rows)),
    ]
    if labeled:
        plot = (run_dir / "confusion.png").is_file()
        sections += [("confusion", _confusion(thumbs, rows, classes, plot)), ("mistakes", _mistakes(rows, classes))]
    sections.append(("plots", _plots(run_dir)))  # (the unknown gallery is part of the classes' html)
    nav = "".join(f'<a href="#{name}">{name}</a>' for name, html in sections if html or name == "unknown")
    title = run_title(metrics, run_dir)
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{STYLE}</style></head><body><h1>{escape(title)}</h1>{_lead(metrics)}<nav>{nav}</nav>"
        f"{''.join(html for _, html in sections)}"
        "</body></html>\n"
    )
