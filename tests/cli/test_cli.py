"""CLI behaviour that needs no engine: help, usage errors, exit codes."""

from typer.testing import CliRunner

from parity.cli import app


def invoke(*args):
    return CliRunner().invoke(app, list(args))


def test_help_lists_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("check", "models", "env"):
        assert command in result.output


def test_bad_scenario_exits_2_with_every_problem(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('category = "nope"\n[sampling]\ntop_p = 7\n')
    result = invoke("check", str(bad), "--output", str(tmp_path / "out"))
    assert result.exit_code == 2
    assert "bad.toml" in result.output
    assert "category" in result.output and "sampling.top_p" in result.output
    assert "prompts" in result.output
    assert not (tmp_path / "out").exists()  # nothing ran


def test_missing_path_exits_2(tmp_path):
    result = invoke("check", str(tmp_path / "nothing-here"))
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_bad_semantics_and_trainer_exit_2_naming_file_field_and_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("PARITY_TRAINER", raising=False)
    bad = tmp_path / "sem.toml"
    bad.write_text(
        'category = "logprobs"\n[prompts]\nsource = "arithmetic:4"\n[sampling]\n'
        'temperature = 0.7\n[reference]\nsemantics = "replayed"\n[candidate]\n'
        'profile = "v1-parity"\n'
    )
    result = invoke("check", str(bad), "--dry-run")
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "sem.toml" in text and "reference.semantics" in text
    assert '"tempered", "processed", "raw"' in text
    bad.write_text(bad.read_text().replace('"replayed"', '"processed"'))
    result = invoke("check", str(bad), "--dry-run", "--trainer", "veRL")
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "--trainer" in text and "verl, trl, openrlhf, prime-rl, nemo-rl" in text
