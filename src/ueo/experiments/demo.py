"""`ueo demo`: the method at work offline, on the toy world (see ``ueo.toyworld``).

The shipped tiny CLIP ("ueo-toy-rn", pretrained "toyworld") was pretrained on the clean, sketch and noisy
styles; here it adapts to the unseen painting style in the four class-shift scenarios, with zero-shot,
entropy minimisation, InfoMax and UEO. Learning rate 1e-3 for both parameter groups (the paper's 1e-4 is
for real CLIPs: it barely moves a model this small; at 1e-2 training is chaotic, and a perturbation of
1e-6 in the views moves a run's final PACC by up to 10 points), 10 epochs, batch 64, everything else as
the reference. Measured with benchmarks/demo_stability.py: at these settings the same perturbation moves
no final PACC or AUROC by more than a few tenths of a point.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from ..config import BASELINES, DEMO_METHODS
from ..data import ImageList
from ..discovery import discover
from ..files import write_text
from ..method import fit
from ..model import load_clip
from ..outputs import (
    fit_record,
    paired_difference,
    tables,
    write_discovery,
    write_front_page,
    write_run_report,
    write_table_page,
)
from ..outputs import runfiles as report
from . import toyworld as tw
from .protocols import SHIFT_SCENARIOS

DEMO_SCENARIOS = SHIFT_SCENARIOS
DEMO_SETTINGS = dict(epochs=10, batch_size=64, lr_prompt=1e-3, lr_norm=1e-3, eval_every=0, eval_train=False)
QUIET_EVALUATION = dict(eval_every=0, eval_train=False)  # the baselines: their own recipes, evaluated at the end
PER_CLASS, TEST_PER_CLASS = 48, 50
KEYS = ("pacc", "auroc", "hm", "gacc", "fpr95")
DEMO_OUTPUTS = ("demo.json", "table.md", "table.csv", "table.html", "index.html", *DEMO_SCENARIOS)  # what a demo writes


def run_scenario(
    bundle,
    scenario: str,
    methods: Sequence[str] = DEMO_METHODS,
    seeds: Sequence[int] = (0,),
    out: Path | None = None,
    progress: bool = False,
    settings: dict | None = None,
) -> dict[str, dict]:
    """{method: {metric: mean over seeds, metric_std: ..., "seeds": [...per seed...]}} on one toy scenario.
    With ``out``: one folder per run, and for UEO's first seed the predictions, plots and report.html."""

    train, test = tw.scenario(scenario, per_class=PER_CLASS, test_per_class=TEST_PER_CLASS)
    names = tw.CLASS_NAMES[: tw.NUM_KNOWN]
    results, truth = {}, None
    for method in methods:
        per_seed = []
        chosen = method_settings(method, settings or DEMO_SETTINGS)
        for seed in seeds:
            result = fit(bundle, names, train, test=test, method=method, seed=seed, progress=progress, **chosen)
            per_seed.append({k: result.metrics["adapted"][k] for k in KEYS})
            pages = out is not None and method == "ueo" and seed == seeds[0]
            found = discover_toy(bundle, result, train, out if pages else None) if pages else None
            if found is not None:
                truth = against_truth(found, [label for label, _ in train.samples], scenario)
            if out is not None:
                write_run(
                    out,
                    out / scenario / method / f"seed{seed}",
                    scenario=scenario,
                    method=method,
                    seed=seed,
                    result=result,
                    train_size=len(train),
                    test=test,
                    pages=pages,
                    discovery=found,
                )
        entry = {}
        for k in KEYS:
            entry[k], entry[f"{k}_std"] = tables.mean_std([row[k] for row in per_seed if row[k] is not None])
        entry["seeds"] = per_seed
        if method == "ueo" and truth is not None:
            entry["discovery"] = truth
        results[method] = entry
    return results


def method_settings(method: str, settings: dict) -> dict:
    """The demo's settings of a method: the toy world's learning rate and epochs for UEO and its variants, the
    published recipe for a baseline (``config.METHOD_RECIPES``)."""
    return dict(QUIET_EVALUATION) if method in BASELINES else dict(settings)


def discover_toy(bundle, result, train, out: Path | None):
    """What the class list misses in the adaptation set, named from the toy vocabulary (ueo.discover; with
    ``out``, of the images written there as files, so that the run's page shows them)."""

    return discover(result, image_files(out, train).paths if out is not None else train, vocabulary=tw.VOCABULARY)


