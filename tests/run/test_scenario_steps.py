"""The steps of parse_scenario in isolation (parity.run.scenario_steps): each on a small table,
what it returns and the problems it adds, plus the order parse_scenario reports them in."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from fault_fakes import FakeCategory, scenario

from parity import categories
from parity.engines.base import EngineSetting, SamplingSpec
from parity.engines.settings import load_profiles
from parity.run import scenario_fields as fields
from parity.run import scenario_steps as steps
from parity.run.scenario import Overrides, parse_scenario

P = "s.toml"


class ServedCategory(FakeCategory):
    """A category whose "probe" option a served engine cannot run, and whose check_settings
    refuses a candidate with the engine argument bad=true."""

    name = "served-test"

    def served_refusal(self, options):
        return "needs an in-process engine" if options.get("probe") else None

    def check_settings(self, scenario, path):
        bad = scenario.candidate.args.get("bad")
        return [(path, "candidate.engine_args.bad", "not here")] if bad else []


def run_step(step, *args):
    """(what the step returned, the problems it added)."""
    problems: list = []
    return step(*args, P, problems), problems


def test_category_names_a_registered_category():
    assert run_step(steps.category, {"category": "rl"}) == (categories.get("rl"), [])
    found, problems = run_step(steps.category, {"category": 3})
    assert found is None and problems[0][:2] == (P, "category")
    assert problems[0][2].startswith("3 is not a category; use one of: ")


def test_unknown_top_level_fields_allow_the_categorys_own():
    data = {"name": "x", "probe": "a", "bogus": 1}
    _, problems = run_step(steps.unknown_fields, data, categories.get("runtime"))
    assert [fld for _, fld, _ in problems] == ["bogus"]
    _, problems = run_step(steps.unknown_fields, data, None)
    assert [fld for _, fld, _ in problems] == ["probe", "bogus"]


def test_model_by_precedence_and_a_bad_option_blamed_on_the_option(monkeypatch):
    monkeypatch.delenv("PARITY_MODEL", raising=False)
    provenance: dict = {}
    assert run_step(steps.model, {"model": "tiny"}, None, provenance) == ("tiny", [])
    assert provenance == {"model": "scenario"}
    assert run_step(steps.model, {}, None, provenance) == (fields.DEFAULT_MODEL, [])
    assert provenance == {"model": "default"}
    value, problems = run_step(steps.model, {"model": "tiny"}, "no-such-model", provenance)
    assert value == "no-such-model" and provenance == {"model": "cli"}
    assert [(where, fld) for where, fld, _ in problems] == [("--model", "model")]


def test_expectation_and_a_diagnosis_of_the_category_or_generic():
    rl = categories.get("rl")
    assert run_step(steps.expectation, {}, rl) == (("pass", None), [])
    data = {"expect": "fail", "expect_diagnosis": "config_drift"}
    assert run_step(steps.expectation, data, rl) == (("fail", "config_drift"), [])
    _, problems = run_step(steps.expectation, {"expect": "maybe", "expect_diagnosis": "x"}, rl)
    assert [fld for _, fld, _ in problems] == ["expect", "expect_diagnosis"]
    assert problems[1][2].startswith("'x' is not a diagnosis of category rl; known: ")


def test_prompts_give_exactly_one_of_source_and_items():
    out, problems = run_step(steps.prompts, {"prompts": {"items": ["a"], "seed": 3}})
    assert problems == [] and out == dict(
        prompt_source=None, prompt_items=["a"], prompt_seed=3, chat=None
    )
    _, problems = run_step(steps.prompts, {})
    assert problems == [
        (
            P,
            "prompts",
            'give exactly one of prompts.source (e.g. "arithmetic:32") or prompts.items (a list '
            "of strings)",
        )
    ]
    table = {"source": 5, "items": [1], "chat": "yes", "seed": -1, "extra": 0}
    _, problems = run_step(steps.prompts, {"prompts": table})
    assert [fld for _, fld, _ in problems] == [
        "prompts",
        "prompts.source",
        "prompts.items",
        "prompts.extra",
        "prompts.chat",
        "prompts.seed",
    ]
    assert problems[1][2] == 'must be a string such as "arithmetic:32", got 5'


def test_prompts_seed_of_another_type_is_a_problem_not_a_crash():
    out, problems = run_step(steps.prompts, {"prompts": {"items": ["a"], "seed": "x"}})
    assert out["prompt_seed"] == "x"
    assert problems == [(P, "prompts.seed", "expected int, got str 'x'")]


def test_sampling_fields_are_typed_and_in_range():
    out, problems = run_step(steps.sampling, {"sampling": {"temperature": 1, "seed": 7}})
    assert out == SamplingSpec(temperature=1.0, seed=7) and problems == []
    _, problems = run_step(steps.sampling, {"sampling": {"top_p": 2.0, "top_k": "5", "x": 1}})
    assert [fld for _, fld, _ in problems] == ["sampling.top_k", "sampling.x", "sampling.top_p"]


def test_category_fields_and_the_roles_they_need():
    runtime = categories.get("runtime")
    assert run_step(steps.category_fields, None, {}, SamplingSpec()) == (
        ({}, ("candidate",)),
        [],
    )
    (options, roles), problems = run_step(
        steps.category_fields, runtime, {"probe": "config_diff"}, SamplingSpec()
    )
    assert options["probe"] == "config_diff" and roles == ("candidate", "baseline")
    assert problems == []


def test_engine_sampling_overrides_are_checked_over_the_scenarios_sampling():
    data = {"candidate": {"sampling": {"top_p": 0.5}}, "baseline": {"profile": "v0"}}
    assert run_step(steps.engine_sampling, data, SamplingSpec()) == (
        {"candidate": {"top_p": 0.5}},
        [],
    )
    data = {"baseline": {"sampling": {"max_tokens": 0}}}
    out, problems = run_step(steps.engine_sampling, data, SamplingSpec())
    assert out == {"baseline": {"max_tokens": 0}}
    assert problems == [(P, "baseline.sampling.max_tokens", "must be in [1, 1048576]")]


def test_engine_settings_a_baseline_exactly_when_the_roles_need_one():
    profiles = load_profiles()
    provenance: dict = {}
    data = {"candidate": {"profile": "v1-parity"}, "baseline": {"profile": "v0"}}
    (candidate, baseline), problems = run_step(
        steps.engine_settings, data, ("candidate", "baseline"), Overrides(), profiles, provenance
    )
    assert (candidate.profile, baseline.profile, problems) == ("v1-parity", "v0", [])
    assert provenance == {"candidate": "scenario", "baseline": "scenario"}
    (_, baseline), problems = run_step(
        steps.engine_settings, data, ("candidate",), Overrides(candidate="v0"), profiles, {}
    )
    assert baseline is None and [fld for _, fld, _ in problems] == ["baseline"]
    assert "this scenario judges one engine" in problems[0][2]
    provenance = {}
    _, problems = run_step(
        steps.engine_settings, {}, ("candidate", "baseline"), Overrides(), profiles, provenance
    )
    assert "this scenario compares two engines" in problems[0][2]
    assert provenance == {"candidate": "scenario"}


def test_judging_fields_over_the_categorys_defaults(monkeypatch):
    monkeypatch.delenv("PARITY_REFERENCE_DEVICE", raising=False)
    monkeypatch.delenv("PARITY_TRAINER", raising=False)
    logprobs = categories.get("logprobs")
    provenance: dict = {}
    data = {"tolerances": {"kl_k3_mean": 0.5}, "clip": {"eps_low": 0.1, "eps_high": 0.2}}
    out, problems = run_step(steps.judging, data, logprobs, SamplingSpec(), None, provenance)
    assert problems == [] and provenance == {
        "reference_device": "default",
        "reference_semantics": "default",
    }
    assert out["tolerances"] == {**logprobs.tolerances, "kl_k3_mean": 0.5}
    assert (out["clip"].eps_low, out["head_dtype"], out["reference_device"]) == (
        0.1,
        "float32",
        "auto",
    )
    assert list(out) == [
        "head_dtype",
        "tolerances",
        "clip",
        "margins",
        "reference_device",
        "scores",
        "reference_scorer",
        "semantics",
        "trainer",
    ]
    assert (out["semantics"], out["trainer"]) == ("tempered", None)
    data = {"reference": 1, "tolerances": {"nope": 1}, "margins": {"x": 1}, "clip": {"z": 1}}
    _, problems = run_step(steps.judging, data, logprobs, SamplingSpec(), "cpu", {})
    assert [fld for _, fld, _ in problems] == ["reference", "tolerances.nope", "margins.x", "clip"]


def test_reward_defaults_to_exact_match_for_rl_on_arithmetic():
    assert run_step(steps.reward, {"category": "rl"}, "arithmetic:8") == ("exact_match", [])
    assert run_step(steps.reward, {"category": "logprobs"}, "arithmetic:8") == (None, [])
    name, problems = run_step(steps.reward, {"reward": "nope"}, None)
    assert name == "nope" and problems[0][:2] == (P, "reward")


def test_min_tokens_and_names():
    assert run_step(steps.min_tokens, {}) == (fields.DEFAULT_MIN_TOKENS, [])
    assert run_step(steps.min_tokens, {"min_tokens": -1}) == (
        -1,
        [(P, "min_tokens", "must be >= 0")],
    )
    assert run_step(steps.names, {"description": "d"}, "stem") == (("stem", "d"), [])
    (name, _), problems = run_step(steps.names, {"name": 1}, "stem")
    assert name == "stem" and problems == [(P, "name", "must be a string, got int 1")]


def test_settled_refuses_a_served_engine_for_work_a_server_cannot_do():
    category = ServedCategory()
    sc = scenario("a")
    served = EngineSetting.make("openai", "harness", {}, url="http://x")
    assert steps.settled(sc, category, {"probe": True}, P) == []
    sc = dataclasses.replace(sc, candidate=served, baseline=served)
    assert steps.settled(sc, category, {"probe": True}, P) == [
        (P, "candidate.engine", "needs an in-process engine"),
        (P, "baseline.engine", "needs an in-process engine"),
    ]
    sc = dataclasses.replace(sc, candidate=EngineSetting.make("fake", "harness", {"bad": True}))
    assert steps.settled(sc, category, {}, P) == [(P, "candidate.engine_args.bad", "not here")]


@pytest.fixture
def served_category(monkeypatch):
    monkeypatch.setitem(categories.registry(), "served-test", ServedCategory())


def test_parse_scenario_reports_every_steps_problems_in_file_order(tmp_path, monkeypatch):
    monkeypatch.delenv("PARITY_MODEL", raising=False)
    path = tmp_path / "bad.toml"
    path.write_text(
        'category = "rl"\nbogus = 1\nexpect = "maybe"\nreward = "nope"\nmin_tokens = -1\n'
        "name = 2\n[prompts]\nitems = []\n[sampling]\ntop_p = 2.0\n[candidate]\nx = 1\n"
        "[tolerances]\nnope = 1\n"
    )
    scenario_, problems = parse_scenario(path, Overrides())
    assert scenario_ is None
    assert [fld for _, fld, _ in problems] == [
        "bogus",
        "expect",
        "prompts.items",
        "sampling.top_p",
        "candidate.x",
        "baseline",
        "tolerances.nope",
        "reward",
        "min_tokens",
        "name",
    ]


def test_parse_scenario_settles_a_valid_file(tmp_path, monkeypatch, served_category):
    monkeypatch.delenv("PARITY_MODEL", raising=False)
    monkeypatch.delenv("PARITY_TRAINER", raising=False)
    path = tmp_path / "ok.toml"
    path.write_text('category = "served-test"\n[prompts]\nitems = ["a"]\n')
    sc, problems = parse_scenario(path)
    assert problems == [] and sc.name == "ok" and sc.category == "served-test"
    assert list(sc.provenance) == [
        "model",
        "candidate",
        "reference_device",
        "reference_semantics",
    ]
    assert sc.provenance["model"] == "default"
    assert sc.path == Path(path) and sc.prompt_items == ["a"] and sc.baseline is None
    refused = tmp_path / "refused.toml"
    refused.write_text(path.read_text() + "[candidate]\nengine_args = { bad = true }\n")
    assert parse_scenario(refused) == (
        None,
        [(str(refused), "candidate.engine_args.bad", "not here")],
    )


def test_report_within_is_required_by_report_and_names_bound_findings():
    runtime = categories.get("runtime")
    step = steps.report_within
    _, problems = run_step(step, {}, runtime, "report")
    assert [fld for _, fld, _ in problems] == ["report_within"]
    assert run_step(step, {}, runtime, "pass") == ({}, [])
    data = {"report_within": {"abs_dlogp_seqmean": 0.06}}
    assert run_step(step, data, runtime, "report") == ({"abs_dlogp_seqmean": 0.06}, [])
    _, problems = run_step(step, data, runtime, "pass")
    assert [fld for _, fld, _ in problems] == ["report_within"]
    bad = {"report_within": {"engine_neginf": 1, "kl_k3_seqmean": -1.0}}
    _, problems = run_step(step, bad, runtime, "report")
    assert [fld for _, fld, _ in problems] == [
        "report_within.engine_neginf",
        "report_within.kl_k3_seqmean",
    ]
