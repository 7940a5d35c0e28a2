"""Choosing without labels, measured: how much each label-free validator loses against the best candidate.

For each held-out style of the toy world (never seen in pretraining) x the 4 scenarios x the seeds, one
`ueo.fit(select="auto")` of the shipped toy CLIP keeps every candidate (zero-shot; each learning rate's
snapshots) with every validator's score on the adaptation set and its test metrics. From those records:

- regret: the best candidate's test PACC (and AUROC) minus the chosen one's, per validator and for the
  trivial rules (the default recipe = the middle learning rate's last epoch; always zero-shot; a random
  candidate, in expectation); its mean with a standard error, and its worst;
- how often the choice falls below zero-shot's test PACC;
- Spearman's rank correlation of each validator with test PACC over a run's candidates (mean over runs);
- each validator against the default recipe, paired by run (style, scenario, seed): the mean difference of
  regret with its standard error, "differs" when |mean| > 2 SE;
- leave one style out: the validator with the least mean regret on the other styles, and its regret on the one
  left out (how a default picked on some collections fares on another);
- the end-of-run check (IM, adapted = the default recipe's model against zero-shot): how often it says
  "adaptation did not help" when that is true, and when it is false;
- near-ties: runs where a validator's best two candidates are within 1e-6 (a choice a perturbation could flip).

    python benchmarks/selection.py --json benchmarks/results/selection.json
    python benchmarks/selection.py --analyse benchmarks/results/selection.json     # the tables again
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

import ueo
from ueo.experiments import toyworld as tw
from ueo.files import write_text

RULES = ("default recipe", "always zero-shot", "random candidate")
METRICS = ("pacc", "auroc")


def run_one(bundle, style, scenario, seed, args) -> dict:
    train, test = tw.scenario(
        scenario, per_class=args.per_class, test_per_class=args.test_per_class, seed=seed, style=style
    )
    names = tw.CLASS_NAMES[: tw.NUM_KNOWN]
    result = ueo.fit(
        bundle,
        names,
        train,
        test=test,
        seed=seed,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr_prompt=args.lr,
        lr_norm=args.lr,
        eval_train=False,
        select="auto",
        select_lrs=args.lrs,
    )
    return {"style": style, "scenario": scenario, "seed": seed, **result.selection}


def rule_choice(run: dict, rule: str, middle_lr: float, epochs: int) -> int | None:
    """The candidate a trivial rule takes (None: the random candidate, taken in expectation)."""
    candidates = run["candidates"]
    if rule == "always zero-shot":
        return 0
    if rule == "default recipe":
        return next(i for i, c in enumerate(candidates) if c["lr_prompt"] == middle_lr and c["epoch"] == epochs)
    return None


def test_value(candidate: dict, metric: str) -> float:
    """A candidate's test metric; a diverged one counts as chance (its model is unusable)."""
    value = (candidate.get("test") or {}).get(metric)
    return value if value is not None else (1 / tw.NUM_KNOWN if metric == "pacc" else 0.5)


def validator_choice(run: dict, name: str) -> int:
    scores = np.array([np.nan if c["scores"].get(name) is None else c["scores"][name] for c in run["candidates"]])
    return int(np.nanargmax(scores))


def near_tie(run: dict, name: str) -> bool:
    scores = sorted((c["scores"][name] for c in run["candidates"] if c["scores"].get(name) is not None), reverse=True)
    return len(scores) > 1 and scores[0] - scores[1] < 1e-6


def mean_se(values) -> tuple[float, float]:
    values = np.asarray(values, dtype=np.float64)
    se = values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return float(values.mean()), float(se)


