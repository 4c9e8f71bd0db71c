"""Power of the equivalence and non-inferiority findings: how likely a run of this size is to
pass when the engines truly do not differ, and how many units would make that 80%.

From a finding's interval: its standard error se = (hi - lo) / (2 z), z = the normal quantile of
the interval's one-sided level (the 90% interval's ends are 95% one-sided bounds, z = 1.645),
hence the per-unit standard deviation (se * sqrt(n) paired, se / sqrt(1/n_base + 1/n_cand)
unpaired). At a true difference of 0 the estimate is N(0, se^2) and the test passes when:
  equivalence:      |d| + z se < margin      power = 2 Phi(margin / se - z) - 1
  non-inferiority:  d + z se < margin        power = Phi(margin / se - z)
Units for a target power: se(n) = sd / sqrt(n) (paired; 2 sd^2 / n per side unpaired) solved for
margin / se(n) = z + z_target, z_target = Phi^-1((1 + target) / 2) (equivalence, two tails) or
Phi^-1(target) (non-inferiority). Normal approximation of the bootstrap interval; the units are
those the test resamples (prompts when paired or clustered, else sequences).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from scipy.stats import norm

TARGET = 0.8  # the power a shipped "pass" is sized for (docs/methodology.md#power)
KINDS = ("equivalence", "non_inferiority")


@dataclass(frozen=True)
class Power:
    """The power of one test at a true difference of 0.

    Attributes:
        kind: "equivalence" or "non_inferiority".
        power: probability that a run of this size passes when the true difference is 0.
        units: the units the test had (per side; pairs when paired).
        units_needed: units (per side) for TARGET power.
        sd_unit: the per-unit standard deviation (of the per-prompt difference when paired).
        se: the standard error of the estimate, from the interval.
        margin: the test's margin.
        unit: "prompt" or "sequence".
    """

    kind: str
    power: float
    units: int
    units_needed: int
    sd_unit: float
    se: float
    margin: float
    unit: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def z_of(confidence: float) -> float:
    """The normal quantile of a two-sided interval's one-sided level (0.9 -> 1.645)."""
    return float(norm.ppf(0.5 + confidence / 2))


def power_at_zero(kind: str, se: float, margin: float, z: float) -> float:
    """Probability that the test passes when the true difference is 0 (see the module doc)."""
    return power_at(kind, se, margin, z, 0.0)


def power_at(kind: str, se: float, margin: float, z: float, delta: float) -> float:
    """Probability that the test passes when the true difference is `delta`: equivalence
    Phi((margin - delta) / se - z) - Phi((-margin - delta) / se + z), non-inferiority
    Phi((margin - delta) / se - z)."""
    if se <= 0:
        return 1.0 if abs(delta) < margin else 0.0
    high = float(norm.cdf((margin - delta) / se - z))
    if kind != "equivalence":
        return high
    return max(0.0, high - float(norm.cdf((-margin - delta) / se + z)))


def units_for(
    kind: str, sd: float, margin: float, z: float, paired: bool, target=TARGET, delta=0.0
) -> int:
    """Units (per side) for which the power reaches `target` at a true difference `delta`
    (0: both tails of an equivalence test count; otherwise the near one)."""
    tail = (1 + target) / 2 if kind == "equivalence" and delta == 0 else target
    room = margin - (abs(delta) if kind == "equivalence" else delta)
    if room <= 0:
        raise ValueError(f"no size passes at a true difference {delta} with margin {margin}")
    n = (sd * (z + float(norm.ppf(tail))) / room) ** 2
    return max(2, math.ceil(n if paired else 2 * n))


def of_test(test: dict[str, Any] | None) -> Power | None:
    """The power of a finding's test (TestResult.to_dict()), or None when it is not an
    equivalence or non-inferiority test or its interval is missing."""
    if not test or test.get("kind") not in KINDS:
        return None
    lo, hi, margin = test.get("ci_low"), test.get("ci_high"), test.get("margin")
    nb, nc = int(test.get("n_base") or 0), int(test.get("n_cand") or 0)
    values = (lo, hi, margin)
    if any(v is None or not math.isfinite(v) for v in values) or min(nb, nc) < 2:
        return None
    z = z_of(float(test.get("confidence") or 0.9))
    se = (hi - lo) / (2 * z)
    paired = bool(test.get("paired"))
    sd = se * math.sqrt(nc) if paired else se / math.sqrt(1 / nb + 1 / nc)
    kind = test["kind"]
    return Power(
        kind=kind,
        power=power_at_zero(kind, se, margin, z),
        units=nc if paired else min(nb, nc),
        units_needed=units_for(kind, sd, margin, z, paired),
        sd_unit=sd,
        se=se,
        margin=float(margin),
        unit=str(test.get("unit") or "sequence"),
    )


def of_findings(findings: list[dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """report.json's "power" of a scenario: for each equivalence or non-inferiority finding
    (dicts, as Verdict.to_dict() gives them) that has an interval, its Power as a dict (kind,
    power at a true difference of 0, units, units_needed for TARGET, sd_unit, se, margin, unit)
    with the target; empty when there is none."""
    out = {}
    for f in findings or []:
        p = of_test(f.get("test"))
        if p is not None:
            out[f["name"]] = {**p.to_dict(), "target": TARGET}
    return out


def line(table: dict[str, dict[str, Any]] | None) -> str | None:
    """One line for a report from of_findings(): each finding's power at a true difference of
    0 and the units it needs for TARGET; None when there is none."""
    parts = [
        f"{name} {p['power']:.2f} ({p['units']} -> {p['units_needed']} {p['unit']}s)"
        for name, p in (table or {}).items()
    ]
    if not parts:
        return None
    return (
        f"**Power** (chance to pass if the engines do not differ; units now -> for "
        f"{TARGET:.0%}): " + ", ".join(parts)
    )
