"""Scenario validation: every problem at once, naming file, field and fix."""

from pathlib import Path

import pytest

from parity.run.scenario import Overrides, ScenarioError, load_scenarios, make_setting

SHIPPED = Path(__file__).resolve().parents[2] / "scenarios"

GOOD = """
name = "ok"
category = "logprobs"
[prompts]
source = "arithmetic:24"
[sampling]
temperature = 0.7
top_p = 0.9
[candidate]
profile = "v1-defaults"
engine_args = { logprobs_mode = "processed_logprobs" }
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shipped_scenarios_validate():
    scenarios = load_scenarios([SHIPPED])
    assert {s.name for s in scenarios} >= {
        "logprobs-processed",
        "logprobs-raw-control",
        "logprobs-support-control",
        "logprobs-narrow-support-control",
        "lmhead-v1-fp32",
        "lmhead-v1-bf16-control",
    }
    # A negative control says how it must fail: expect = "fail" with the diagnosis it shows.
    for sc in scenarios:
        if sc.name.endswith("-control"):
            assert sc.expect == "fail" and sc.expect_diagnosis, sc.name
    by_name = {s.name: s for s in scenarios}
    assert by_name["logprobs-narrow-support-control"].expect_diagnosis == "narrower_support"
    # The lm_head pair is the T = 1, no-truncation check of a bf16 head (issue 23's "done").
    for name in ("lmhead-v1-fp32", "lmhead-v1-bf16-control"):
        s = by_name[name].sampling
        assert (s.temperature, s.top_p, s.top_k) == (1.0, 1.0, 0), name


def test_good_scenario_and_precedence(tmp_path, monkeypatch):
    path = write(tmp_path, "ok.toml", 'model = "tiny"\n' + GOOD)
    (sc,) = load_scenarios([path])
    assert sc.model == "tiny" and sc.provenance["model"] == "scenario"
    assert sc.candidate.args["logprobs_mode"] == "processed_logprobs"
    assert sc.candidate.args["enforce_eager"] is True  # from the profile
    monkeypatch.setenv("PARITY_MODEL", "smollm2-135m")
    (sc,) = load_scenarios([path])
    assert (sc.model, sc.provenance["model"]) == ("smollm2-135m", "env:PARITY_MODEL")
    (sc,) = load_scenarios([path], Overrides(model="tiny"))
    assert (sc.model, sc.provenance["model"]) == ("tiny", "cli")
    # A model that names no checkpoint is a usage problem blamed on where it was given.
    with pytest.raises(ScenarioError) as err:
        load_scenarios([path], Overrides(model=str(tmp_path / "nonexistent")))
    assert [p[:2] for p in err.value.problems] == [("--model", "model")]
    monkeypatch.setenv("PARITY_MODEL", "no-such-model")
    with pytest.raises(ScenarioError) as err:
        load_scenarios([path])
    assert [p[:2] for p in err.value.problems] == [("$PARITY_MODEL", "model")]


def test_cli_setting_merges_over_the_scenario_table(tmp_path):
    """--candidate PROFILE,arg=value replaces the profile and merges its args over the file's
    (multi-GPU: e.g. tensor_parallel_size=2 for every scenario); a URL replaces the table."""
    path = write(tmp_path, "ok.toml", 'model = "tiny"\n' + GOOD)
    (sc,) = load_scenarios(
        [path],
        Overrides(candidate="v1-parity,tensor_parallel_size=2,env.VLLM_CPU_OMP_THREADS_BIND=0|1"),
    )
    assert sc.candidate.profile == "v1-parity" and sc.provenance["candidate"] == "cli"
    assert sc.candidate.args["tensor_parallel_size"] == 2
    assert sc.candidate.args["logprobs_mode"] == "processed_logprobs"  # the file's, kept
    assert sc.candidate.args["hf_overrides"] == {"head_dtype": "float32"}  # the profile's
    assert sc.candidate.variables["VLLM_CPU_OMP_THREADS_BIND"] == "0|1"
    (sc,) = load_scenarios([path], Overrides(candidate="http://127.0.0.1:8000"))
    assert sc.candidate.engine == "openai"
    # Data parallel replicas are a server's job: vLLM's LLM refuses them in one process.
    with pytest.raises(ScenarioError) as err:
        load_scenarios([path], Overrides(candidate="v1-parity,data_parallel_size=2"))
    assert [p[1] for p in err.value.problems] == ["candidate.engine_args.data_parallel_size"]
    assert "parity serve" in err.value.problems[0][2]
    with pytest.raises(ScenarioError) as err:
        load_scenarios([path], Overrides(candidate="v1-parityy,tensor_parallel_size"))
    assert sorted(p[:2] for p in err.value.problems) == [
        ("--candidate", "profile"),
        ("--candidate", "tensor_parallel_size"),
    ]


def test_every_problem_reported_at_once(tmp_path):
    bad = write(
        tmp_path,
        "bad.toml",
        """
