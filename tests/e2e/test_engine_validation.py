"""Engine arguments judged by the vLLM that will run them (V1 0.32 here, V0 0.8.5 in its env),
without starting an engine: names, value types and values vLLM's config classes refuse, each
blamed on its field; a fuzz of values through one validator call per environment ends in
problems or acceptance, never in a validator failure."""

from __future__ import annotations

import random
import sys

import pytest

from parity.engines.base import EngineSetting
from parity.run.preflight import Check, engine_problems

BAD = {  # engine arg -> a value every vLLM here refuses
    "max_model_len": "abc",
    "enable_prefix_caching": "yes",
    "gpu_memory_utilization": 5,
    "dtype": "float99",
    "seed": "x",
    "enable_prefix_cachin": True,  # a typo of a name
}
GOOD = [
    {"enforce_eager": True},
    {
        "enforce_eager": True,
        "enable_prefix_caching": False,
        "dtype": "float32",
        "max_model_len": 256,
    },
]


def checks_for(env: str, model: str, arg_sets: list[dict], env_vars=None) -> list[Check]:
    return [
        Check(
            f"case-{i}.toml",
            "candidate.engine_args",
            EngineSetting.make("vllm", env, args, env_vars or {}),
            model,
        )
        for i, args in enumerate(arg_sets)
    ]


def fuzz_arg_sets(n: int, seed: int = 0) -> list[dict]:
    """n engine-arg sets: real argument names with values of every kind."""
    rng = random.Random(seed)
    names = [
        "max_model_len",
        "enable_prefix_caching",
        "gpu_memory_utilization",
        "dtype",
        "seed",
        "block_size",
        "max_num_seqs",
        "max_logprobs",
        "enforce_eager",
        "swap_space",
        "hf_overrides",
        "tokenizer_mode",
        "max_num_batched_tokens",
        "kv_cache_dtype",
    ]
    values = [
        0,
        -1,
        1,
        3,
        2**40,
        0.5,
        -0.5,
        float("inf"),
        True,
        False,
        "",
        "auto",
        "x",
        "bfloat16",
        [1],
        {"a": 1},
        {"head_dtype": "float32"},
    ]
    return [
        {name: rng.choice(values) for name in rng.sample(names, rng.randint(1, 3))}
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def v0_python():
    from parity.setup import envs, envspecs

    return str(envs.ensure_env(envspecs.get_spec("v0"), log=lambda m: None))


@pytest.mark.parametrize("env", ["harness", "v0"])
def test_bad_values_blamed_on_their_field(env, tiny_model, tmp_path, request):
    python = sys.executable if env == "harness" else request.getfixturevalue("v0_python")
    env_vars = {"VLLM_USE_V1": "0"} if env == "v0" else {}
    arg_sets = GOOD + [{"enforce_eager": True, name: value} for name, value in BAD.items()]
    problems = engine_problems(
        checks_for(env, str(tiny_model), arg_sets, env_vars), {env: python}, tmp_path
    )
    blamed = {(where, fld) for where, fld, _ in problems}
    assert not any(where in ("case-0.toml", "case-1.toml") for where, _ in blamed), problems
    for i, name in enumerate(BAD, len(GOOD)):
        assert (f"case-{i}.toml", f"candidate.engine_args.{name}") in blamed, (name, problems)
    assert all("vLLM" in message for _, _, message in problems)


def test_fuzzed_values_end_in_problems_or_acceptance(tiny_model, tmp_path):
    """200 fuzzed arg sets through one validator call: every answer is a problem naming a
    field of its set or nothing (no validator failure, no engine)."""
    arg_sets = fuzz_arg_sets(200)
    problems = engine_problems(
        checks_for("harness", str(tiny_model), arg_sets), {"harness": sys.executable}, tmp_path
    )
    for where, fld, message in problems:
        i = int(where.split("-")[1].split(".")[0])
        assert fld == "candidate.engine_args" or fld.split(".")[2] in arg_sets[i], (fld, message)
    rejected = {where for where, _, _ in problems}
    print(f"engine-arg fuzz: {len(arg_sets) - len(rejected)} accepted, {len(rejected)} rejected")
    assert 0 < len(rejected) < len(arg_sets)


def test_bisect_refuses_bad_option_values_before_any_trial(tiny_model, tmp_path):
    """`parity bisect` with an engine arg its vLLM refuses: exit 2 naming the option and field,
    before trial 1 (no engine started)."""
    from conftest import SCENARIOS, run_cli

    out = tmp_path / "out"
    result = run_cli(
        [
            "bisect",
            "--good",
            "v1-defaults",
            "--bad",
            "v1-defaults,max_model_len=abc",
            "-s",
            str(SCENARIOS / "logprobs-processed.toml"),
            "--model",
            "tiny",
            "--output",
            str(out),
        ]
    )
    assert result.exit_code == 2, result.output
    assert "--bad" in result.output and "engine_args.max_model_len" in result.output
    assert not list(out.glob("trial-*"))


SCENARIO = """name = "case"
category = "logprobs"
model = "tiny"
[prompts]
{prompts}
[sampling]
temperature = 0.7
[candidate]
profile = "v1-defaults"
engine_args = {{ {args} }}
"""


CASES = [  # (prompts, engine args, the field the problem must name)
    ('source = "arithmetic:4"', 'max_model_len = "abc"', "candidate.engine_args.max_model_len"),
    (
        'source = "arithmetic:4"',
        "gpu_memory_utilization = 5",
        "candidate.engine_args.gpu_memory_utilization",
    ),
    ('items = ["' + "one two three " * 300 + '"]', "enforce_eager = true", "prompts"),
    ('source = "arithmetic:4"', "max_model_len = 8", "prompts"),
]


def test_check_refuses_what_the_engine_would_before_starting(tiny_model, tmp_path):
    """`parity check` exits 2 naming each file and field for values the engine's vLLM refuses
    and for prompts longer than the engine's max_model_len, all at once (one validator run),
    before any engine starts."""
    from conftest import run_cli

    files = []
    for i, (prompts, args, _) in enumerate(CASES):
        path = tmp_path / f"case{i}.toml"
        path.write_text(
            SCENARIO.format(prompts=prompts, args=args).replace(
                'name = "case"', f'name = "case{i}"'
            )
        )
        files.append(str(path))
    out = tmp_path / "out"
    result = run_cli(["check", *files, "--output", str(out)])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    for i, (_, _, field) in enumerate(CASES):
        assert f"case{i}.toml: {field}" in text, (field, result.output)
    assert not list(out.glob("logs/engine-*"))


def test_dry_run_validates_and_starts_nothing(tiny_model, tmp_path, monkeypatch):
    from conftest import SCENARIOS, run_cli

    monkeypatch.chdir(tmp_path)  # a dry run writes no results/ directory
    result = run_cli(
        [
            "check",
            str(SCENARIOS / "logprobs-processed.toml"),
            str(SCENARIOS / "rl-v0-vs-v1-parity.toml"),
            "--model",
            "tiny",
            "--dry-run",
        ]
    )
    assert result.exit_code == 0, result.output
    assert "2 engine(s) would start; nothing started" in result.output
    assert not (tmp_path / "results").exists()
