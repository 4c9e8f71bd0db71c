"""The scenario field `gates`: the trainer frameworks whose documented gates are findings of the
scenario (parity.report.frameworks.attach reads it); bad names are problems naming the fix."""

import pytest

from parity.run.scenario import ScenarioError, load_scenarios

GOOD = """
name = "ok"
model = "tiny"
category = "logprobs"
{gates}
[prompts]
source = "arithmetic:24"
[sampling]
temperature = 0.7
top_p = 0.9
[candidate]
profile = "v1-defaults"
engine_args = {{ logprobs_mode = "processed_logprobs" }}
"""


def load(tmp_path, gates):
    path = tmp_path / "ok.toml"
    path.write_text(GOOD.format(gates=gates))
    return load_scenarios([path])


def test_gates_default_to_none_and_are_read(tmp_path):
    assert load(tmp_path, "")[0].gates == []
    assert load(tmp_path, 'gates = ["nemo-rl", "verl"]')[0].gates == ["nemo-rl", "verl"]


@pytest.mark.parametrize(
    "gates, expected",
    [('gates = ["nemo"]', "'nemo' is not a framework"), ('gates = "verl"', "a list of names")],
)
def test_bad_gates_are_problems(tmp_path, gates, expected):
    with pytest.raises(ScenarioError) as err:
        load(tmp_path, gates)
    (problem,) = err.value.problems
    assert problem[1] == "gates" and expected in problem[2]
    assert "nemo-rl, prime-rl, verl" in problem[2]


@pytest.mark.parametrize("category", ["logprobs", "rl"])
def test_a_negative_control_can_expect_a_failed_gate(tmp_path, category):
    # framework_gate is a declared diagnosis of every category whose tokens the gates judge.
    text = GOOD.format(
        gates='gates = ["nemo-rl"]\nexpect = "fail"\nexpect_diagnosis = "framework_gate"'
    )
    text = text.replace('category = "logprobs"', f'category = "{category}"')
    if category == "rl":
        text += '[baseline]\nprofile = "v1-defaults"\n'
    path = tmp_path / "control.toml"
    path.write_text(text)
    (scenario,) = load_scenarios([path])
    assert scenario.expect_diagnosis == "framework_gate"
