"""The rl findings of several runs (e.g. one per seed) side by side: outcome, estimate, 90%
interval, power at a true difference of 0 and the units for 80%, and the units for 80% at the
mean difference the runs measured (docs/measurements.md#rl-power).

    .venv/bin/python scripts/rl_power.py RUN_DIR [RUN_DIR ...] [--scenario rl-v0-vs-v1-parity]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from parity.verdicts import power


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--scenario", default="rl-v0-vs-v1-parity")
    a = ap.parse_args()
    by_finding: dict[str, list] = {}
    for run in a.runs:
        report = json.loads((run / "report.json").read_text())
        (sc,) = [s for s in report["scenarios"] if s["name"] == a.scenario]
        v = sc["verdict"]
        print(f"{run.name}: {v['outcome']} ({sc['sampling']})")
        for f in v["findings"]:
            t, p = f.get("test") or {}, power.of_test(f.get("test"))
            if p is None:
                continue
            by_finding.setdefault(f["name"], []).append((t, p))
            print(
                f"  {f['name']:<14} {f['outcome']:<12} d {t['estimate']:+.4f} "
                f"[{t['ci_low']:+.4f}, {t['ci_high']:+.4f}] margin {t['margin']:g} "
                f"sd/unit {p.sd_unit:.4f} power@0 {p.power:.3f} "
                f"units {p.units} -> {p.units_needed}"
            )
    print("over the runs: mean difference, units for 80% at it")
    for name, rows in by_finding.items():
        delta = float(np.mean([t["estimate"] for t, _ in rows]))
        sd = float(np.sqrt(np.mean([p.sd_unit**2 for _, p in rows])))
        t0, p0 = rows[0]
        z = power.z_of(float(t0["confidence"]))
        try:
            n = power.units_for(p0.kind, sd, p0.margin, z, bool(t0["paired"]), delta=delta)
        except ValueError:
            n = None
        print(f"  {name:<14} mean d {delta:+.4f} sd/unit {sd:.4f} units for 80% at it: {n}")


if __name__ == "__main__":
    main()
