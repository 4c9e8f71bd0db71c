"""Extension without a fork: tests/plugins/parity_demo_plugin (a category, an engine kind and a
trainer-side scorer offered through parity's entry-point groups) is installed with pip, offline,
into a temporary directory (`pip install --no-deps --no-build-isolation --no-index --target`,
from a copy of its source, so the build leaves nothing in the repository), and `parity check`
runs it in a subprocess with that directory on PYTHONPATH: a pass, its negative controls (exit
1), bad input (exit 2). Plugins that clash with a built-in or fail to load are described by
hand-written *.dist-info directories."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, run_cli

from parity import categories, engines, plugins, trainer
from parity.run.scenario import ScenarioError, load_scenarios

SOURCE = Path(__file__).resolve().parent / "parity_demo_plugin"
SCENARIO = """name = "{name}"
category = "token_count"
model = "tiny"

[prompts]
items = ["one two three", "four five six seven", "eight"]

[sampling]
max_tokens = 8
n = 2

[candidate]
engine = "echo"
{engine_args}

[reference]
scorer = "demo"
"""


def scenario(directory: Path, name: str, engine_args: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.toml"
    path.write_text(SCENARIO.format(name=name, engine_args=engine_args))
    return path


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The demo plugin, installed by pip into a directory of its own."""
    tmp = tmp_path_factory.mktemp("plugin")
    src = tmp / "src"
    shutil.copytree(
        SOURCE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    target = tmp / "site"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation"]
        + ["--no-index", "--quiet", "--target", str(target), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (target / "parity_demo_plugin" / "echo.py").exists()
    return target


def parity_check(site: Path, *args: str) -> subprocess.CompletedProcess:
    """`parity check ARGS --model tiny` in a child whose PYTHONPATH is the plugin's site, then
    this checkout."""
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{REPO}"}
    return subprocess.run(
        [sys.executable, "-m", "parity.cli", "check", *args, "--model", "tiny"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture
def on_path(site, monkeypatch):
    """The installed plugin visible in this process (registries rebuilt before and after)."""
    monkeypatch.syspath_prepend(str(site))
    categories.registry.cache_clear()
    yield site
    monkeypatch.undo()
    categories.registry.cache_clear()
    for name in [m for m in sys.modules if m.split(".")[0] == "parity_demo_plugin"]:
        del sys.modules[name]


def fake_dist(tmp_path: Path, monkeypatch, entry_points: str) -> None:
    """A distribution "fake-plugin" offering `entry_points` (entry_points.txt text), on sys.path."""
    info = tmp_path / "fake_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)
    monkeypatch.syspath_prepend(str(tmp_path))
    categories.registry.cache_clear()


@pytest.fixture
def clean_registry():
    yield
    categories.registry.cache_clear()


# ----------------------------------------------------------------------------- parity check


def test_check_runs_the_plugins_category_engine_and_scorer(site, tiny_model, tmp_path):
    """A scenario of the plugin's category, on its engine kind, judged by its scorer: exit 0,
    and report.json names each of them."""
    out = tmp_path / "out"
    done = parity_check(site, str(scenario(tmp_path / "sc", "echo-pass")), "--output", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((out / "report.json").read_text())
    (sc,) = report["scenarios"]
    assert sc["category"] == "token_count" and sc["verdict"]["outcome"] == "pass"
    outcomes = {f["name"]: f["outcome"] for f in sc["verdict"]["findings"]}
    assert outcomes == {
        "count.wrong_length": "pass",
        "logprob.abs_dlogp_max": "pass",
        "identity.candidate_vs_trainer": "pass",  # the echo engine reports the model's facts
    }
    cand = sc["engines"]["candidate"]
    assert cand["setting"]["engine"] == "echo" and cand["setting"]["profile"] is None
    assert cand["engine_impl"] == "parity_demo_plugin.echo.EchoEngine"
    assert (cand["n_sequences"], cand["n_tokens"]) == (6, 48)
    (engine,) = report["engines"]
    assert engine["setting"]["engine"] == "echo" and "error" not in engine
    (name,) = report["reference"]
    assert name.endswith(":demo"), report["reference"]
    stats = report["reference"][name]
    assert (stats["scored_seqs"], stats["scored_tokens"], stats["device"]) == (6, 48, "cpu")
    assert "engine kind `echo` (from a plugin)" in (out / "report.md").read_text()


def test_the_plugin_categorys_negative_controls_fail(site, tiny_model, tmp_path):
    """Each finding of token_count can fail: an echo engine that stops early fails the count,
    one whose logprobs are shifted fails the scorer's bound (exit 1, each with its diagnosis)."""
    sc = tmp_path / "sc"
    scenario(sc, "echo-stops-early", "engine_args = { stop_after = 3 }")
    scenario(sc, "echo-shifted", "engine_args = { logprob_shift = 0.5 }")
    out = tmp_path / "out"
    done = parity_check(site, str(sc), "--output", str(out))
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads((out / "report.json").read_text())
    got = {
        s["name"]: (
            s["verdict"]["outcome"],
            s["verdict"]["diagnosis"],
            sorted(f["name"] for f in s["verdict"]["findings"] if f["outcome"] == "fail"),
        )
        for s in report["scenarios"]
    }
    assert got == {
        "echo-stops-early": ("fail", "wrong_length", ["count.wrong_length"]),
        "echo-shifted": ("fail", "logprob_mismatch", ["logprob.abs_dlogp_max"]),
    }


# ----------------------------------------------------------------------------- in this process


def test_dry_run_plans_the_plugin_engine(on_path, tiny_model, tmp_path, monkeypatch):
    """--dry-run lists the plugin's engine with its engine args and starts nothing."""

    def no_engine(*a, **k):
        raise AssertionError("a dry run created an engine")

    monkeypatch.setattr(engines, "create", no_engine)
    path = scenario(tmp_path, "echo-dry", "engine_args = { stop_after = 3 }")
    result = run_cli(["check", str(path), "--model", "tiny", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "engine 1: echo [stop_after=3] on tiny: echo-dry" in result.output
    assert "1 engine(s) would start; nothing started" in result.output


def test_bad_plugin_settings_exit_2_before_any_engine(on_path, tiny_model, tmp_path, monkeypatch):
    """A plugin engine's table takes no profile; its engine_args are judged by the engine class
    (setting_problems) before any engine starts; an unknown kind lists the plugin's too."""
    monkeypatch.setattr(engines, "create", lambda *a, **k: pytest.fail("an engine was created"))
    prof = scenario(tmp_path / "a", "echo-profile", 'profile = "v1-defaults"')
    with pytest.raises(ScenarioError) as err:
        load_scenarios([prof])
    ((_, fld, message),) = err.value.problems
    assert fld == "candidate.profile" and 'engine = "echo"' in message and "remove it" in message
    typo = scenario(tmp_path / "b", "echo-typo").read_text().replace('"echo"', '"echho"')
    (tmp_path / "b" / "echo-typo.toml").write_text(typo)
    with pytest.raises(ScenarioError) as err:
        load_scenarios([tmp_path / "b"])
    assert err.value.problems[0][1:] == (
        "candidate.engine",
        '\'echho\': use one of "vllm", "openai", "echo"',
    )
    arg = scenario(tmp_path / "c", "echo-arg", "engine_args = { stop_afte = 3 }")
    result = run_cli(["check", str(arg), "--model", "tiny", "--output", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    assert "candidate.engine_args.stop_afte: not an argument of the echo engine" in result.output
    assert not (tmp_path / "out" / "report.json").exists()


def test_runtime_probes_refuse_a_plugin_engine_without_a_cache_reset(on_path, tmp_path):
    """The runtime probes that reset the prefix cache refuse, at validation, an engine kind
    whose class has no reset_prefix_cache(); config_diff takes it."""
    path = tmp_path / "rt.toml"
    text = (
        'name = "rt"\ncategory = "runtime"\nmodel = "tiny"\nprobe = "{probe}"\n'
        '[prompts]\nitems = ["a b"]\n[candidate]\nengine = "echo"\n{baseline}'
    )
    path.write_text(text.format(probe="batch_invariance", baseline=""))
    with pytest.raises(ScenarioError) as err:
        load_scenarios([path])
    ((_, fld, message),) = err.value.problems
    assert fld == "candidate.engine" and "has no reset_prefix_cache()" in message
    path.write_text(text.format(probe="config_diff", baseline='[baseline]\nengine = "echo"\n'))
    (sc,) = load_scenarios([path])
    assert sc.candidate.engine == sc.baseline.engine == "echo"


def test_without_plugins_the_kinds_are_the_built_ins(tmp_path, clean_registry):
    """No plugin installed: the registries hold the built-ins only, and an unknown engine kind
    is refused with the same message as before plugins existed."""
    assert list(engines.kinds()) == ["vllm", "openai"]
    assert "token_count" not in categories.names() and list(trainer.names()) == ["hf"]
    path = scenario(tmp_path, "echo")
    with pytest.raises(ScenarioError) as err:
        load_scenarios([path])
    assert ("candidate.engine", '\'echo\': use one of "vllm", "openai"') in [
        p[1:] for p in err.value.problems
    ]


# ----------------------------------------------------------------------------- broken plugins


@pytest.mark.parametrize(
    "group, name, value, where",
    [
        ("parity.engines", "vllm", "fake_plugin:Engine", lambda: engines.kinds()),
        ("parity.scorers", "hf", "fake_plugin:Scorer", lambda: trainer.names()),
        (
            "parity.categories",
            "other_name",
            "parity.categories.logprobs:CATEGORY",
            lambda: categories.registry(),
        ),
    ],
)
def test_a_plugin_reusing_a_built_in_name_is_refused(
    tmp_path, monkeypatch, clean_registry, group, name, value, where
):
    fake_dist(tmp_path, monkeypatch, f"[{group}]\n{name} = {value}\n")
    with pytest.raises(plugins.PluginError) as err:
        where()
    text = str(err.value)
    assert group in text and repr(name) in text and "give it another name" in text
    if group == "parity.categories":  # the clash is the category's own name
        assert "'logprobs'" in text
    else:
        assert "fake-plugin" in text  # the package that offers it


def test_a_broken_entry_point_says_which_and_why(tmp_path, monkeypatch, clean_registry):
    """An entry point whose module does not import: PluginError naming the group, the entry
    point, its package and the import error; `parity check` exits 2 with it, no traceback."""
    fake_dist(
        tmp_path,
        monkeypatch,
        "[parity.engines]\nbroken = no_such_module:Engine\n"
        "[parity.categories]\nbroken_cat = no_such_module:CATEGORY\n",
    )
    assert "broken" in engines.kinds()
    with pytest.raises(plugins.PluginError) as err:
        engines.engine_class("broken")
    text = str(err.value)
    assert "parity.engines entry point 'broken'" in text and "fake-plugin" in text
    assert "ModuleNotFoundError" in text and "no_such_module" in text
    result = run_cli(["check", str(scenario(tmp_path, "any")), "--model", "tiny"])
    assert result.exit_code == 2, result.output
    assert "parity.categories entry point 'broken_cat'" in result.output
    assert "Traceback" not in result.output
