"""junit.xml: one testcase per scenario, for CI systems."""

from __future__ import annotations

import json
from typing import Any
from xml.etree import ElementTree as ET

from parity.run.faults import not_judged


def to_junit(data: dict[str, Any]) -> str:
    """One testcase per scenario: failure when not as expected (inconclusive included), error
    when unresolved."""
    scenarios = data["scenarios"]
    suite = ET.Element(
        "testsuite",
        name="parity",
        tests=str(len(scenarios)),
        time=f"{data['timings'].get('total_s') or 0:.2f}",
    )
    n_fail = n_err = 0
    for rec in scenarios:
        v = rec["verdict"] or not_judged(data.get("interrupted")).to_dict()
        case = ET.SubElement(
            suite, "testcase", classname=f"parity.{rec['category']}", name=rec["name"]
        )
        text = json.dumps({"verdict": v, "expect": rec["expect"]}, indent=1)[:20000]
        if v["outcome"] == "unresolved":
            n_err += 1
            el = ET.SubElement(case, "error", message=v.get("message", ""), type="unresolved")
            el.text = text
        elif not rec["as_expected"]:
            n_fail += 1
            el = ET.SubElement(
                case,
                "failure",
                type=v["outcome"],
                message=f"{v['outcome']} (expected {rec['expect']}): {v.get('message', '')}",
            )
            el.text = text
    suite.set("failures", str(n_fail))
    suite.set("errors", str(n_err))
    return ET.tostring(suite, encoding="unicode")
