"""ddmin against synthetic predicates: culprits, interacting pairs, unresolved and noisy trials."""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter

import pytest

from parity.bisect.ddmin import BisectResult, Outcome, Trial, ddmin, is_one_minimal

PASS, FAIL, UNRESOLVED = Outcome.PASS, Outcome.FAIL, Outcome.UNRESOLVED


def fails_with(*culprits):
    """A predicate that FAILs exactly when every culprit is in the configuration."""
    needed = frozenset(culprits)
    return lambda config: FAIL if needed <= config else PASS


class Counting:
    """Wraps a predicate and counts the calls made for each configuration."""

    def __init__(self, predicate):
        self.predicate = predicate
        self.calls: Counter[frozenset] = Counter()

    def __call__(self, config):
        self.calls[config] += 1
        return self.predicate(config)


# --- single culprit -------------------------------------------------------------------------


# Counted by hand from the split order: halves, then quarters, then single items; a culprit
# further right needs one extra passing subset at each level before the failing one.
@pytest.mark.parametrize("culprit,expected", list(enumerate([5, 6, 6, 7, 6, 7, 7, 8])))
def test_single_culprit_among_8_every_position(culprit, expected):
    test = Counting(fails_with(culprit))
    result = ddmin(range(8), test)
    assert result.status == "found"
    assert result.minimal == (culprit,)
    assert result.n_tests == expected == sum(test.calls.values())
    assert is_one_minimal(result.minimal, test.predicate)


@pytest.mark.parametrize("n", [2, 3, 8, 16, 64, 100])
def test_single_culprit_trial_bound(n):
    for culprit in range(n):
        result = ddmin(range(n), fails_with(culprit))
        assert result.minimal == (culprit,)
        # Two confirmations plus at most two tests per halving.
        assert result.n_tests <= 2 + 2 * math.ceil(math.log2(n))


def test_single_culprit_exact_trace():
    result = ddmin(range(8), fails_with(5))
    seen = [(t.items, t.outcome) for t in result.trials]
    assert seen == [
        ((), PASS),
        (tuple(range(8)), FAIL),
        ((0, 1, 2, 3), PASS),
        ((4, 5, 6, 7), FAIL),
        ((4, 5), FAIL),
        ((4,), PASS),
        ((5,), FAIL),
    ]


def test_real_setting_items_keep_input_order():
    items = [
        ("engine_args.enable_prefix_caching", True),
        ("engine_args.enforce_eager", False),
        ("env.VLLM_USE_V1", "1"),
        ("engine_args.dtype", "bfloat16"),
    ]
    result = ddmin(items, fails_with(items[2]))
    assert result.minimal == (items[2],)
    assert result.trials[1].items == tuple(items)  # input order, not sorted


# --- interacting items ----------------------------------------------------------------------


def test_interacting_pair_reported_together():
    test = Counting(fails_with(2, 5))
    result = ddmin(range(8), test)
    assert result.status == "found"
    assert result.minimal == (2, 5)
    assert is_one_minimal(result.minimal, test.predicate)
    assert result.n_tests == 18
    assert len(result.trials) == 30
    assert sum(t.cached for t in result.trials) == 12


@pytest.mark.parametrize("a,b", list(itertools.combinations(range(8), 2)))
def test_every_pair_found(a, b):
    result = ddmin(range(8), fails_with(a, b))
    assert result.minimal == (a, b)
    assert result.n_tests <= 22


def test_triple_among_16():
    result = ddmin(range(16), fails_with(1, 8, 15))
    assert result.minimal == (1, 8, 15)
    assert is_one_minimal(result.minimal, fails_with(1, 8, 15))


def test_either_of_two_culprits_gives_one_of_them():
    # Two independent causes: a 1-minimal answer is either one alone, not both.
    result = ddmin(range(8), lambda c: FAIL if {1, 6} & c else PASS)
    assert result.minimal == (1,)


