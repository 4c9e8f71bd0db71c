"""The direct engine-vs-engine summary: gaps and the measured prompt-logprob semantics."""

import numpy as np

from parity.categories._direct import summarize
from parity.engines.base import Sequence


def _seq(i, logprobs):
    return Sequence(
        prompt_index=i,
        sample_index=0,
        prompt_token_ids=[1, 2],
        token_ids=[3] * len(logprobs),
        logprobs=list(logprobs),
    )


def test_summary_names_the_closest_semantics_and_the_gap():
    other = [_seq(0, [-1.0, -2.0]), _seq(1, [-0.5])]
    forced = [[-1.1, -2.3], [-0.5]]
    raw = [np.array([-1.1, -2.3]), np.array([-0.5])]
    tempered = [np.array([-0.9, -2.0]), np.array([-0.4])]
    d = summarize(
        forced,
        other,
        "candidate",
        "baseline",
        {"raw": raw, "tempered": tempered, "processed": tempered},
        "processed_logprobs",
    )
    assert d["scorer_semantics"] == "raw"
    assert d["scorer_vs_reference"]["raw"] == 0.0
    assert np.isclose(d["abs_gap_mean"], (0.1 + 0.3 + 0.0) / 3)
    assert d["n_tokens"] == 3 and d["sampled_semantics"] == "processed_logprobs"


def test_summary_skips_missing_positions():
    other = [_seq(0, [-1.0, -2.0])]
    d = summarize(
        [[float("nan"), -2.5]],
        other,
        "baseline",
        "candidate",
        {"raw": [np.array([-1.0, -2.5])]},
        None,
    )
    assert d["n_tokens"] == 1 and np.isclose(d["abs_gap_mean"], 0.5)
    assert d["scorer_vs_reference"]["raw"] == 0.0
