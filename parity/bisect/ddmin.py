"""Delta debugging (ddmin) over the differences between a good and a bad setting: a pure function
that finds a 1-minimal failing set of items and returns the full trace of the trials it ran."""

from __future__ import annotations

import enum
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BisectResult", "Outcome", "Trial", "ddmin", "is_one_minimal"]


class Outcome(enum.Enum):
    """The result of testing one configuration.

    PASS: the check holds. FAIL: the check diverges. UNRESOLVED: no verdict (the engine did not
    start or crashed, or repeated runs disagreed); ddmin treats it as "not failing".
    """

    PASS = "pass"
    FAIL = "fail"
    UNRESOLVED = "unresolved"


Item = Hashable
TestResult = Outcome | tuple[Outcome, Any]
TestFn = Callable[[frozenset], TestResult]


@dataclass(frozen=True)
class Trial:
    """One step of the trace: a configuration and its outcome.

    Attributes:
        index: position in the trace, 0-based, increasing.
        items: the items applied on top of the good setting, in input order (() = good).
        outcome: the combined outcome of the runs (UNRESOLVED when repeats disagree).
        cached: True when the outcome came from the cache and `test` was not called.
        runs: outcome of each call to `test` for this configuration (copied when cached).
        details: what each call returned besides its outcome (None when it returned only one).
    """

    index: int
    items: tuple
    outcome: Outcome
    cached: bool = False
    runs: tuple[Outcome, ...] = ()
    details: tuple[Any, ...] = ()

    @property
    def detail(self) -> Any:
        """The detail of the first run (e.g. a key metric), or None."""
        return self.details[0] if self.details else None


@dataclass
class BisectResult:
    """What `ddmin` found.

    Attributes:
        status: "found" (a 1-minimal failing set is in `minimal`), "good_does_not_pass",
            "bad_does_not_fail", or "unresolved" (the good or the bad setting gave no verdict).
        minimal: the 1-minimal failing items, in input order (() unless status is "found").
        trials: the full trace, including the confirmation trials of good and bad.
        n_tests: number of real calls to `test` (cache hits excluded, each repeat counted).
    """

    status: str
    minimal: tuple = ()
    trials: list[Trial] = field(default_factory=list)
    n_tests: int = 0

    @property
    def n_unresolved(self) -> int:
        """Distinct configurations without a verdict (the result is minimal w.r.t. the rest)."""
        return sum(1 for t in self.trials if t.outcome is Outcome.UNRESOLVED and not t.cached)


def _unpack(result: TestResult) -> tuple[Outcome, Any]:
    if isinstance(result, Outcome):
        return result, None
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], Outcome):
        return result
    raise TypeError(f"test must return an Outcome or (Outcome, detail), got {result!r}")


class _Runner:
    """Runs configurations through `test` with repeats, a cache and a trace."""

    def __init__(self, order: Sequence[Item], test: TestFn, repeats: int) -> None:
        self._rank = {item: i for i, item in enumerate(order)}
        self._test = test
        self._repeats = repeats
        self._cache: dict[frozenset, Trial] = {}
        self.trials: list[Trial] = []
        self.n_tests = 0

    def __call__(self, config: Iterable[Item]) -> Outcome:
        key = frozenset(config)
        hit = self._cache.get(key)
        if hit is not None:
            trial = Trial(len(self.trials), hit.items, hit.outcome, True, hit.runs, hit.details)
        else:
            runs, details = [], []
            for _ in range(self._repeats):
                outcome, detail = _unpack(self._test(key))
                self.n_tests += 1
                runs.append(outcome)
                details.append(detail)
                # One disagreeing or unresolved run already decides UNRESOLVED: spare the engine.
                if outcome is Outcome.UNRESOLVED or outcome is not runs[0]:
                    break
            agreed = len(runs) == self._repeats and all(r is runs[0] for r in runs)
            combined = runs[0] if agreed else Outcome.UNRESOLVED
            items = tuple(sorted(key, key=self._rank.__getitem__))
            trial = Trial(len(self.trials), items, combined, False, tuple(runs), tuple(details))
            self._cache[key] = trial
        self.trials.append(trial)
        return trial.outcome


