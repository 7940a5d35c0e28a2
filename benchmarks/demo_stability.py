"""Is a comparison of methods on the toy world signal or noise?

For each scenario, method and seed this runs the demo's adaptation twice: as it is, and with uniform
noise of +-``--noise`` (default 5e-7, i.e. a 1e-6 wide perturbation) added to every train view. Training
that is chaotic at these settings moves its final metrics by points under such a perturbation; training
that is not moves them by far less. It then reports, per scenario, the UEO - InfoMax gap paired by seed,
with its standard error, and says whether it differs from zero (|mean| > 2 standard errors).

    python benchmarks/demo_stability.py --seeds 0 1 2 3 4 --out benchmarks/results/demo_stability.json

The settings default to the demo's (``ueo.experiments.demo.DEMO_SETTINGS``); --lr and --epochs try others.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import ueo
import ueo.views.fastpath
from ueo.experiments import toyworld as tw
from ueo.experiments.demo import DEMO_SETTINGS, PER_CLASS, TEST_PER_CLASS
from ueo.outputs.tables import paired_difference


class Perturbed:
    """Adds seeded uniform noise of +-``amplitude`` to every train view the fast path makes."""

    def __init__(self, amplitude: float):
        self.amplitude, self.real, self.calls = amplitude, ueo.views.fastpath.make_views, 0

    def __call__(self, crops, cuts, spec):
        views = self.real(crops, cuts, spec)
        if not any(c.size == (spec.size, spec.size) and c.at == (0, 0) for c in cuts):
            return views
        self.calls += 1
        generator = torch.Generator().manual_seed(self.calls)
        noise = (torch.rand(views.shape, generator=generator) * 2 - 1) * self.amplitude
        return views + noise.to(views.device)


def run(bundle, scenario, method, seed, settings, noise):
    train, test = tw.scenario(scenario, per_class=PER_CLASS, test_per_class=TEST_PER_CLASS)
    names = tw.CLASS_NAMES[: tw.NUM_KNOWN]
    original = ueo.views.fastpath.make_views
    if noise:
        ueo.views.fastpath.make_views = Perturbed(noise)
    try:
        result = ueo.fit(bundle, names, train, test=test, method=method, seed=seed, **settings)
    finally:
        ueo.views.fastpath.make_views = original
    return {k: result.metrics["adapted"][k] for k in ("pacc", "auroc", "hm")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", nargs="+", default=["cda", "pda", "oda", "opda"])
    parser.add_argument("--methods", nargs="+", default=["infomax", "ueo"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--lr", type=float, default=None, help="both learning rates (default: the demo's)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--noise", type=float, default=5e-7)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    settings = dict(DEMO_SETTINGS)
    if args.lr is not None:
        settings.update(lr_prompt=args.lr, lr_norm=args.lr)
    if args.epochs is not None:
        settings["epochs"] = args.epochs
    bundle = ueo.load_clip("ueo-toy-rn", pretrained="toyworld", device="cpu")
    report = {"settings": settings, "noise": args.noise, "seeds": args.seeds, "scenarios": {}}
    started = time.time()
    for scenario in args.scenarios:
        rows = {}
        for method in args.methods:
            base = [run(bundle, scenario, method, s, settings, 0.0) for s in args.seeds]
            moved = [run(bundle, scenario, method, s, settings, args.noise) for s in args.seeds]
            shift = {k: max(abs(a[k] - b[k]) for a, b in zip(base, moved)) for k in ("pacc", "auroc")}
            rows[method] = {"runs": base, "perturbed": moved, "max_shift": shift}
            print(
                f"{scenario:>5} {method:>8}: PACC "
                + " ".join(f"{100 * r['pacc']:.1f}" for r in base)
                + f"; under the perturbation PACC moves up to {100 * shift['pacc']:.2f}, AUROC "
                f"{100 * shift['auroc']:.2f} points",
                flush=True,
            )
        entry = {"methods": rows}
        if "ueo" in rows and "infomax" in rows:
            for key in ("pacc", "auroc"):
                gap = paired_difference(
                    [r[key] for r in rows["ueo"]["runs"]], [r[key] for r in rows["infomax"]["runs"]]
                )
                entry[f"ueo_minus_infomax_{key}"] = gap
                verdict = "differs from zero" if gap["differs"] else "does not differ from zero"
                print(
                    f"{scenario:>5} UEO - InfoMax {key.upper()}: {100 * gap['mean']:+.2f} ± {100 * gap['se']:.2f} "
                    f"(paired over {len(args.seeds)} seeds; {verdict})",
                    flush=True,
                )
        report["scenarios"][scenario] = entry
    report["seconds"] = round(time.time() - started, 1)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