category = "logprob"
colour = "blue"
[prompts]
source = "poems:3"
[sampling]
temperature = "hot"
top_p = 1.5
[candidate]
profile = "v9"
[tolerances]
abs_dlogp_mean = 0.1
""",
    )
    also_bad = write(
        tmp_path,
        "also.toml",
        GOOD.replace("temperature = 0.7", "temperature = 0.0").replace(
            "[candidate]", '[reference]\nsemantics = "tempred"\n[candidate]'
        ),
    )
    with pytest.raises(ScenarioError) as info:
        load_scenarios([bad, also_bad])
    fields = {(Path(f).name, fld) for f, fld, _ in info.value.problems}
    assert ("bad.toml", "category") in fields
    assert ("bad.toml", "colour") in fields
    assert ("bad.toml", "prompts.source") in fields
    assert ("bad.toml", "sampling.temperature") in fields
    assert ("bad.toml", "sampling.top_p") in fields
    assert ("bad.toml", "candidate.profile") in fields
    # A greedy logprobs check cannot tell raw from processed: refused; a misspelt semantics
    # names the field and the choices.
    assert ("also.toml", "sampling.temperature") in fields
    assert ("also.toml", "reference.semantics") in fields
    messages = " ".join(m for _, _, m in info.value.problems)
    assert "arithmetic:N" in messages and "v1-parity" in messages


def test_t1_without_truncation_is_allowed(tmp_path):
    """T = 1, top_p = 1, top_k = 0 (the common RL setting) is a valid logprobs scenario: the
    bounds still fail on a bf16 head; only the raw-vs-processed diagnosis is skipped."""
    text = GOOD.replace("temperature = 0.7", "temperature = 1.0").replace("top_p = 0.9", "")
    (sc,) = load_scenarios([write(tmp_path, "t1.toml", text)])
    assert not sc.sampling.is_processed_distinct


def test_semantics_default_file_and_trainer_preset(tmp_path, monkeypatch):
    """[reference] semantics: default tempered; the file's value; --trainer > $PARITY_TRAINER >
    file, each recorded in provenance."""
    monkeypatch.delenv("PARITY_TRAINER", raising=False)
    (sc,) = load_scenarios([write(tmp_path, "a.toml", GOOD)])
    assert (sc.semantics, sc.trainer) == ("tempered", None)
    assert sc.provenance["reference_semantics"] == "default"
    text = GOOD.replace("[candidate]", '[reference]\nsemantics = "processed"\n[candidate]')
    path = write(tmp_path, "b.toml", text)
    (sc,) = load_scenarios([path])
    assert (sc.semantics, sc.provenance["reference_semantics"]) == ("processed", "scenario")
    monkeypatch.setenv("PARITY_TRAINER", "processed-replay")
    (sc,) = load_scenarios([write(tmp_path, "a.toml", GOOD)])
    assert (sc.semantics, sc.trainer) == ("processed", "processed-replay")
    assert sc.provenance["reference_semantics"] == "env:PARITY_TRAINER"
    (sc,) = load_scenarios([path], Overrides(trainer="verl"))
    assert (sc.semantics, sc.trainer, sc.provenance["reference_semantics"]) == (
        "tempered",
        "verl",
        "cli",
    )


def test_unknown_trainer_and_semantics_are_usage_errors(tmp_path, monkeypatch):
    """A misspelt --trainer or $PARITY_TRAINER is blamed on the option, with the presets."""
    monkeypatch.delenv("PARITY_TRAINER", raising=False)
    path = write(tmp_path, "a.toml", GOOD)
    with pytest.raises(ScenarioError) as info:
        load_scenarios([path], Overrides(trainer="verll"))
    ((where, fld, message),) = info.value.problems
    assert (where, fld) == ("--trainer", "reference.semantics")
    assert "verl, trl, openrlhf, prime-rl, nemo-rl, processed-replay" in message
    monkeypatch.setenv("PARITY_TRAINER", "nope")
    with pytest.raises(ScenarioError) as info:
        load_scenarios([path])
    assert info.value.problems[0][0] == "$PARITY_TRAINER"


def test_toml_syntax_error_names_file(tmp_path):
    path = write(tmp_path, "broken.toml", "name = \n")
    with pytest.raises(ScenarioError) as info:
        load_scenarios([path])
    assert info.value.problems[0][0].endswith("broken.toml")


def test_profile_overrides_merge_nested_tables():
    s = make_setting("v1-parity", {"hf_overrides": {"foo": 1}, "enable_prefix_caching": True})
    assert s.args["hf_overrides"] == {"head_dtype": "float32", "foo": 1}
    assert s.args["enable_prefix_caching"] is True
    assert s.key() != make_setting("v1-parity").key()
    assert make_setting("v1-parity").key() == make_setting("v1-parity").key()