def against_truth(found, labels: Sequence[int], scenario: str) -> dict:
    """A discovery of a toy adaptation set against the truth (``labels``: the true class of each image):
    the absent classes flagged (truth: the known classes the scenario leaves out), the groups' purity and
    adjusted mutual information with the true classes of the images decided unknown (the images in no group
    together as one more group), and for each unknown class in the set whether the group holding most of
    its images has its name first, or among its 3 names. Beside each, what a trivial rule gets: every class
    present (recall 0), one group (purity: the largest class's fraction; AMI 0), a random allowed name."""

    from sklearn.metrics import adjusted_mutual_info_score

    present = set(tw.SCENARIOS[scenario])
    truly_absent = {tw.CLASS_NAMES[k] for k in range(tw.NUM_KNOWN) if k not in present}
    flagged = set(found.absent_classes)
    hits = len(flagged & truly_absent)
    group_of = {i: g.number for g in found.groups for i in g.members}
    true = [labels[i] for i in found.unknown]
    grouped = [(labels[i], group_of[i]) for i in found.unknown if i in group_of]
    purity = (
        sum(max(Counter(t for t, g in grouped if g == n).values()) for n in {g for _, g in grouped}) / len(grouped)
        if grouped
        else None
    )
    listed = tw.CLASS_NAMES[: tw.NUM_KNOWN]
    allowed = [n for n in tw.VOCABULARY if n not in listed]
    named = {}
    for c in sorted({label for label in labels if label >= tw.NUM_KNOWN}):
        held = Counter(group_of[i] for i in found.unknown if labels[i] == c and i in group_of)
        group = next((g for g in found.groups if held and g.number == held.most_common(1)[0][0]), None)
        top = [n for n, _ in group.names] if group is not None else []
        named[tw.CLASS_NAMES[c]] = {
            "group": group.number if group is not None else None,
            "names": top,
            "top1": top[:1] == [tw.CLASS_NAMES[c]],
            "top3": tw.CLASS_NAMES[c] in top,
        }
    return {
        "absent_truth": sorted(truly_absent),
        "absent_flagged": sorted(flagged),
        "absent_precision": hits / len(flagged) if flagged else None,
        "absent_recall": hits / len(truly_absent) if truly_absent else None,
        "absent_false_flags": len(flagged - truly_absent),
        "num_unknown": len(found.unknown),
        "groups": [
            {"group": g.number, "size": len(g.members), "names": [n for n, _ in g.names], "looks_like": g.looks_like}
            for g in found.groups
        ],
        "purity": purity,
        "purity_one_group": max(Counter(true).values()) / len(true) if true else None,
        "ami": adjusted_mutual_info_score(true, [group_of.get(i, 0) for i in found.unknown]) if len(true) > 1 else None,
        "named": named,
        "random_top1": 1 / len(allowed),
        "random_top3": min(3, len(allowed)) / len(allowed),
    }


def image_files(out: Path, test) -> ImageList:
    """The images of a toy set as files (once per demo folder), so that pages can show them."""
    paths = []
    for i, (label, index) in enumerate(test.samples):
        path = out / "images" / tw.CLASS_NAMES[label].replace(" ", "_") / f"{index}.png"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            test.images[i].save(path)
        paths.append(path)
    labels = [label for label, _ in test.samples]
    unknown = {label: tw.CLASS_NAMES[label] for label in set(labels) if label >= tw.NUM_KNOWN}
    return ImageList(paths, labels, labeled=True, unknown_names=unknown)


def write_run(
    out: Path,
    run_dir: Path,
    *,
    scenario: str,
    method: str,
    seed: int,
    result,
    train_size: int,
    test,
    pages: bool,
    discovery=None,
) -> None:

    names = tw.CLASS_NAMES[: tw.NUM_KNOWN]
    result.adapted.save(run_dir / "adapted.safetensors")
    report.write_history(run_dir, result.history)
    metrics = fit_record(
        run={
            "benchmark": "toyworld",
            "domain": tw.TARGET_STYLE,
            "scenario": scenario,
            "method": method,
            "seed": seed,
            "model": "ueo-toy-rn",
            "pretrained": "toyworld",
            "weights": "the toy CLIP shipped with ueo",
            "data": f"toyworld:{tw.TARGET_STYLE}:{scenario}",
            "data_fingerprint": None,
        },
        settings=asdict(result.config),
        class_names=names,
        result=result,
        num_adaptation_images=train_size,
        num_test_images=len(test),
    )
    if pages:
        metrics["predictions"] = report.write_predictions(
            run_dir,
            image_files(out, test),
            result.outputs["test"],
            class_names=names,
            threshold=result.threshold,
            zeroshot=result.zeroshot_outputs["test"],
        )
        if result.history:
            report.plot_loss(result.history, run_dir / "loss.png")
    if discovery is not None:
        write_discovery(run_dir, discovery)
        metrics["discovery"] = discovery.record()
    report.write_json(run_dir / "metrics.json", {k: v for k, v in metrics.items() if v is not None})
    if pages:
        write_run_report(run_dir)


