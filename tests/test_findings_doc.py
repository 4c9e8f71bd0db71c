"""docs/findings.md lists every declared finding (each category's `findings`, the runner's and
`parity judge`'s) with its default bound and where that default was measured: the file is what
scripts/findings_table.py writes from the declarations (run it to update the file)."""

import importlib.util
from pathlib import Path

import pytest

from parity import categories
from parity.run import modelcheck

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("findings_table", ROOT / "scripts/findings_table.py")
findings_table = importlib.util.module_from_spec(spec)
spec.loader.exec_module(findings_table)


def _rows() -> set[tuple[str, str]]:
    text = (ROOT / "docs" / "findings.md").read_text()
    rows = [line.split("|") for line in text.splitlines() if line.startswith("| ")]
    return {(cells[1].strip(), cells[2].strip().strip("`")) for cells in rows[1:]}


def test_every_declared_finding_is_in_the_table():
    rows = _rows()
    for name, category in categories.registry().items():
        for finding in category.findings:
            assert (name, finding) in rows, f"{name}: {finding} missing from docs/findings.md"
    for finding in modelcheck.FINDINGS:
        assert ("every category (runner)", finding) in rows


def test_the_table_is_what_the_script_writes():
    expected = findings_table.render()
    actual = (ROOT / "docs" / "findings.md").read_text()
    assert actual == expected, "docs/findings.md is stale: run scripts/findings_table.py"


def test_a_finding_without_provenance_is_refused(monkeypatch):
    # The negative control: a category declaring a finding nobody measured cannot be rendered.
    category = categories.registry()["logprobs"]
    monkeypatch.setattr(category, "findings", {**category.findings, "unmeasured": "bound"})
    with pytest.raises(KeyError, match="unmeasured"):
        findings_table.render()
