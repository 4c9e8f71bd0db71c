"""Real bisects on the tiny model: v1-parity (good) vs v1-defaults (bad) finds the one flag
each scenario depends on, alone, within ddmin's trial budget."""

import json

import pytest

from conftest import SCENARIOS, run_cli

pytestmark = pytest.mark.engine

# ddmin on 5 items with one culprit: 2 confirmation runs + at most 2 * ceil(log2 5) = 6 more.
MAX_TESTS = 8


@pytest.mark.parametrize("scenario, extra, culprit", [
    ("logprobs-processed.toml", "", "engine_args.logprobs_mode"),
    ("lmhead-v1-fp32.toml", "", "engine_args.hf_overrides.head_dtype"),
    # The stale-cache probe runs in fp32 (as its scenario does) so only the cache can move it.
    ("update-stale-cache-off.toml", ",dtype=float32", "engine_args.enable_prefix_caching"),
])
def test_bisect_finds_the_single_culprit(tiny_model, tmp_path, scenario, extra, culprit):
    result = run_cli(["bisect", "--good", "v1-parity" + extra, "--bad", "v1-defaults" + extra,
                      "-s", str(SCENARIOS / scenario), "--model", "tiny",
                      "--output", str(tmp_path)])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "bisect.json").read_text())
    assert data["status"] == "found"
    assert [c["item"] for c in data["culprits"]] == [culprit]
    assert data["culprits"][0]["fix"]
    assert data["n_tests"] <= MAX_TESTS
    assert data["engine_starts"] == data["n_tests"]  # one engine start per real trial
    assert (tmp_path / "bisect.md").exists()
