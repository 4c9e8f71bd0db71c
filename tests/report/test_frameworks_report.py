"""The trainer frameworks' numbers in `parity check`'s reports: taken from the tokens the
reference scored (parity.run.tokens.scored), put on each scored role, the gates asked for made
findings of the candidate's verdict (fail and pass), and rendered in report.md and report.html."""

from types import SimpleNamespace

import numpy as np
import pytest

from parity.report import frameworks, html_cards, markdown
from parity.run import tokens
from parity.verdicts import core
from parity.verdicts import frameworks as fw


def _sequences(shift: float, ref_scores: dict, first: int = 0) -> list:
    """40 sequences of 10 tokens (prompts first..first+39) whose engine logprobs sit `shift`
    above or below (alternately) the reference's, their scores recorded into ref_scores."""
    rng = np.random.default_rng(first)
    seqs = []
    for i in range(first, first + 40):
        trainer = -0.5 - rng.gamma(0.4, 1.5, 10)
        engine = trainer + np.where(np.arange(10) % 2 == 0, shift, -shift)
        seq = SimpleNamespace(prompt_token_ids=[i], token_ids=list(range(10)), logprobs=engine)
        score = SimpleNamespace(processed_logprob=trainer, entropy=np.full(10, 2.0))
        ref_scores[(1.0, 1.0, 0, (i,), tuple(range(10)))] = [("float32", "external", score)]
        seqs.append(seq)
    return seqs


def _result(shift: float, gates=(), baseline_shift: float | None = None):
    """One scenario, a candidate of 40 sequences (_sequences, `shift`), and a baseline the
    reference never scored, or (baseline_shift) 40 other sequences it scored."""
    sampling = SimpleNamespace(temperature=1.0, top_p=1.0, top_k=0)
    ref_scores = {}
    seqs = _sequences(shift, ref_scores)
    other = [SimpleNamespace(prompt_token_ids=[99], token_ids=[1], logprobs=[-1.0])]
    if baseline_shift is not None:
        other = _sequences(baseline_shift, ref_scores, first=100)
    runs = {
        "candidate": SimpleNamespace(sequences=seqs, effective_config={}),
        "baseline": SimpleNamespace(sequences=other, effective_config={}),
    }
    return SimpleNamespace(
        scenario=SimpleNamespace(sampling=sampling, head_dtype="float32", gates=list(gates)),
        runs=runs,
        ref_scores=ref_scores,
        verdict=core.Verdict("pass", None, "engine logprobs match", [core.bound("x", 0.0, 1.0)]),
        detail={"n_tokens": 400},
    )


def test_scored_takes_the_reference_scores_of_each_sequence():
    res = _result(0.01)
    trainer, engine, entropy = tokens.scored(res, res.runs["candidate"])
    assert len(trainer) == len(engine) == len(entropy) == 40
    assert np.allclose(engine[0] - trainer[0], [0.01, -0.01] * 5)
    assert tokens.scored(res, res.runs["baseline"]) == ([], [], [])


def test_attach_shows_numbers_and_gates_only_when_asked():
    res = _result(0.01)
    frameworks.attach(SimpleNamespace(results=[res]))
    n = res.detail["frameworks"]
    assert list(n) == ["candidate"] and n["candidate"]["n_tokens"] == 400
    assert n["candidate"]["nemo-rl"]["token_mult_prob_error"] == pytest.approx(np.exp(0.01))
    assert [f.name for f in res.verdict.findings] == ["x"] and res.verdict.outcome == "pass"


def test_gate_asked_for_fails_the_verdict_and_says_which():
    res = _result(0.2)  # exp(0.2) = 1.22 > 1.05
    frameworks.attach(SimpleNamespace(results=[res]), ["nemo-rl"])
    v = res.verdict
    assert v.outcome == "fail" and v.diagnosis == frameworks.DIAGNOSIS
    assert "nemo_rl_token_mult_prob_error 1.221" in v.message
    assert {f.name for f in v.findings} == {"x", *fw.FINDINGS["nemo-rl"]}
    assert res.detail["framework_gates"] == ["nemo-rl"]


def test_scenario_gates_pass_on_close_logprobs():
    res = _result(0.01, gates=["verl", "prime-rl"])
    frameworks.attach(SimpleNamespace(results=[res]))
    assert res.verdict.outcome == "pass" and res.verdict.diagnosis is None
    assert {f.name for f in res.verdict.findings} == {
        "x",
        "verl_health_warnings",
        "prime_rl_mismatch_kl",
    }


def test_gates_judge_a_scored_baseline_too():
    # An rl pair: both engines scored against the trainer. The baseline 0.2 away misses
    # NeMo-RL's gate (exp(0.2) = 1.22 > 1.05) while the candidate meets it: the verdict fails
    # on the baseline's finding, named so; close baselines pass.
    res = _result(0.01, baseline_shift=0.2)
    frameworks.attach(SimpleNamespace(results=[res]), ["nemo-rl"])
    n = res.detail["frameworks"]
    assert set(n) == {"candidate", "baseline"} and n["baseline"]["n_tokens"] == 400
    v = res.verdict
    assert v.outcome == "fail" and v.diagnosis == frameworks.DIAGNOSIS
    failed = [f.name for f in v.findings if f.outcome == "fail"]
    assert failed == ["baseline.nemo_rl_token_mult_prob_error", "baseline.nemo_rl_gen_kl_error"]
    assert "baseline.nemo_rl_token_mult_prob_error 1.221" in v.message
    assert "baseline engine: NeMo-RL" in v.message
    assert set(fw.declared(("candidate", "baseline"))) >= {f.name for f in v.findings} - {"x"}
    res = _result(0.01, baseline_shift=0.01)
    frameworks.attach(SimpleNamespace(results=[res]), ["nemo-rl", "verl"])
    assert res.verdict.outcome == "pass"
    assert "baseline.verl_health_warnings" in {f.name for f in res.verdict.findings}


def test_gate_on_a_verdict_with_its_own_diagnosis_keeps_it():
    res = _result(0.2)
    res.verdict = core.Verdict("fail", "numeric_mismatch", "gaps", [core.bound("x", 2.0, 1.0)])
    frameworks.attach(SimpleNamespace(results=[res]), ["prime-rl"])
    assert res.verdict.diagnosis == "numeric_mismatch"


def test_report_md_and_html_show_every_scored_role():
    numbers = fw.with_gates(
        fw.compute([np.array([-1.0, -2.0])] * 30, [np.array([-1.3, -2.0])] * 30)
    )
    close = fw.with_gates(fw.compute([np.array([-1.0])] * 30, [np.array([-1.0])] * 30))
    m = {"frameworks": {"candidate": numbers, "baseline": close}}
    md = "\n".join(frameworks.markdown(m["frameworks"]))
    assert "| framework | metric | candidate | baseline | gate |" in md
    assert "| NeMo-RL | token_mult_prob_error | 1.175 NOT met | 1 met | <= 1.05 |" in md
    rec = {
        "name": "s",
        "category": "logprobs",
        "description": "",
        "model": "tiny",
        "sampling": {},
        "reference_head_dtype": "float32",
        "verdict": {"outcome": "pass", "message": "", "findings": []},
        "metrics": m,
        "engines": {},
        "expect": "pass",
        "as_expected": True,
    }
    assert "| NeMo-RL | token_mult_prob_error |" in "\n".join(markdown._scenario_section(rec))
    page = html_cards._frameworks(m)
    assert "Trainer frameworks" in page and "NOT met" in page and "badge fail" in page
    assert html_cards._frameworks({}) == "" and frameworks.markdown({}) == []
