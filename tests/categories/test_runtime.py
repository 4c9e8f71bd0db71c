"""The runtime category: effective-config diff and its RL tags (unit tests on fake configs), probe
alignment and judging, scenario validation, and real engines on the tiny model (V0 vs V1
defaults, a deliberately altered model config, the three probes)."""

from types import SimpleNamespace

import numpy as np
import pytest

from parity.categories import _runtime_probes, runtime
from parity.engines import configdiff
from parity.engines.base import SamplingSpec, Sequence
from parity.engines.vllm_config import _rope_theta
from parity.run.scenario import parse_scenario
from parity.verdicts.formulas import ClipRange

V0_KEY = {
    "engine_impl": "vllm.engine.llm_engine.LLMEngine",
    "vllm_version": "0.8.5.post2",
    "enable_prefix_caching": False,
    "async_scheduling": False,
    "cascade_attention": "not_applicable",
    "max_num_batched_tokens": 2048,
    "seed": "unseeded",
    "dtype": "torch.bfloat16",
    "head_dtype": "torch.bfloat16",
    "logprobs_mode": "processed_logprobs",
    "model.rope_theta": 10000.0,
    "model.eos_token_id": 1,
    "model.vocab_size": 768,
}
V1_KEY = {
    **V0_KEY,
    "engine_impl": "vllm.v1.engine.llm_engine.LLMEngine",
    "vllm_version": "0.32.0",
    "enable_prefix_caching": True,
    "cascade_attention": "off",
    "max_num_batched_tokens": 4096,
    "seed": 0,
    "logprobs_mode": "raw_logprobs",
    "model.rope_theta": 10000,
    "model.eos_token_id": [1],
}


def _rows(base, cand):
    return {r["key"]: r for r in configdiff.config_diff(base, cand)}


def test_diff_lists_prefix_caching_with_its_rl_consequence():
    rows = _rows(V0_KEY, V1_KEY)
    pc = rows["enable_prefix_caching"]
    assert (pc["baseline"], pc["candidate"], pc["severity"]) == (False, True, "rl")
    assert "stale KV" in pc["consequence"] and "on in the candidate" in pc["consequence"]
    assert rows["logprobs_mode"]["severity"] == "rl"
    assert rows["max_num_batched_tokens"]["severity"] == "numeric"
    assert rows["seed"]["severity"] == "info"
    # Cascade attention is off (V1) or absent (V0): the same behaviour, not a difference.
    assert "cascade_attention" not in rows
    # 10000 == 10000.0 and [1] == 1: spelling differences are not differences.
    assert "model.rope_theta" not in rows and "model.eos_token_id" not in rows
    # V1 turns prefix caching on and returns raw logprobs: two V0-parity keys differ.
    verdict, detail = runtime.judge_config_diff(V0_KEY, V1_KEY)
    assert verdict.outcome == "fail" and verdict.diagnosis == "runtime_defaults"
    failed = {f.name for f in verdict.findings if f.outcome == "fail"}
    assert failed == {"match.enable_prefix_caching", "match.logprobs_mode"}
    assert "enable_prefix_caching=False" in verdict.message
    assert "logprobs_mode=processed_logprobs" in verdict.message
    assert detail["candidate_risks"] == ["enable_prefix_caching"]


def test_config_diff_passes_when_the_v0_parity_keys_match():
    cand = {**V1_KEY, "enable_prefix_caching": False, "logprobs_mode": "processed_logprobs"}
    verdict, _ = runtime.judge_config_diff(V0_KEY, cand)
    assert verdict.outcome == "pass", verdict.message
    # Only the keys asked for are judged.
    verdict, _ = runtime.judge_config_diff(V0_KEY, V1_KEY, keys=("async_scheduling",))
    assert verdict.outcome == "pass"


