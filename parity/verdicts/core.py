"""Findings and verdicts: the one vocabulary every category judges in.

A finding is a test that can fail: it is only built by the constructors below, one per kind
(a bound, non-inferiority, equivalence, equality, a count limit). A value that is only shown is
a metric and goes into the scenario's detail, never into a finding. A precondition (enough
data, hypotheses far enough apart) is not a finding: when it is not met the verdict is
inconclusive, because the data cannot decide.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

OUTCOMES = ("pass", "fail", "inconclusive", "unresolved")
# Each kind of finding and how it can fail.
KINDS = {
    "bound": "the value (or the upper end of its confidence interval) exceeds the limit",
    "non_inferiority": "the candidate is worse than the baseline by more than the margin",
    "equivalence": "the difference lies outside +-margin",
    "equality": "the two values differ",
    "count_limit": "more events were counted than allowed",
}


@dataclass
class Finding:
    """One judged quantity: its kind, measured value, limit, outcome and the test behind it."""

    name: str
    kind: str
    outcome: str
    value: Any
    limit: Any
    test: dict[str, Any] | None = None
    note: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(
                f"finding {self.name!r}: kind {self.kind!r} is not one of {', '.join(KINDS)}"
            )
        if self.outcome not in ("pass", "fail", "inconclusive"):
            raise ValueError(f"finding {self.name!r}: outcome {self.outcome!r}")


@dataclass
class Precondition:
    """Something the data must show before the findings mean anything (enough tokens, two
    hypotheses far enough apart). Unmet: the verdict is inconclusive, never a pass."""

    name: str
    met: bool
    value: Any
    needed: Any
    note: str = ""


@dataclass
class Verdict:
    """The outcome of one scenario, with the diagnosis (a stable code) and a message that names
    the fix when the check fails."""

    outcome: str
    diagnosis: str | None
    message: str
    findings: list[Finding] = field(default_factory=list)
    preconditions: list[Precondition] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def recombine(self) -> None:
        """Recompute the outcome from findings and preconditions (after adding either)."""
        if self.outcome != "unresolved":
            self.outcome = combine(self.findings, self.preconditions)


def combine(findings: list[Finding], preconditions: list[Precondition] = ()) -> str:
    """fail if any finding fails; else inconclusive if any finding is or any precondition is
    unmet, or there is no finding at all; else pass."""
    outcomes = {f.outcome for f in findings}
    if "fail" in outcomes:
        return "fail"
    if "inconclusive" in outcomes or not findings or not all(p.met for p in preconditions):
        return "inconclusive"
    return "pass"


def unresolved(diagnosis: str, message: str) -> Verdict:
    """The engine (or the judging) failed: nothing was decided."""
    return Verdict("unresolved", diagnosis, message)


def within_outer(verdict: Verdict, within: dict[str, float]) -> bool:
    """Every failed finding has an outer bound in `within` and its value is within it."""
    failed = [f for f in verdict.findings if f.outcome == "fail"]
    return all(
        f.name in within and isinstance(f.value, (int, float)) and f.value <= within[f.name]
        for f in failed
    )


# ----------------------------------------------------------------------------- constructors


def from_test(name: str, test, note: str = "") -> Finding:
    """A finding from a stats.TestResult (threshold -> bound, non_inferiority, equivalence)."""
    kind = "bound" if test.kind == "threshold" else test.kind
    return Finding(
        name, kind, test.outcome, test.estimate, test.margin, test.to_dict(), note or test.reason
    )


def bound(name: str, value: float, limit: float, note: str = "") -> Finding:
    """value <= limit, on a point value (a tail quantile, say). NaN (nothing measured) is
    inconclusive; +inf fails."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return Finding(name, "bound", "inconclusive", value, limit, note=note or "not measured")
    return Finding(name, "bound", "pass" if value <= limit else "fail", value, limit, note=note)


def count_limit(
    name: str, count: int, limit: int, total: int | None = None, note: str = ""
) -> Finding:
    """At most `limit` events (of `total`)."""
    test = {"count": count, "limit": limit, "total": total}
    return Finding(
        name, "count_limit", "pass" if count <= limit else "fail", count, limit, test, note
    )


def equality(
    name: str, a: Any, b: Any, same: Callable[[Any, Any], bool] | None = None, note: str = ""
) -> Finding:
    """a equals b (by `same`, default ==). A side that could not be read (None) is
    inconclusive: an unknown value is never taken as equal."""
    if a is None or b is None:
        return Finding(
            name, "equality", "inconclusive", a, b, note=note or "one side could not be read"
        )
    ok = same(a, b) if same is not None else a == b
    return Finding(name, "equality", "pass" if ok else "fail", a, b, note=note)


def at_least(name: str, value: float, needed: float, note: str = "") -> Precondition:
    """A precondition: value >= needed (NaN is unmet)."""
    met = (
        value is not None
        and not (isinstance(value, float) and math.isnan(value))
        and value >= needed
    )
    return Precondition(name, bool(met), value, needed, "" if met else note)


def expected(
    verdict: Verdict,
    expect: str,
    expect_diagnosis: str | None,
    within: dict[str, float] | None = None,
) -> bool:
    """Whether a verdict is what the scenario expects: a pass for an ordinary scenario; for a
    negative control (expect = "fail") a failure with the expected diagnosis; for a measurement
    of the hardware (expect = "report") a pass, or a failure of only the findings `within`
    names, each with its value within that outer bound (no outer bound: none is accepted)."""
    if expect == "pass":
        return verdict.outcome == "pass"
    if expect == "report":
        return verdict.outcome == "pass" or (
            verdict.outcome == "fail" and within_outer(verdict, within or {})
        )
    return verdict.outcome == "fail" and (
        expect_diagnosis is None or verdict.diagnosis == expect_diagnosis
    )
