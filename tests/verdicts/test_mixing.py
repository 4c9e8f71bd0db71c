"""Tokens from mixed weights, counted from per-token weight states (parity.verdicts.mixing)."""

from __future__ import annotations

from parity.verdicts.mixing import MixCount, chunks, kinds


def test_kinds_of_a_request_kept_in_flight_across_a_bucketed_update():
    # 2 tokens under the old weights, one under the hybrid (1 of 2 buckets new), then new
    # weights over the KV the old and hybrid ones computed.
    assert kinds([0, 0, 1, 2, 2], 2) == ["old", "old", "hybrid", "new_on_old_kv", "new_on_old_kv"]


def test_kinds_of_requests_that_never_cross_the_update():
    assert kinds([0, 0, 0], 2) == ["old"] * 3
    assert kinds([2, 2], 2) == ["new"] * 2  # admitted after the last bucket


def test_a_request_admitted_during_the_update_is_mixed_throughout():
    # Its prefill ran under the hybrid: even the tokens under the new weights sit on that KV.
    assert kinds([1, 1, 2], 2) == ["hybrid", "hybrid", "new_on_old_kv"]


def test_one_bucket_paused_in_keep_mode_mixes_only_over_old_kv():
    assert kinds([0, 0, 1, 1], 1) == ["old", "old", "new_on_old_kv", "new_on_old_kv"]


def test_mix_count():
    count = MixCount(2)
    count.add([0, 0, 1, 2])
    count.add([2, 2])
    count.add([0, 0])
    assert count.mixed == 2 and count.total == 8
    assert count.by_kind == {"old": 4, "new": 2, "hybrid": 1, "new_on_old_kv": 1}
    assert count.by_state == {0: 4, 1: 1, 2: 3}
    assert (count.sequences, count.sequences_mixed) == (3, 1)
    assert count.to_dict()["by_state"] == {"0": 4, "1": 1, "2": 3}


def test_chunks_follow_the_step_that_computed_each_position():
    # Prompt of 3: positions 0-2 ran in the prefill (token 0's state); position 3 (token 0's
    # KV) in the step sampling token 1, ... ; the last token's KV is never computed.
    assert chunks(3, [0, 0, 1, 1, 2]) == [(0, 4, 0), (4, 6, 1), (6, 7, 2)]
    assert chunks(2, [3]) == [(0, 2, 3)]
    assert chunks(2, []) == []


def test_a_prompt_from_the_old_prefix_cache_mixes_under_other_weights():
    assert kinds([2, 2], 2, cached=16) == ["new_on_old_kv"] * 2
    assert kinds([0, 0], 2, cached=16) == ["old"] * 2
    # Its first cached positions ran under the old weights, the rest of the prompt in the prefill.
    assert chunks(20, [2, 2], cached=16) == [(0, 16, 0), (16, 21, 2)]