def test_config_diff_key_one_engine_does_not_report_is_inconclusive():
    cand = {k: v for k, v in V0_KEY.items() if k != "head_dtype"}
    verdict, _ = runtime.judge_config_diff(V0_KEY, cand)
    assert verdict.outcome == "inconclusive" and "head_dtype" in verdict.message


def test_model_config_difference_is_tagged():
    cand = {**V1_KEY, "model.rope_theta": 20000.0}
    rows = _rows(V0_KEY, cand)
    assert rows["model.rope_theta"]["severity"] == "fail"
    assert list(rows)[0] == "model.rope_theta"  # model keys first
    # A value one engine could not read is flagged, not failed.
    assert configdiff.tag("model.eos_token_id", None, 1)[0] == "unknown"


def test_identical_configs_pass_with_no_differences():
    verdict, detail = runtime.judge_config_diff(V1_KEY, dict(V1_KEY))
    assert detail["differences"] == []


def test_rope_theta_is_read_as_the_model_reads_it():
    class New:  # transformers 5: the base lives in rope_parameters
        rope_parameters = {"rope_theta": 10000.0, "rope_type": "default"}
        rope_theta = 20000.0  # e.g. hf_overrides: ignored by vLLM's model there

        def standardize_rope_params(self):
            pass

    class Old:  # transformers 4.51: rope_parameters is an unknown extra
        rope_parameters = {"rope_theta": 100000.0}
        rope_theta = 10000.0

    assert _rope_theta(New()) == 10000.0
    assert _rope_theta(Old()) == 10000.0


def _seq(i, tokens, lps, cached=None):
    return Sequence(i, 0, [1], list(tokens), list(lps), num_cached_tokens=cached)


def test_aligned_keeps_the_common_token_prefix():
    ref = [_seq(0, [5, 6, 7], [-1.0, -2.0, -3.0]), _seq(1, [5, 6], [-1.0, -1.0])]
    cand = [_seq(1, [5, 6], [-1.5, -1.0]), _seq(0, [5, 9, 7], [-1.25, -2.0, -3.0])]
    out = _runtime_probes.aligned(ref, cand)
    assert out["n_pairs"] == 2 and out["n_diverged"] == 1
    assert [len(x) for x in out["ref"]] == [1, 2]  # prompt 0 parts at position 1
    np.testing.assert_allclose(out["first_abs_dlogp"], [0.25, 0.5])


def test_probe_findings_pass_on_equal_runs_and_fail_on_drift():
    ref = [_seq(i, range(20), np.linspace(-3, -0.1, 20)) for i in range(25)]
    same = _runtime_probes.aligned(ref, ref)
    findings, _, out = _runtime_probes.probe_findings(
        same, {"abs_dlogp_mean": 0.02, "kl_k3_mean": 0.002}, 100, ClipRange()
    )
    assert out["bitwise_equal"] and {f.outcome for f in findings} == {"pass"}
    moved = [_seq(i, range(20), np.linspace(-3, -0.1, 20) + 0.3) for i in range(25)]
    findings, _, out = _runtime_probes.probe_findings(
        _runtime_probes.aligned(ref, moved), {"abs_dlogp_mean": 0.02}, 100, ClipRange()
    )
    outcome = {f.name: f.outcome for f in findings}
    assert out["abs_dlogp_mean"] == pytest.approx(0.3) and outcome["abs_dlogp_seqmean"] == "fail"
    assert outcome["engine_neginf"] == outcome["absurd_logprob"] == "pass"


def test_semantics_of_decode_and_prefill_logprobs():
    hot = SamplingSpec(temperature=0.7)
    v1 = _runtime_probes._semantics(
        {
            "engine_impl": "vllm.v1.engine.llm_engine.LLMEngine",
            "logprobs_mode": "processed_logprobs",
        },
        hot,
    )
    assert v1["decode"] == "processed_logprobs" and v1["prefill"].startswith("raw")
    v0 = _runtime_probes._semantics(
        {"engine_impl": "vllm.engine.llm_engine.LLMEngine", "logprobs_mode": "processed_logprobs"},
        hot,
    )
    assert v0["prefill"].startswith("processed")
    assert _runtime_probes._semantics({}, SamplingSpec())["decode"].startswith("raw = processed")


