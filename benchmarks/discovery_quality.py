"""How well does ueo tell what the class list misses, on the toy world where the truth is known?

For each scenario and seed: the demo's UEO adaptation (``ueo.experiments.demo.DEMO_SETTINGS``) of the painting style,
then ``ueo.discover`` on the adaptation set with the toy vocabulary (``ueo.experiments.toyworld.VOCABULARY``), scored
against the truth by ``ueo.experiments.demo.against_truth``:

* absent listed classes: precision and recall (truth: 12-15 in pda/opda; none in cda/oda, where every
  flag is a false one); trivial baseline "every class present": recall 0;
* groups: purity and adjusted mutual information with the true classes of the images decided unknown;
  trivial baseline "one group": the largest class's fraction, AMI 0;
* names: for each unknown class in the adaptation set (oda, opda: 16-19), whether the group holding most
  of its images has its true name first (top-1) or among its 3 names (top-3); trivial baseline: a name
  drawn at random from the allowed vocabulary (1/V and 3/V);
* the corrected list fed back: a second fit with ``suggested_classes`` as the class list, discovered again;
  the present classes it then flags absent (the list must not shrink round after round).

Every class's share and decided count is kept per run, so that other absent rules can be read off the same
runs (``--rules``: the false flags and recall of share < r x the median share, for each r).

    python benchmarks/discovery_quality.py --seeds 0 1 2 --out benchmarks/results/discovery_quality.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import ueo
from ueo.experiments import toyworld as tw
from ueo.experiments.demo import DEMO_SCENARIOS, DEMO_SETTINGS, PER_CLASS, against_truth


def mean(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--scenarios", nargs="+", default=list(DEMO_SCENARIOS))
    parser.add_argument("--out", default="benchmarks/results/discovery_quality.json")
    parser.add_argument("--rules", nargs="*", type=float, default=[0.3, 0.35, 0.4, 0.45, 0.5, 0.6])
    args = parser.parse_args()

    bundle = ueo.load_clip("ueo-toy-rn", pretrained="toyworld", device="cpu")
    names = tw.CLASS_NAMES[: tw.NUM_KNOWN]
    runs, started = [], time.time()
    for scenario in args.scenarios:
        train, _ = tw.scenario(scenario, per_class=PER_CLASS, test_per_class=1)
        labels = [label for label, _ in train.samples]
        for seed in args.seeds:
            result = ueo.fit(bundle, names, train, method="ueo", seed=seed, **DEMO_SETTINGS)
            found = ueo.discover(result, train, vocabulary=tw.VOCABULARY, seed=seed)
            truth = against_truth(found, labels, scenario)
            shares = [{"class": c.name, "share": c.share, "decided": c.decided} for c in found.absent]
            again = ueo.fit(bundle, found.suggested_classes, train, method="ueo", seed=seed, **DEMO_SETTINGS)
            second = ueo.discover(again, train, vocabulary=tw.VOCABULARY, seed=seed)
            present = {tw.CLASS_NAMES[k] for k in set(labels)}
            runs.append(
                {
                    "scenario": scenario,
                    "seed": seed,
                    **truth,
                    "shares": shares,
                    "accepted": found.accepted,
                    "round2_classes": found.suggested_classes,
                    "round2_absent": second.absent_classes,
                    "round2_shares": [{"class": c.name, "share": c.share, "decided": c.decided} for c in second.absent],
                    "round2_present_flagged": sorted(set(second.absent_classes) & present),
                }
            )
            print(f"{scenario} seed {seed}: {found.summary} Fed back: {second.summary}", flush=True)

    rows = []
    for scenario in args.scenarios:
        mine = [r for r in runs if r["scenario"] == scenario]
        named = [v for r in mine for v in r["named"].values()]
        rows.append(
            {
                "scenario": scenario,
                "runs": len(mine),
                "absent_precision": mean(r["absent_precision"] for r in mine),
                "absent_recall": mean(r["absent_recall"] for r in mine),
                "false_flags": mean(r["absent_false_flags"] for r in mine),
                "round2_present_flagged": mean(len(r["round2_present_flagged"]) for r in mine),
                "unknown_decided": mean(r["num_unknown"] for r in mine),
                "groups": mean(len(r["groups"]) for r in mine),
                "purity": mean(r["purity"] for r in mine),
                "purity_one_group": mean(r["purity_one_group"] for r in mine),
                "ami": mean(r["ami"] for r in mine),
                "top1": mean(float(v["top1"]) for v in named) if named else None,
                "top3": mean(float(v["top3"]) for v in named) if named else None,
                "random_top1": mine[0]["random_top1"],
                "random_top3": mine[0]["random_top3"],
            }
        )

    def pct(value):
        return "-" if value is None else f"{100 * value:.0f}"

    print(
        "\n| scenario | absent P / R (%) | false flags | unknown-decided | groups | purity (one group) | AMI |"
        " top-1 / top-3 names (random) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['scenario']} | {pct(r['absent_precision'])} / {pct(r['absent_recall'])} | {r['false_flags']:.1f} | "
            f"{r['unknown_decided']:.0f} | {r['groups']:.1f} | {pct(r['purity'])} ({pct(r['purity_one_group'])}) | "
            f"{r['ami']:.2f} | {pct(r['top1'])} / {pct(r['top3'])} ({r['random_top1'] * 100:.1f} / "
            f"{r['random_top3'] * 100:.1f}) |"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"summary": rows, "runs": runs, "seconds": round(time.time() - started)}, indent=1))
    for ratio in args.rules:
        flags = []
        for r in runs:
            median = float(np.median([s["share"] for s in r["shares"]]))
            flags.append(({s["class"] for s in r["shares"] if s["share"] < ratio * median}, set(r["absent_truth"])))
        false = np.mean([len(f - t) for f, t in flags])
        found = sum(len(f & t) for f, t in flags) / max(1, sum(len(t) for _, t in flags))
        print(f"share < {ratio:g} x median share: {false:.2f} false flags per run, recall {100 * found:.0f}%")
    print(f"wrote {out} ({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