def test_random_predicates_are_one_minimal():
    rng = random.Random(0)
    n_with_unresolved = 0
    for _ in range(300):
        n = rng.randint(1, 12)
        causes = [frozenset(rng.sample(range(n), rng.randint(1, min(3, n)))) for _ in range(2)]
        # The engine crashes with both `crash` items unless `fix` is also set (bad has all three).
        crash = frozenset(rng.sample(range(n), 2)) if n > 2 else frozenset({-1})
        fix = rng.randrange(n)

        def test(config, causes=causes, crash=crash, fix=fix):
            if crash <= config and fix not in config:
                return UNRESOLVED
            return FAIL if any(c <= config for c in causes) else PASS

        result = ddmin(range(n), test)
        assert result.status == "found"
        assert is_one_minimal(result.minimal, test)
        assert list(result.minimal) == sorted(result.minimal)
        n_with_unresolved += result.n_unresolved > 0
    assert n_with_unresolved > 40  # the unresolved path is really exercised


# --- unresolved trials ----------------------------------------------------------------------


def test_unresolved_configs_are_not_failing():
    # Item 3 causes the failure, but the engine only starts with 3 when 7 is also set.
    def test(config):
        if 3 in config and 7 not in config:
            return UNRESOLVED
        return FAIL if 3 in config else PASS

    result = ddmin(range(8), test)
    assert result.status == "found"
    assert result.minimal == (3, 7)  # minimal w.r.t. resolved outcomes: {3} alone is UNRESOLVED
    assert is_one_minimal(result.minimal, test)
    assert result.n_tests == 16
    assert result.n_unresolved == 3  # {0,1,2,3}, {2,3}, {3}


def test_unresolved_elsewhere_does_not_hide_culprit():
    def test(config):
        if {0, 1} <= config and 6 not in config:
            return UNRESOLVED
        return FAIL if 6 in config else PASS

    result = ddmin(range(8), test)
    assert result.minimal == (6,)
    assert result.n_tests == 7  # good, bad, 0-3 (UNRESOLVED), 4-7, 4-5, 6-7, 6
    assert result.n_unresolved == 1


def test_all_intermediate_configs_unresolved_keeps_bad():
    # Nothing between good and bad gives a verdict: the whole difference is the answer.
    result = ddmin(range(4), lambda c: PASS if not c else FAIL if len(c) == 4 else UNRESOLVED)
    assert result.status == "found"
    assert result.minimal == (0, 1, 2, 3)
    assert result.n_tests == 2 + 2 + 4 + 4  # confirmations, halves, quarters, complements


# --- repeats and noise ----------------------------------------------------------------------


def noisy(culprit, flaky):
    """Culprit fails; configs with `flaky` but without the culprit alternate FAIL, PASS, ..."""
    calls: Counter[frozenset] = Counter()

    def test(config):
        calls[config] += 1
        if culprit in config:
            return FAIL
        if flaky in config:
            return FAIL if calls[config] % 2 else PASS
        return PASS

    return test


def test_noise_misleads_a_single_run():
    # Negative control: without repeats the flaky item's first FAIL is taken at face value.
    assert ddmin(range(8), noisy(culprit=6, flaky=1)).minimal == (1,)


def test_repeats_turn_disagreement_into_unresolved():
    result = ddmin(range(8), noisy(culprit=6, flaky=1), repeats=3)
    assert result.status == "found"
    assert result.minimal == (6,)
    flaky = [t for t in result.trials if t.outcome is UNRESOLVED]
    assert flaky and all(1 in t.items and 6 not in t.items for t in flaky)
    # The second run already disagrees, so the third is never made.
    assert all(t.runs == (FAIL, PASS) for t in flaky)
    resolved = [t for t in result.trials if t.outcome is not UNRESOLVED and not t.cached]
    assert all(len(t.runs) == 3 for t in resolved)
    assert result.n_tests == 3 * len(resolved) + 2 * len(flaky)


def test_repeats_stop_at_first_unresolved_run():
    test = Counting(lambda c: UNRESOLVED if c == {0} else FAIL if 1 in c else PASS)
    result = ddmin(range(2), test, repeats=3)
    assert result.minimal == (1,)
    assert test.calls[frozenset({0})] == 1
    assert test.calls[frozenset({1})] == 3


def test_noisy_bad_setting_is_unresolved():
    result = ddmin(range(4), noisy(culprit=99, flaky=2), repeats=2)
    assert result.status == "unresolved"
    assert result.minimal == ()
    assert [t.outcome for t in result.trials] == [PASS, UNRESOLVED]


def test_repeats_must_be_positive():
    with pytest.raises(ValueError):
        ddmin(range(4), fails_with(1), repeats=0)


