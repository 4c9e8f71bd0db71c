"""The direct engine-vs-engine summary: gaps and the measured prompt-logprob semantics."""

from pathlib import Path

import numpy as np

from parity.categories import rl
from parity.categories._direct import summarize
from parity.engines.base import Sequence
from parity.run.results import EngineRun, ScenarioResult
from parity.run.scenario import parse_scenario

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"


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


class _Engine:
    """Answers every request with one two-token sequence per prompt; counts the calls."""

    def __init__(self):
        self.calls = []

    def generate(self, prompts, sampling):
        self.calls.append(sampling)
        return [
            Sequence(
                prompt_index=i,
                sample_index=0,
                prompt_token_ids=list(p) if isinstance(p, list) else [1, 2],
                token_ids=[3, 4],
                logprobs=[-1.0, -1.0],
                prompt_logprobs=[None, -0.5, -0.5, -1.0, -1.0],
            )
            for i, p in enumerate(prompts)
        ]


def _rl_result(tmp_path, extra=""):
    f = tmp_path / "rl.toml"
    f.write_text(extra + (SCENARIOS / "rl-v0-vs-v1-parity.toml").read_text())
    sc, problems = parse_scenario(f)
    assert problems == []
    return ScenarioResult(
        scenario=sc,
        runs={role: EngineRun(role, s) for role, s in sc.settings().items()},
    )


def test_the_direct_comparison_is_opt_in(tmp_path):
    """Without `direct = true` the second engine only samples (no teacher-forced pass, the
    quick suite's 72 s of V0); with it, it is teacher-forced on the first one's tokens."""
    for extra, forced in (("", False), ("direct = true\n", True)):
        res = _rl_result(tmp_path, extra)
        assert res.scenario.options["direct"] is forced
        first, second = _Engine(), _Engine()
        rl.CATEGORY.drive(first, res, "candidate", [[1, 2]] * 3, print)
        rl.CATEGORY.drive(second, res, "baseline", [[1, 2]] * 3, print)
        assert len(second.calls) == (2 if forced else 1)
        assert ("direct_forced" in res.runs["baseline"].extra) is forced


def test_direct_must_be_a_boolean(tmp_path):
    f = tmp_path / "rl.toml"
    f.write_text('direct = "yes"\n' + (SCENARIOS / "rl-v0-vs-v1-parity.toml").read_text())
    assert [fld for _, fld, _ in parse_scenario(f)[1]] == ["direct"]