def format_table(table: dict[str, dict[str, dict]]) -> str:
    lines = ["| scenario | method | PACC | AUROC | HM |", "|---|---|---|---|---|"]
    for scenario, methods in table.items():
        for method, row in methods.items():
            cells = [
                f"{100 * row[k]:.1f} ± {100 * row[k + '_std']:.1f}" if row[k] is not None else "-"
                for k in ("pacc", "auroc", "hm")
            ]
            lines.append(f"| {scenario} | {method} | " + " | ".join(cells) + " |")
    gaps = [gap_line(g) for scenario, methods in table.items() for g in compare(scenario, methods)]
    if gaps:
        lines += ["", "UEO − each other method, paired by seed (mean ± standard error):", "", *[f"- {g}" for g in gaps]]
    return "\n".join(lines) + "\n"


def compare(scenario: str, methods: dict[str, dict]) -> list[dict]:
    """UEO minus each other method in a scenario, paired by seed, per metric (PACC, AUROC, HM): {"scenario",
    "method", "metric", "mean", "se", "differs", "n"} (none with fewer than two seeds)."""
    if "ueo" not in methods or len(methods["ueo"]["seeds"]) < 2:
        return []
    gaps = []
    for other, row in methods.items():
        for key in ("pacc", "auroc", "hm") if other != "ueo" else ():
            pairs = [(u[key], o[key]) for u, o in zip(methods["ueo"]["seeds"], row["seeds"])]
            pairs = [(u, o) for u, o in pairs if u is not None and o is not None]
            if len(pairs) >= 2:
                gap = paired_difference([u for u, _ in pairs], [o for _, o in pairs])
                gaps.append({"scenario": scenario, "method": other, "metric": key, **gap})
    return gaps


def gap_line(gap: dict) -> str:
    verdict = "differs" if gap["differs"] else "does not differ (within 2 standard errors)"
    return (
        f"{gap['scenario']} UEO − {gap['method']} {gap['metric'].upper()}: {100 * gap['mean']:+.2f} ± "
        f"{100 * gap['se']:.2f} points over {gap['n']} seeds, {verdict}"
    )


def run_demo(
    out="demo-out",
    quiet: bool = False,
    seeds: Sequence[int] = (0,),
    epochs: int | None = None,
    scenarios: Sequence[str] = DEMO_SCENARIOS,
    methods: Sequence[str] = DEMO_METHODS,
) -> int:

    start = time.time()
    settings = {**DEMO_SETTINGS, **({"epochs": epochs} if epochs is not None else {})}
    out = Path(out)
    bundle = load_clip("ueo-toy-rn", pretrained="toyworld", device="cuda" if torch.cuda.is_available() else "cpu")
    print(
        "ueo demo: the shipped toy CLIP adapts to the unseen 'painting' style of the toy world "
        f"({tw.NUM_KNOWN} known classes, unknown shapes in the open scenarios; seeds {list(seeds)}).",
        flush=True,
    )
    table = {}
    for scenario in scenarios:
        table[scenario] = run_scenario(
            bundle, scenario, methods, seeds=seeds, out=out, progress=not quiet, settings=settings
        )
        for method, row in table[scenario].items():
            auroc = "  -  " if row["auroc"] is None else f"{100 * row['auroc']:5.1f}"
            hm = "  -  " if row["hm"] is None else f"{100 * row['hm']:5.1f}"
            print(f"{scenario:>5} {method:>9}  PACC {100 * row['pacc']:5.1f}  AUROC {auroc}  HM {hm}", flush=True)
        for gap in compare(scenario, table[scenario]):
            print(f"      {gap_line(gap)}", flush=True)
        truth = table[scenario].get("ueo", {}).get("discovery")
        if truth is not None:
            flagged, absent = ", ".join(truth["absent_flagged"]) or "none", ", ".join(truth["absent_truth"]) or "none"
            print(
                f"      seem absent: {flagged} (truly absent: {absent}); {len(truth['groups'])} group(s) of unknown images",
                flush=True,
            )
    report.write_json(out / "demo.json", table)
    write_text(out / "table.md", format_table(table))
    rows, _ = tables.collect([out / scenario for scenario in scenarios])
    write_table_page(tables.summarise(rows), out / "table.html")
    gaps = [gap for scenario in scenarios for gap in compare(scenario, table[scenario])]
    write_front_page(out, scenarios, table, tables.summarise(rows), seeds[0], gaps, tw.TARGET_STYLE)
    print(
        f"wrote {out / 'demo.json'}, {out / 'table.md'}, {out / 'table.html'} and one folder per run; "
        f"open {out / 'index.html'} ({time.time() - start:.0f}s)"
    )
    return 0
