"""Write docs/findings.md: every finding every category declares (its `findings` dict), the
runner's (parity.run.modelcheck.FINDINGS) and `parity judge`'s, each with its kind, its default
bound as the code holds it, and where that default was measured (model, CPU type, sampling,
the measurement's anchor in docs/measurements.md). The list comes from the declarations;
tests/test_findings_doc.py fails when the file is not what this script writes (a finding
declared and not in the table, or a bound that moved).

    .venv/bin/python scripts/findings_table.py          # rewrite docs/findings.md
    .venv/bin/python scripts/findings_table.py --check  # exit 1 when it is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from parity import categories, judging
from parity.categories import logprobs
from parity.run import modelcheck
from parity.verdicts import frameworks, paired

DOC = Path(__file__).resolve().parents[1] / "docs" / "findings.md"
SAMPLED = "T 0.7, top-p 0.9, top-k 50"
NOT_RECORDED = "not recorded"
# Where each default was measured: (model, CPU type, sampling, measurements.md anchor). Keyed by
# finding name, or "category:name" where one name means different things in two categories.
PROVENANCE = {
    "abs_dlogp_seqmean": (
        "SmolLM2-135M-Instruct, tiny",
        NOT_RECORDED,
        SAMPLED,
        "logprobs-tolerances",
    ),
    "kl_k3_seqmean": ("SmolLM2-135M-Instruct, tiny", NOT_RECORDED, SAMPLED, "logprobs-tolerances"),
    "abs_dlogp_p99": ("SmolLM2-135M-Instruct, tiny", NOT_RECORDED, SAMPLED, "logprobs-tolerances"),
    "offset_seqmean": (
        "SmolLM2-135M-Instruct",
        NOT_RECORDED,
        "T 1 and T 0.7 without truncation; " + SAMPLED,
        "logprobs-offset",
    ),
    "excluded_rate": ("SmolLM2-135M-Instruct, tiny", NOT_RECORDED, SAMPLED, "excluded-tokens"),
    "excluded_numerics_rate": ("SmolLM2-135M-Instruct", "AVX2-only", SAMPLED, "excluded-split"),
    "engine_neginf": ("SmolLM2-135M-Instruct", "AVX2-only", SAMPLED, "vanishing-tokens-real"),
    "absurd_logprob": ("SmolLM2-135M-Instruct", "AVX2-only", SAMPLED, "vanishing-tokens-real"),
    "rl:kl_k3": ("SmolLM2-135M", NOT_RECORDED, SAMPLED, "rl-margin-noise"),
    "rl:abs_dlogp": ("SmolLM2-135M", NOT_RECORDED, SAMPLED, "rl-margin-noise"),
    "rl:clip_rate": ("SmolLM2-135M", NOT_RECORDED, SAMPLED, "rl-margin-noise"),
    "rl:entropy": ("SmolLM2-135M", NOT_RECORDED, SAMPLED, "rl-margin-noise"),
    "rl:reward": ("SmolLM2-135M", NOT_RECORDED, SAMPLED, "rl-margin-noise"),
    "rl:excluded_rate": ("SmolLM2-135M-Instruct, tiny", NOT_RECORDED, SAMPLED, "excluded-tokens"),
    "rl:excluded_numerics_rate": ("SmolLM2-135M-Instruct", "AVX2-only", SAMPLED, "excluded-split"),
    "runtime:abs_dlogp_seqmean": (
        "SmolLM2-135M-Instruct, tiny",
        "AVX2-only and AVX512-BF16",
        "T 1 (batch invariance, 32 prompts)",
        "runtime-probes",
    ),
    "runtime:kl_k3_seqmean": (
        "SmolLM2-135M-Instruct, tiny",
        "AVX2-only and AVX512-BF16",
        "T 1 (batch invariance, 32 prompts)",
        "runtime-probes",
    ),
    "match.*": ("(settings, not a measurement)", "any", "any", "v1-cpu-resolved-defaults"),
    "head_dtype": ("SmolLM2-135M-Instruct", NOT_RECORDED, "T 1, logprobs = 5", "lm-head-grid"),
    "weight_update:abs_dlogp_*": (
        "tiny, fp32 (the fp32 default also SmolLM2: update-noise-fp32)",
        NOT_RECORDED,
        "the update scenarios'",
        "weight-update-gaps",
    ),
    "worker_stale_modules": (
        "tiny, tiny-tied; fp32",
        "AVX512-BF16",
        "the update scenarios'",
        "update-evidence-tolerance",
    ),
    "missing_tensors": (
        "tiny (a checkpoint without layer 1's MLP)",
        "AVX512-BF16",
        "(a count of tensors, not sampled)",
        "update-missing-tensors",
    ),
    "mixed_weight_tokens": (
        "tiny, SmolLM2-135M-Instruct; fp32",
        "AVX512-BF16",
        "the nopause scenarios' (T 1, 24 prompts, 32 tokens)",
        "update-nopause",
    ),
    "abs_dlogp_vs_labels": (
        "tiny, SmolLM2-135M-Instruct; fp32",
        "AVX512-BF16",
        "the nopause scenarios' (T 1, 24 prompts, 32 tokens)",
        "update-nopause",
    ),
    "post_update_tokens": (
        "tiny, fp32",
        NOT_RECORDED,
        "the update scenarios'",
        "weight-update-gaps",
    ),
    "version_labels": ("tiny, fp32", NOT_RECORDED, "the update scenarios'", "weight-update-gaps"),
    "stale_components": (
        "tiny, fp32",
        NOT_RECORDED,
        "the update scenarios'",
        "update-evidence-tolerance",
    ),
    "token_stream": ("tiny, fp32", NOT_RECORDED, "the update scenarios'", "reload-weights-v1"),
    "stale_share": (
        "SmolLM2-135M-Instruct, fp32 (bf16: not valid, inconclusive)",
        "AVX512-BF16",
        "T 1, arithmetic:24, seed 7",
        "paired-share",
    ),
    "gates": (
        "tiny (the frameworks' own gates, not parity's)",
        "AVX2-only",
        SAMPLED,
        "framework-numbers",
    ),
    "identity.*": ("SmolLM2-135M-Instruct, tiny", "any", "any", "generation-config-eos"),
    "drift.*": ("SmolLM2-135M-Instruct", "any", "any", "transformers-config-drift"),
}
# A finding's tolerance or margin key where it differs from the finding's name.
TOLERANCE_OF = {
    "offset_seqmean": "offset_mean",
    "abs_dlogp_seqmean": "abs_dlogp_mean",
    "kl_k3_seqmean": "kl_k3_mean",
}


def declared() -> list[tuple[str, str, str, object]]:
    """(where, finding, kind, category or None) for every declared finding: each category's,
    the runner's, `parity judge`'s (the logprobs category's token findings and the gates)."""
    rows = []
    for name, cat in categories.registry().items():
        rows += [(name, f, kind, cat) for f, kind in cat.findings.items()]
    rows += [("every category (runner)", f, k, None) for f, k in modelcheck.FINDINGS.items()]
    judge = {**logprobs.Logprobs.findings}
    rows += [("parity judge", f, k, logprobs.CATEGORY) for f, k in judge.items()]
    return rows


def _gate(finding: str) -> str | None:
    bare = finding.split(".", 1)[-1]
    metric = {
        "nemo_rl_token_mult_prob_error": "token_mult_prob_error",
        "nemo_rl_gen_kl_error": "gen_kl_error",
        "prime_rl_mismatch_kl": "mismatch_kl_mean",
    }.get(bare)
    if bare == "verl_health_warnings":
        return "0 of verl's health warnings (frameworks.md)"
    for gates in frameworks.GATES.values():
        for g in gates:
            if g.metric == metric:
                return f"{metric} {g.text()} (asked for: `--gate`, `gates`)"
    return None


def bound(where: str, finding: str, kind: str, cat) -> str:
    """The default bound as the code holds it."""
    if finding in frameworks.declared(("candidate", "baseline")):
        return _gate(finding) or "?"
    if kind == "count_limit":
        return "0 events"
    if finding == "stale_share":  # parity.verdicts.paired
        return f"share {paired.SHARE_LIMIT:g}, resolved at interval half-width <= {paired.RESOLUTION:g}"
    if kind == "equality":
        return "equal"
    key = TOLERANCE_OF.get(finding, finding)
    if where == "rl" and finding == "offset_seqmean":
        return f"{logprobs.Logprobs.tolerances['offset_mean']:g} (the logprobs `offset_mean`)"
    if cat is not None and key in (cat.margins or {}):
        return f"margin {cat.margins[key]:g}"
    tolerances = judging.TOLERANCES if where == "parity judge" else (cat.tolerances or {})
    if key in tolerances:
        return f"{tolerances[key]:g}"
    if cat is not None and "abs_dlogp_mean" in (cat.tolerances or {}):  # weight_update
        t = cat.tolerances
        fp32 = t.get("abs_dlogp_mean_fp32")
        extra = f" (bf16/fp16), {fp32:g} (fp32)" if fp32 is not None else ""
        return f"{t['abs_dlogp_mean']:g}{extra}"
    return "?"


def provenance(where: str, finding: str) -> tuple[str, str, str, str]:
    if finding in frameworks.declared(("candidate", "baseline")):
        return PROVENANCE["gates"]
    category = "logprobs" if where == "parity judge" else where
    for key in (f"{category}:{finding}", finding):
        if key in PROVENANCE:
            return PROVENANCE[key]
    for key, value in PROVENANCE.items():
        name = key.split(":", 1)[-1]
        scope = key.split(":", 1)[0] if ":" in key else category
        if name.endswith("*") and finding.startswith(name[:-1]) and scope == category:
            return value
    raise KeyError(f"no provenance for {where}:{finding}: add it to PROVENANCE")


def render() -> str:
    lines = [
        "# Every finding, its default and where it was measured",
        "",
        "Generated by `scripts/findings_table.py` from the code's declarations (each category's",
        "`findings`, the runner's `parity.run.modelcheck.FINDINGS`, and `parity judge`, which",
        "judges by the logprobs category's findings); `tests/test_findings_doc.py` fails when a",
        "declared finding is missing here or a default moved. Kinds:",
        '[methodology](methodology.md). "not recorded": the measurement does not say which CPU',
        "type it ran on; no default here has been checked on both CPU types unless it says so",
        "([cpu-types](measurements.md#cpu-types)). The gate findings are the frameworks'",
        "documented gates ([frameworks.md](frameworks.md)), not parity's choice: the run named",
        "shows where parity's numbers met or missed them.",
        "",
        "| where | finding | kind | default bound | measured on: model | CPU type | sampling "
        "| measurement |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for where, finding, kind, cat in declared():
        model, cpu, sampling, anchor = provenance(where, finding)
        lines.append(
            f"| {where} | `{finding}` | {kind} | {bound(where, finding, kind, cat)} | {model} "
            f"| {cpu} | {sampling} | [{anchor}](measurements.md#{anchor}) |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true", help="exit 1 when docs/findings.md is stale")
    text = render()
    if ap.parse_args().check:
        stale = not DOC.exists() or DOC.read_text() != text
        print("docs/findings.md is out of date" if stale else "docs/findings.md is up to date")
        return int(stale)
    DOC.write_text(text)
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
