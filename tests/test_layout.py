"""The house rules as tests: the import-linter contracts hold and break on a cycle added on
purpose, and a function-local import is only ever a heavy optional dependency, commented."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
# Imported where used: each costs seconds or exists only in some interpreters.
HEAVY = {
    "torch",
    "transformers",
    "vllm",
    "pyarrow",
    "pandas",
    "safetensors",
    "matplotlib",
    "lief",
    "tokenizers",
}


def lint_imports(package_parent: Path) -> subprocess.CompletedProcess:
    """lint-imports with the repo's contracts over the `parity` package found in package_parent."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(REPO / "pyproject.toml"), "--no-cache"],
        cwd=package_parent,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(package_parent), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )


def local_import_problems(source: str, where: str) -> list[str]:
    """Function-local imports that break the rule: not a heavy dependency, or uncommented."""
    lines = source.splitlines()
    problems = []
    for fn in ast.walk(ast.parse(source)):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ["." if node.level else node.module or ""]
            )
            top = {n.split(".")[0] for n in names}
            if not top <= HEAVY:
                problems.append(
                    f"{where}:{node.lineno}: {', '.join(sorted(top))} imported in "
                    "a function; import it at the top of the module"
                )
            elif "#" not in lines[node.end_lineno - 1] and "#" not in lines[node.lineno - 2]:
                problems.append(
                    f"{where}:{node.lineno}: a lazy import needs a comment saying why it is lazy"
                )
    return problems


@pytest.fixture(scope="module")
def package_copy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("layout")
    shutil.copytree(REPO / "parity", root / "parity", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_contracts_hold():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken." in result.stdout


def test_an_upward_import_breaks_the_layers(package_copy, tmp_path):
    """Negative control: the pure verdicts layer importing the runner."""
    copy = tmp_path / "up"
    shutil.copytree(package_copy, copy)
    core = copy / "parity" / "verdicts" / "core.py"
    core.write_text(core.read_text() + "\nfrom parity.run import runner  # noqa\n")
    result = lint_imports(copy)
    assert result.returncode != 0
    assert "parity.verdicts is not allowed to import parity.run" in result.stdout


def test_a_cycle_between_siblings_breaks_the_contracts(package_copy, tmp_path):
    """Negative control: two modules of one layer importing each other."""
    copy = tmp_path / "cycle"
    shutil.copytree(package_copy, copy)
    for name, other in (("stats", "metrics"), ("metrics", "stats")):
        module = copy / "parity" / "verdicts" / f"{name}.py"
        module.write_text(module.read_text() + f"\nfrom parity.verdicts import {other}  # noqa\n")
    result = lint_imports(copy)
    assert result.returncode != 0
    assert "No cycles are allowed in parity.verdicts" in result.stdout


def test_function_local_imports_are_heavy_and_commented():
    problems = []
    for path in sorted((REPO / "parity").rglob("*.py")):
        problems += local_import_problems(path.read_text(), str(path.relative_to(REPO)))
    assert problems == []


def test_the_local_import_rule_fails_where_it_must():
    source = (
        "def f():\n"
        "    from parity.run import runner\n"  # a parity module: dodging a cycle
        "    import os\n"  # a light library
        "    import torch\n"  # heavy, but not commented
        "    import vllm  # lazy: only in an engine's interpreter\n"
    )
    problems = local_import_problems(source, "m.py")
    assert [p.split(":")[1] for p in problems] == ["2", "3", "4"]
