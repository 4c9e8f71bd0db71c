"""Real bisects on the tiny model: v1-parity (good) vs v1-defaults (bad) finds the one flag
each scenario depends on, alone, within ddmin's trial budget. The logprobs and lm_head scenarios
are bisected together with --each (their own culprits, trials of one setting sharing an engine);
the stale-cache probe runs in fp32, a setting of its own."""

import json

import pytest
from conftest import IN_PROCESS_V1, SCENARIOS, run_cli

# ddmin on 5 items with one culprit: 2 confirmation runs + at most 2 * ceil(log2 5) = 6 more.
MAX_TESTS = 8


def test_bisect_each_finds_each_scenarios_culprit_sharing_engines(
    tiny_model, tmp_path, monkeypatch
):
    monkeypatch.setenv(*IN_PROCESS_V1)  # 8 engine starts, none updating weights
    # 64 prompts, as the scenario had before it took the rl pair's 96 (to share its generations
    # in the quick suite): the search is the same, each of its trials a third cheaper.
    processed = tmp_path / "in" / "logprobs-processed.toml"
    processed.parent.mkdir()
    out = tmp_path / "out"
    text = (SCENARIOS / "logprobs-processed.toml").read_text()
    assert 'source = "arithmetic:96"' in text
    processed.write_text(text.replace('source = "arithmetic:96"', 'source = "arithmetic:64"'))
    result = run_cli(
        [
            "bisect",
            "--each",
            "--good",
            "v1-parity",
            "--bad",
            "v1-defaults",
            "-s",
            str(processed),
            "-s",
            str(SCENARIOS / "lmhead-v1-fp32.toml"),
            "--model",
            "tiny",
            "--output",
            str(out),
        ]
    )
    assert result.exit_code == 0, result.output
    data = json.loads((out / "bisect.json").read_text())
    assert data["status"] == "found"
    culprits = {d["scenarios"][0]: [c["item"] for c in d["culprits"]] for d in data["each"]}
    assert culprits == {
        "logprobs-processed": ["engine_args.logprobs_mode"],
        "lmhead-v1-fp32": ["engine_args.hf_overrides.head_dtype"],
    }
    assert all(d["n_tests"] <= MAX_TESTS for d in data["each"])
    assert data["engine_starts"] == data["n_runs"]  # one engine start per distinct trial
    # Shared: the confirmations and every step where both searches asked the same setting.
    assert data["engine_starts"] < sum(d["n_tests"] for d in data["each"])
    assert all(d["culprits"][0]["fix"] for d in data["each"])


@pytest.mark.parametrize(
    "scenario, extra, culprit",
    [
        # The stale-cache probe runs in fp32 (as its scenario does) so only the cache can move it.
        ("update-stale-cache-off.toml", ",dtype=float32", "engine_args.enable_prefix_caching"),
    ],
)
def test_bisect_finds_the_single_culprit(
    tiny_model, tmp_path, monkeypatch, scenario, extra, culprit
):
    # 5 engine starts; the stale-cache probe updates between generate calls (pause mode "keep",
    # which an in-process core runs: parity.engines.vllm_updates.core_call)
    monkeypatch.setenv(*IN_PROCESS_V1)
    result = run_cli(
        [
            "bisect",
            "--good",
            "v1-parity" + extra,
            "--bad",
            "v1-defaults" + extra,
            "-s",
            str(SCENARIOS / scenario),
            "--model",
            "tiny",
            "--output",
            str(tmp_path),
        ]
    )
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "bisect.json").read_text())
    assert data["status"] == "found"
    assert [c["item"] for c in data["culprits"]] == [culprit]
    assert data["culprits"][0]["fix"]
    assert data["n_tests"] <= MAX_TESTS
    assert data["engine_starts"] == data["n_tests"]  # one engine start per real trial
    assert (tmp_path / "bisect.md").exists()
