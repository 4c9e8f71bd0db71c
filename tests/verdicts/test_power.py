"""Power of the equivalence and non-inferiority tests: the per-unit spread read back from a
real test's interval, and the predicted pass rate at a true difference of 0 checked against the
tests themselves, run on simulated data at the predicted sizes."""

import numpy as np
import pytest

from parity.report import html_cards
from parity.report.markdown import _scenario_section
from parity.verdicts import power
from parity.verdicts import stats as s


def paired(sd: float, n: int, seed: int, shift: float = 0.0):
    """Per-prompt values of two engines whose per-prompt difference has spread sd."""
    rng = np.random.default_rng(seed)
    base = rng.normal(1.0, 1.0, n)
    return base, base + shift + rng.normal(0.0, sd, n)


def tost(base, cand, margin, seed=0):
    return s.equivalence_tost(base, cand, margin, paired=True, n_resamples=400, seed=seed)


def test_per_unit_spread_is_read_back_from_the_interval():
    base, cand = paired(0.3, 200, seed=1)
    p = power.of_test(tost(base, cand, 0.2).to_dict())
    assert p.sd_unit == pytest.approx(np.std(cand - base, ddof=1), rel=0.15)
    assert p.units == 200 and p.unit == "prompt"  # paired: per-prompt pairs


def test_unpaired_spread_and_units_are_per_side():
    rng = np.random.default_rng(3)
    base, cand = rng.normal(0, 0.5, 300), rng.normal(0, 0.5, 300)
    t = s.non_inferiority(base, cand, 0.1, n_resamples=400)
    p = power.of_test(t.to_dict())
    assert p.sd_unit == pytest.approx(0.5, rel=0.15)
    # Unpaired: se^2 = 2 sd^2 / n; 80% at margin / se = 1.645 + 0.842.
    assert p.units_needed == pytest.approx(2 * (0.5 * (1.645 + 0.842) / 0.1) ** 2, rel=0.35)


@pytest.mark.parametrize("kind", ["equivalence", "non_inferiority"])
def test_predicted_power_matches_the_tests_pass_rate(kind):
    """At units_needed for 80% and a true difference of 0, the real test (bootstrap interval)
    passes in about 80% of simulated runs; at a quarter of them it passes far less often."""
    sd, margin = 0.3, 0.1
    z = power.z_of(0.9)
    needed = power.units_for(kind, sd, margin, z, paired=True)
    test = s.equivalence_tost if kind == "equivalence" else s.non_inferiority

    def pass_rate(n):
        runs = [paired(sd, n, seed=100 + i) for i in range(120)]
        return np.mean(
            [test(b, c, margin, paired=True, n_resamples=300).outcome == "pass" for b, c in runs]
        )

    assert pass_rate(needed) == pytest.approx(power.TARGET, abs=0.1)
    small = max(20, needed // 4)
    assert pass_rate(small) < power.TARGET - 0.2
    # What a run of that size predicts for itself.
    b, c = paired(sd, small, seed=7)
    assert power.of_test(test(b, c, margin, paired=True, n_resamples=300).to_dict()).power < 0.6


def test_power_formulas_at_their_limits():
    z = power.z_of(0.9)
    assert z == pytest.approx(1.6449, abs=1e-4)
    assert power.power_at_zero("equivalence", 1e-9, 0.2, z) == pytest.approx(1.0)
    assert power.power_at_zero("equivalence", 1.0, 0.2, z) == 0.0  # never inside +-margin
    assert power.power_at_zero("non_inferiority", 0.2 / z, 0.2, z) == pytest.approx(0.5)
    wide, narrow = (power.units_for("equivalence", 0.3, m, z, True) for m in (0.2, 0.1))
    assert narrow == pytest.approx(4 * wide, rel=0.05)


def test_threshold_and_missing_intervals_have_no_power():
    t = s.threshold(np.full(30, 0.01), 0.05).to_dict()
    assert power.of_test(t) is None
    base, cand = paired(0.3, 5, seed=2)  # too few units: inconclusive without an interval
    assert power.of_test(tost(base, cand, 0.2).to_dict()) is None
    assert power.of_findings([{"name": "x", "test": t}]) == {}
    assert power.line(power.of_findings([{"name": "x", "test": t}])) is None


def test_the_report_prints_one_power_line_per_scenario():
    base, cand = paired(0.3, 64, seed=4)
    findings = [
        {
            "name": "entropy",
            "kind": "equivalence",
            "value": 0.0,
            "limit": 0.2,
            "outcome": "pass",
            "test": tost(base, cand, 0.2).to_dict(),
        },
        {
            "name": "kl_k3",
            "kind": "non_inferiority",
            "value": 0.0,
            "limit": 0.005,
            "outcome": "pass",
            "test": s.non_inferiority(base * 0, cand * 0.001, 0.005, paired=True).to_dict(),
        },
    ]
    rec = {
        "name": "rl-x",
        "category": "rl",
        "description": "",
        "verdict": {"outcome": "pass", "message": "ok", "findings": findings},
        "model": "m",
        "sampling": {},
        "reference_head_dtype": "float32",
        "metrics": {},
        "engines": {},
    }
    (text,) = [x for x in _scenario_section(rec) if x.startswith("**Power**")]
    assert "entropy 1.00 (64 -> 18 prompts)" in text and "kl_k3 1.00 (64 -> " in text
    # report.json: the same numbers, machine-readable, and the HTML card's table from them
    table = power.of_findings(findings)
    assert set(table) == {"entropy", "kl_k3"}
    e = table["entropy"]
    assert (e["kind"], e["units"], e["units_needed"], e["unit"]) == (
        "equivalence",
        64,
        18,
        "prompt",
    )
    assert e["margin"] == 0.2 and e["power"] > 0.99 and e["target"] == power.TARGET
    assert _scenario_section({**rec, "power": table}) == _scenario_section(rec)
    page = html_cards._power({**rec, "power": table})
    assert "<h3>Power</h3>" in page and "64 prompts" in page and "18 prompts" in page
    assert html_cards._power({"verdict": {"findings": []}}) == ""


def test_power_at_a_true_difference_and_the_size_it_needs():
    """Sizing for a difference the engines really have: at units_for(delta) the power at delta
    is 80% (one tail), more than at a quarter of the size, and no size passes beyond the
    margin."""
    z = power.z_of(0.9)
    sd, margin, delta = 0.34, 0.2, -0.1
    n = power.units_for("equivalence", sd, margin, z, paired=True, delta=delta)
    se = sd / n**0.5
    assert power.power_at("equivalence", se, margin, z, delta) == pytest.approx(0.8, abs=0.01)
    assert power.power_at("equivalence", 2 * se, margin, z, delta) < 0.5
    assert power.power_at("equivalence", se, margin, z, 0.0) > 0.99
    with pytest.raises(ValueError):
        power.units_for("equivalence", sd, margin, z, paired=True, delta=0.25)
