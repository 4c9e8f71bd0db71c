"""`make test` runs two pytest-xdist workers and relies on --dist loadgroup to keep the tests
that share an expensive session fixture on one worker (tests/conftest.py). pytest-xdist 3.8
silently stopped grouping on pytest 9.2 (pytest-dev/pytest-xdist#1386): this test fails if
the installed pair computes a grouped session fixture twice."""

import os
import subprocess
import sys

CONFTEST = """
import os, pytest
@pytest.fixture(scope="session")
def shared(tmp_path_factory):
    with open(os.environ["SETUPS"], "a") as f:
        f.write("x")
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        if "shared" in item.fixturenames:
            item.add_marker(pytest.mark.xdist_group("shared"))
"""
TESTS = """
import pytest
@pytest.mark.parametrize("i", range(6))
def test_uses(shared, i):
    pass
@pytest.mark.parametrize("i", range(6))
def test_free(i):
    pass
"""


def test_loadgroup_keeps_a_session_fixture_on_one_worker(tmp_path):
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_toy.py").write_text(TESTS)
    setups = tmp_path / "setups"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-n",
            "2",
            "--dist",
            "loadgroup",
            str(tmp_path),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "SETUPS": str(setups)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert setups.read_text() == "x", "the grouped session fixture ran on both workers"