def _split(items: list[Item], n: int) -> list[list[Item]]:
    """Cut `items` into `n` contiguous chunks whose sizes differ by at most one."""
    bounds = [len(items) * i // n for i in range(n + 1)]
    return [items[bounds[i] : bounds[i + 1]] for i in range(n)]


def _reduce(failing: list[Item], run: _Runner) -> list[Item]:
    """Classic ddmin loop (Zeller & Hildebrandt 2002) from a configuration known to fail."""
    n = 2
    while len(failing) >= 2:
        chunks = _split(failing, n)
        # Subsets first: a failing chunk shrinks the search fastest.
        hit = next((c for c in chunks if run(c) is Outcome.FAIL), None)
        if hit is not None:
            failing, n = hit, 2
            continue
        # With two chunks each complement is the other chunk, already tested above.
        if n > 2:
            complements = ([x for j, c in enumerate(chunks) if j != i for x in c] for i in range(n))
            hit = next((c for c in complements if run(c) is Outcome.FAIL), None)
            if hit is not None:
                failing, n = hit, n - 1
                continue
        if n >= len(failing):
            break  # every single item was removed once and nothing failed: 1-minimal
        n = min(len(failing), 2 * n)
    return failing


def ddmin(
    items: Iterable[Item],
    test: TestFn,
    *,
    repeats: int = 1,
    confirm: bool = True,
) -> BisectResult:
    """Find a 1-minimal set of items that still makes the check fail.

    A configuration is a frozenset of items applied on top of the good setting: the empty set is
    the good setting, all items together are the bad one. Every configuration is tested at most
    once (an outcome cache keyed on the frozenset); later look-ups appear in the trace as cached.
    UNRESOLVED counts as "not failing", so the result is 1-minimal with respect to the resolved
    outcomes: removing any single item from it never gave FAIL.

    Args:
        items: the differences between good and bad; hashable, duplicates dropped, order kept
            (chunks are cut in this order, so the trace is deterministic).
        test: called with a frozenset of items; returns an Outcome or (Outcome, detail). It
            should catch engine crashes itself and return UNRESOLVED; exceptions propagate.
        repeats: runs per configuration; all must agree, otherwise the outcome is UNRESOLVED
            (for checks that are noisy near their tolerance). Stops at the first disagreement.
        confirm: test good (must PASS) and bad (must FAIL) before searching, and stop with the
            matching status if not. With confirm=False both are assumed. With no items, good
            and bad are one setting, and it is always tested.

    Returns:
        A BisectResult with the status, the minimal items, the trace and the number of calls.

    Raises:
        ValueError: if repeats < 1.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    order = list(dict.fromkeys(items))
    run = _Runner(order, test, repeats)

    def stop(status: str) -> BisectResult:
        return BisectResult(status, (), run.trials, run.n_tests)

    if confirm or not order:
        good = run(())
        if good is not Outcome.PASS:
            return stop("unresolved" if good is Outcome.UNRESOLVED else "good_does_not_pass")
        bad = run(order)
        if bad is not Outcome.FAIL:
            return stop("unresolved" if bad is Outcome.UNRESOLVED else "bad_does_not_fail")
    minimal = _reduce(order, run)
    return BisectResult("found", tuple(minimal), run.trials, run.n_tests)


def is_one_minimal(minimal: Iterable[Item], test: TestFn) -> bool:
    """Check that `minimal` fails and that removing any single item from it does not fail.

    Args:
        minimal: the candidate set of items.
        test: the same predicate given to `ddmin` (called directly, no cache or repeats).

    Returns:
        True when test(minimal) is FAIL and no one-item-smaller set is FAIL.
    """
    full = frozenset(minimal)
    if _unpack(test(full))[0] is not Outcome.FAIL:
        return False
    return all(_unpack(test(full - {item}))[0] is not Outcome.FAIL for item in full)