def _probe_result(probe, ref, cand, key=None):
    sc = SimpleNamespace(
        options={"probe": probe},
        engine_sampling={},
        tolerances={"abs_dlogp_mean": 0.02, "kl_k3_mean": 0.002},
        min_tokens=50,
        clip=ClipRange(),
        sampling=SamplingSpec(),
    )
    run = SimpleNamespace(
        extra={"ref": ref, "cand": cand, "prefix_tokens": 256},
        effective_config={"key": key or {"enable_prefix_caching": True}},
    )
    return SimpleNamespace(scenario=sc, runs={"candidate": run}, model_path="m")


def test_prefix_probe_without_cache_hits_is_inconclusive_when_caching_is_on():
    ref = [_seq(i, range(20), np.full(20, -1.0), cached=0) for i in range(25)]
    res = _probe_result("prefix_cache", ref, ref)
    verdict, detail = runtime.CATEGORY.judge(res, refs=None)
    assert verdict.outcome == "inconclusive" and "reused nothing" in verdict.message
    warm = [_seq(i, range(20), np.full(20, -1.0), cached=256) for i in range(25)]
    verdict, detail = runtime.CATEGORY.judge(_probe_result("prefix_cache", ref, warm), refs=None)
    assert verdict.outcome == "pass" and detail["cached_tokens_warm"] == 25 * 256
    moved = [_seq(i, range(20), np.full(20, -1.1), cached=256) for i in range(25)]
    verdict, _ = runtime.CATEGORY.judge(_probe_result("prefix_cache", ref, moved), refs=None)
    assert verdict.outcome == "fail" and verdict.diagnosis == "prefix_cache_drift"


def test_scenario_validation_of_runtime_and_lm_head_fields(tmp_path):
    def problems(text):
        f = tmp_path / "s.toml"
        f.write_text(text)
        return [fld for _, fld, _ in parse_scenario(f)[1]]

    base = '[prompts]\nsource = "arithmetic:4"\n[candidate]\nprofile = "v1-defaults"\n'
    assert "baseline" in problems('category = "runtime"\n' + base)  # config_diff needs one
    assert problems('category = "runtime"\nprobe = "prefix_cache"\n' + base) == []
    # The prefix-cache probe on an engine with caching off is a scenario error.
    assert "candidate.engine_args.enable_prefix_caching" in problems(
        'category = "runtime"\nprobe = "prefix_cache"\n[prompts]\nsource = "arithmetic:4"\n'
        '[candidate]\nprofile = "v1-parity"\n'
    )
    assert "candidate.engine_args.enable_prefix_caching" in problems(
        'category = "runtime"\nprobe = "prefix_cache"\n[prompts]\nsource = "arithmetic:4"\n'
        '[candidate]\nprofile = "v0"\n'
    )
    # A [baseline] on a one-engine probe would start an engine whose result is never used.
    assert "baseline" in problems(
        'category = "runtime"\nprobe = "batch_invariance"\n' + base + '[baseline]\nprofile = "v0"\n'
    )
    assert "probe" in problems('category = "runtime"\nprobe = "nope"\n' + base)
    assert "probe" in problems(
        'category = "lm_head"\nprobe = "prefix_cache"\n[sampling]\nlogprobs = 5\n' + base
    )
    assert "sampling.logprobs" in problems('category = "lm_head"\n' + base)
    assert "require_head" in problems(
        'category = "lm_head"\nrequire_head = "fp16"\n[sampling]\nlogprobs = 5\n' + base
    )
    assert "require_head" in problems(
        'category = "logprobs"\nrequire_head = "model"\n[sampling]\ntemperature = 0.5\n' + base
    )


# --------------------------------------------------------------------- real engines