def analyse(data: dict) -> dict:
    runs, settings = data["runs"], data["settings"]
    middle, epochs = settings["lrs"][len(settings["lrs"]) // 2], settings["epochs"]
    validators = list(runs[0]["candidates"][0]["scores"])
    regrets: dict[str, dict[str, list[float]]] = {}
    below, rho = {}, {}
    for name in (*validators, *RULES):
        regrets[name] = {m: [] for m in METRICS}
        below[name] = []
        for run in runs:
            candidates = run["candidates"]
            zeroshot = test_value(candidates[0], "pacc")
            chosen = validator_choice(run, name) if name in validators else rule_choice(run, name, middle, epochs)
            for metric in METRICS:
                values = [test_value(c, metric) for c in candidates]
                got = np.mean(values) if chosen is None else values[chosen]
                regrets[name][metric].append(100 * (max(values) - got))
            pacc = [test_value(c, "pacc") for c in candidates]
            got = np.mean(pacc) if chosen is None else pacc[chosen]
            below[name].append(got < zeroshot - 1e-9)
    for name in validators:
        values = []
        for run in runs:
            kept = [c for c in run["candidates"] if c["scores"].get(name) is not None]
            scores, pacc = [c["scores"][name] for c in kept], [test_value(c, "pacc") for c in kept]
            if len(set(scores)) > 1 and len(set(pacc)) > 1:
                values.append(spearmanr(scores, pacc).statistic)
        rho[name] = float(np.mean(values)) if values else math.nan
    table = {}
    base = np.array(regrets["default recipe"]["pacc"])
    for name in (*validators, *RULES):
        row = {}
        for metric in METRICS:
            mean, se = mean_se(regrets[name][metric])
            row[metric] = {"mean": mean, "se": se, "worst": float(np.max(regrets[name][metric]))}
        row["below_zeroshot"] = float(np.mean(below[name]))
        row["spearman_pacc"] = rho.get(name)
        if name != "default recipe":
            diff, se = mean_se(np.array(regrets[name]["pacc"]) - base)
            row["vs_default_recipe"] = {"mean": diff, "se": se, "differs": bool(abs(diff) > 2 * se)}
        if name in validators:
            row["near_ties"] = int(sum(near_tie(run, name) for run in runs))
        table[name] = row
    return {
        "table": table,
        "leave_one_style_out": leave_one_style_out(runs, validators, regrets),
        "check": check_accuracy(runs, middle, epochs),
        "zeroshot_pacc_by_style": {
            style: float(np.mean([100 * test_value(r["candidates"][0], "pacc") for r in runs if r["style"] == style]))
            for style in dict.fromkeys(r["style"] for r in runs)
        },
        "best_lr_by_style": best_lr_by_style(runs),
    }


def leave_one_style_out(runs, validators, regrets) -> dict:
    styles = list(dict.fromkeys(r["style"] for r in runs))
    found = {}
    for style in styles:
        inside = [i for i, r in enumerate(runs) if r["style"] != style]
        outside = [i for i, r in enumerate(runs) if r["style"] == style]
        picked = min(validators, key=lambda n: np.mean([regrets[n]["pacc"][i] for i in inside]))
        found[style] = {"picked": picked, "regret_pacc": float(np.mean([regrets[picked]["pacc"][i] for i in outside]))}
    return found


def check_accuracy(runs, middle, epochs) -> dict:
    """The check (IM of the default recipe's model against zero-shot's) against the truth (test PACC)."""
    said_true, said_false = [], []
    for run in runs:
        zeroshot = run["candidates"][0]
        adapted = run["candidates"][rule_choice(run, "default recipe", middle, epochs)]
        if adapted["scores"].get("im") is None:
            continue
        said = adapted["scores"]["im"] <= zeroshot["scores"]["im"]  # "adaptation did not help"
        truth = test_value(adapted, "pacc") <= test_value(zeroshot, "pacc")
        (said_true if truth else said_false).append(said)
    return {
        "did_not_help_runs": len(said_true),
        "said_when_true": float(np.mean(said_true)) if said_true else None,
        "helped_runs": len(said_false),
        "said_when_false": float(np.mean(said_false)) if said_false else None,
    }


def best_lr_by_style(runs) -> dict:
    found = {}
    for style in dict.fromkeys(r["style"] for r in runs):
        lrs = {}
        for run in (r for r in runs if r["style"] == style):
            for c in run["candidates"][1:]:
                lrs.setdefault(c["lr_prompt"], []).append(test_value(c, "pacc"))
        found[style] = max(lrs, key=lambda lr: np.mean(lrs[lr]))
    return found


def markdown(summary: dict) -> str:
    lines = [
        "| rule | PACC regret (mean ± se) | worst | AUROC regret | worst | below zero-shot | Spearman with PACC | vs default recipe |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in summary["table"].items():
        versus = row.get("vs_default_recipe")
        said = (
            f"{versus['mean']:+.1f} ± {versus['se']:.1f} ({'differs' if versus['differs'] else 'does not differ'})"
            if versus
            else ""
        )
        rho = row["spearman_pacc"]
        lines.append(
            f"| {name} | {row['pacc']['mean']:.1f} ± {row['pacc']['se']:.1f} | {row['pacc']['worst']:.1f} | "
            f"{row['auroc']['mean']:.1f} ± {row['auroc']['se']:.1f} | {row['auroc']['worst']:.1f} | "
            f"{100 * row['below_zeroshot']:.0f}% | {'' if rho is None or math.isnan(rho) else f'{rho:+.2f}'} | {said} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--styles", nargs="+", default=tw.HELD_OUT_STYLES)
    parser.add_argument("--scenarios", nargs="+", default=list(tw.SCENARIOS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--lrs", nargs="+", type=float, default=[1e-3, 1e-2, 1e-1])
    parser.add_argument("--lr", type=float, default=1e-2, help="the given learning rate (the default recipe's)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--per-class", type=int, default=24)
    parser.add_argument("--test-per-class", type=int, default=25)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--analyse", type=Path, help="print the tables of a results file, run nothing")
    args = parser.parse_args()
    if args.analyse:
        data = json.loads(args.analyse.read_text())
        summary = analyse(data)
        print(markdown(summary))
        print(json.dumps({k: v for k, v in summary.items() if k != "table"}, indent=1))
        return 0
    bundle = ueo.load_clip("ueo-toy-rn", pretrained="toyworld", device="cpu")
    settings = {k: getattr(args, k) for k in ("lrs", "lr", "epochs", "batch_size", "per_class", "test_per_class")}
    data = {"settings": settings, "runs": []}
    start = time.perf_counter()
    for style in args.styles:
        for scenario in args.scenarios:
            for seed in args.seeds:
                data["runs"].append(run_one(bundle, style, scenario, seed, args))
                chosen = data["runs"][-1]["candidates"][data["runs"][-1]["chosen"]]
                print(
                    f"{style} {scenario} seed {seed}: chose {chosen['lr_prompt']} ep {chosen['epoch']} "
                    f"({time.perf_counter() - start:.0f} s)",
                    flush=True,
                )
    data["summary"] = analyse(data)
    data["seconds"] = round(time.perf_counter() - start, 1)
    print(markdown(data["summary"]))
    if args.json:
        write_text(args.json, json.dumps(data, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