# --- confirmation of good and bad -----------------------------------------------------------


def test_good_does_not_pass_stops_before_testing_bad():
    test = Counting(lambda c: FAIL)
    result = ddmin(range(4), test)
    assert result.status == "good_does_not_pass"
    assert result.minimal == ()
    assert [t.items for t in result.trials] == [()]
    assert result.n_tests == 1


def test_bad_does_not_fail():
    result = ddmin(range(4), lambda c: PASS)
    assert result.status == "bad_does_not_fail"
    assert [t.items for t in result.trials] == [(), (0, 1, 2, 3)]
    assert result.n_tests == 2


@pytest.mark.parametrize(
    "test,status",
    [
        (lambda c: UNRESOLVED, "unresolved"),
        (lambda c: UNRESOLVED if c else PASS, "unresolved"),
    ],
)
def test_unresolved_confirmation(test, status):
    assert ddmin(range(4), test).status == status


def test_confirm_false_skips_the_two_confirmations():
    with_confirm = ddmin(range(8), fails_with(5))
    without = ddmin(range(8), fails_with(5), confirm=False)
    assert without.minimal == (5,)
    assert without.n_tests == with_confirm.n_tests - 2
    assert without.trials[0].index == 0 and without.trials[0].items == (0, 1, 2, 3)


def test_empty_items():
    passing = ddmin([], lambda c: PASS)
    assert passing.status == "bad_does_not_fail"
    assert passing.n_tests == 1  # good and bad are the same setting: one real test
    assert [t.cached for t in passing.trials] == [False, True]
    assert ddmin([], lambda c: FAIL).status == "good_does_not_pass"
    assert ddmin([], lambda c: PASS, confirm=False).status == "bad_does_not_fail"


def test_single_item():
    result = ddmin(["x"], fails_with("x"))
    assert result.minimal == ("x",)
    assert result.n_tests == 2


# --- cache and trace ------------------------------------------------------------------------


@pytest.mark.parametrize("repeats", [1, 3])
def test_each_configuration_tested_once(repeats):
    test = Counting(fails_with(1, 4, 6))
    result = ddmin(range(8), test, repeats=repeats)
    assert result.minimal == (1, 4, 6)
    assert set(test.calls.values()) == {repeats}
    assert result.n_tests == repeats * len(test.calls)
    assert len(test.calls) == sum(not t.cached for t in result.trials)
    assert any(t.cached for t in result.trials)


def test_cached_trial_copies_the_original():
    result = ddmin(range(8), fails_with(2, 5))
    first = {}
    for t in result.trials:
        if t.cached:
            orig = first[t.items]
            assert (t.outcome, t.runs, t.details) == (orig.outcome, orig.runs, orig.details)
        else:
            assert t.items not in first
            first[t.items] = t


def test_trace_indices_and_items():
    result = ddmin(["a", "b", "c", "d", "e"], fails_with("b", "e"))
    assert result.minimal == ("b", "e")
    assert [t.index for t in result.trials] == list(range(len(result.trials)))
    order = "abcde"
    for t in result.trials:
        assert isinstance(t, Trial)
        assert list(t.items) == sorted(t.items, key=order.index)
        assert t.outcome is (FAIL if {"b", "e"} <= set(t.items) else PASS)


def test_detail_is_recorded():
    def test(config):
        kl = 0.5 if 3 in config else 0.001
        return (FAIL if kl > 0.01 else PASS), {"kl_k3_mean": kl}

    result = ddmin(range(4), test, repeats=2)
    assert result.minimal == (3,)
    assert result.trials[1].detail == {"kl_k3_mean": 0.5}
    assert result.trials[1].details == ({"kl_k3_mean": 0.5}, {"kl_k3_mean": 0.5})
    assert result.trials[0].detail == {"kl_k3_mean": 0.001}


def test_bad_return_type_raises():
    with pytest.raises(TypeError):
        ddmin(range(4), lambda c: True)


def test_is_one_minimal():
    test = fails_with(2, 5)
    assert is_one_minimal((2, 5), test)
    assert not is_one_minimal((2, 5, 6), test)  # 6 can go
    assert not is_one_minimal((2,), test)  # does not fail
    assert isinstance(ddmin(range(3), test), BisectResult)
