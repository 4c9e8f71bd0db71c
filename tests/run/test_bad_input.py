"""Regression tests for every bad-input example of issue 10: each ends in exit 2 with the file
(or option), the field and a fix, before any engine starts; none is a traceback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import run_cli

from parity.engines.settings import parse_setting
from parity.run.scenario import Overrides, ScenarioError, load_scenarios

BASE = """name = "x"
category = "logprobs"
model = "tiny"
[prompts]
source = "arithmetic:8"
[sampling]
temperature = 0.7
[candidate]
profile = "v1-defaults"
"""


def problems_of(tmp_path: Path, text: str | bytes, overrides: Overrides | None = None):
    path = tmp_path / "case.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ScenarioError) as err:
        load_scenarios([path], overrides)
    return [(Path(f).name if f.endswith(".toml") else f, fld) for f, fld, _ in err.value.problems]


def with_line(line: str, table: str | None = None) -> str:
    """BASE with `line` added at the top level or inside [table] (replacing a same-named key)."""
    if table is None:  # replaces a same-named key or [section] of BASE
        key, kept, skipping = line.split("=")[0].strip(), [], False
        for ln in BASE.splitlines():
            if ln.startswith("["):
                skipping = ln == f"[{key}]"
            if not skipping and ln.split("=")[0].strip() != key:
                kept.append(ln)
        return line + "\n" + "\n".join(kept) + "\n"
    lines, out, inside = BASE.splitlines(), [], False
    for ln in lines:
        if ln.startswith("["):
            inside = ln == f"[{table}]"
            out.append(ln)
            if inside:
                out.append(line)
            continue
        if inside and ln.split("=")[0].strip() == line.split("=")[0].strip():
            continue
        out.append(ln)
    text = "\n".join(out) + "\n"
    return text if f"[{table}]" in text else text + f"[{table}]\n{line}\n"


@pytest.mark.parametrize(
    "line,table,field",
    [
        ("sampling = [1, 2]", None, "sampling"),
        ("prompts = [1, 2]", None, "prompts"),
        ("reference = [1]", None, "reference"),
        ("tolerances = [1]", None, "tolerances"),
        ("margins = [1]", None, "margins"),
        ('category = ["logprobs"]', None, "category"),
        ('reward = ["exact_match"]', None, "reward"),
        ('name = ["x"]', None, "name"),
        ('profile = ["v0"]', "candidate", "candidate.profile"),
        ("source = 5", "prompts", "prompts.source"),
        ('seed = "abc"', "prompts", "prompts.seed"),
        ("seed = 18446744073709551616", "prompts", "prompts.seed"),
        ('source = "arithmetic:99999999999999999999999"', "prompts", "prompts.source"),
        ('chat = "false"', "prompts", "prompts.chat"),
        ('env_vars = { "A=B" = "x" }', "candidate", "candidate.env_vars.A=B"),
        ("env_vars = { A = { b = 1 } }", "candidate", "candidate.env_vars.A"),
        ('env = "nosuch"', "candidate", "candidate.env"),
        ("logprobs = 21", "sampling", "sampling.logprobs"),
        ("temperature = inf", "sampling", "sampling.temperature"),
        ("seed = 9223372036854775808", "sampling", "sampling.seed"),
        ("seed = -1", "sampling", "sampling.seed"),
        ("n = 1000000", "sampling", "sampling.n"),
        ('expect_diagnosis = "raw_logprob"', None, "expect_diagnosis"),
        ('head_dtyp = "float32"', "reference", "reference.head_dtyp"),
        ("abs_dlogp_mean = -0.1", "tolerances", "tolerances.abs_dlogp_mean"),
        ('model = "/nonexistent"', None, "model"),
        ('model = ""', None, "model"),
        ('profile = "v0"', "baseline", "baseline"),
    ],
)
def test_each_bad_field_is_a_problem_naming_it(tmp_path, line, table, field):
    assert ("case.toml", field) in problems_of(tmp_path, with_line(line, table))


def test_all_problems_at_once(tmp_path):
    text = with_line("logprobs = 21", "sampling").replace(
        'category = "logprobs"', 'category = "logprobs"\nzz = 1'
    )
    found = problems_of(tmp_path, text)
    assert {("case.toml", "sampling.logprobs"), ("case.toml", "zz")} <= set(found)


@pytest.mark.parametrize(
    "raw",
    [
        BASE.encode("utf-16"),
        BASE.replace("x", "é").encode("latin-1"),
        b"\x1f\x8b\x08\x00gzip",
        b"\x89PNG\r\n\x1a\n",
        b"deep = " + b"{ a = " * 500 + b"1" + b" }" * 500,
        b"deep = " + b"[" * 2000 + b"]" * 2000,
    ],
)
def test_unreadable_bytes_are_one_problem(tmp_path, raw):
    assert problems_of(tmp_path, raw) in ([("case.toml", "(file)")], [("case.toml", "deep")])


def test_other_files_problems_still_reported(tmp_path):
    """A binary file does not hide the problems of the next file."""
    (tmp_path / "a.toml").write_bytes(b"\xff\xfe\x00")
    (tmp_path / "b.toml").write_text(with_line("logprobs = 21", "sampling"))
    with pytest.raises(ScenarioError) as err:
        load_scenarios([tmp_path])
    assert {(Path(f).name, fld) for f, fld, _ in err.value.problems} == {
        ("a.toml", "(file)"),
        ("b.toml", "sampling.logprobs"),
    }


def test_fifo_and_empty_directory(tmp_path):
    fifo = tmp_path / "x.toml"
    os.mkfifo(fifo)
    (tmp_path / "d").mkdir()
    with pytest.raises(ScenarioError) as err:  # would block forever on open() otherwise
        load_scenarios([fifo, tmp_path / "d"])
    assert {(Path(f).name, fld) for f, fld, _ in err.value.problems} == {
        ("x.toml", "(file)"),
        ("d", "(path)"),
    }


@pytest.mark.parametrize("model", ["/nonexistent", ""])
def test_missing_model_option_is_usage_error(tmp_path, model):
    path = tmp_path / "ok.toml"
    path.write_text(BASE)
    result = run_cli(["check", str(path), "--model", model, "--output", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "--model" in result.output and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "text,field",
    [
        ("", "profile"),
        (" , ", "profile"),
        ("nosuch", "profile"),
        ("v1-defaults,foo=1,foo.bar=2", "foo.bar"),
        ("v1-defaults,foo=1,foo=2", "foo"),
        ("v1-defaults,envname=nosuch", "env"),
        ("v1-defaults,foo=", "foo"),
        ("v1-defaults,=1", "=1"),
        ("v1-defaults,env.1X=2", "env_vars.1X"),
        ("v1-defaults,a..b=1", "a..b"),
        ("v1-defaults,env.A={ b = 1 }", "env_vars.A"),
    ],
)
def test_setting_strings(text, field):
    setting, problems = parse_setting(text, "--good")
    assert setting is None and ("--good", field) in [p[:2] for p in problems], problems


def test_setting_values_that_are_text():
    """A value that is no TOML literal is a bare string (vLLM's validation judges it), even one
    that would overflow a TOML parser; "=" inside an env var value is kept."""
    setting, _ = parse_setting("v1-defaults,x=" + "[" * 3000 + ",env.A=B=C", "--good")
    assert setting.args["x"] == "[" * 3000 and setting.variables["A"] == "B=C"


def test_bisect_reports_options_and_files_together(tmp_path):
    path = tmp_path / "case.toml"
    path.write_text(with_line("logprobs = 21", "sampling"))
    result = run_cli(
        [
            "bisect",
            "--good",
            "",
            "--bad",
            "v1-defaults,envname=nosuch",
            "-s",
            str(path),
            "--repeats",
            "0",
            "--output",
            str(tmp_path / "out"),
        ]
    )
    assert result.exit_code == 2, result.output
    for where in ("--good", "--bad", "--repeats", "sampling.logprobs"):
        assert where in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_unknown_env_is_usage_error():
    result = run_cli(["env", "create", "nosuch"])
    assert result.exit_code == 2, result.output
