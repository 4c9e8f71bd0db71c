"""Category `token_count`: every sequence the candidate engine returns has the max_tokens tokens
asked for, and the scenario's trainer-side scorer reproduces its logprobs within a tolerance."""

from __future__ import annotations

import math

from parity.categories.base import Category, sampling_for
from parity.verdicts import core


class TokenCount(Category):
    name = "token_count"
    summary = (
        "each sequence has max_tokens tokens, and the trainer's scorer reproduces its logprobs"
    )
    tolerances = {"abs_dlogp_max": 1e-6}
    diagnoses = {
        "wrong_length": "the engine returned other than max_tokens tokens: remove what stops it "
        "early (the echo engine's engine_args.stop_after) or ask for fewer tokens",
        "logprob_mismatch": "the engine's logprobs are not the trainer's: remove the engine's "
        "shift (the echo engine's engine_args.logprob_shift) or score with the engine's scorer",
    }
    findings = {"count.wrong_length": "count_limit", "logprob.abs_dlogp_max": "bound"}
    key_metric_name = "sequences without max_tokens tokens"

    def judge(self, res, refs):
        sc = res.scenario
        er = res.runs["candidate"]
        want = sampling_for(sc, "candidate").max_tokens
        seqs = er.sequences
        wrong = sum(len(s.token_ids) != want for s in seqs)
        scores = refs.get(res.model_path, sc.head_dtype, er).score(
            [(s.prompt_token_ids, s.token_ids) for s in seqs], sc.sampling
        )
        gap = max(
            (
                abs(a - float(b))
                for s, r in zip(seqs, scores)
                for a, b in zip(s.logprobs, r.processed_logprob)
            ),
            default=math.nan,
        )
        findings = [
            core.count_limit(
                "count.wrong_length",
                wrong,
                0,
                len(seqs),
                note=f"{wrong} of {len(seqs)} sequences do not have {want} tokens",
            ),
            core.bound("logprob.abs_dlogp_max", gap, sc.tolerances["abs_dlogp_max"]),
        ]
        pre = [core.at_least("sequences", len(seqs), 1, "the engine returned no sequences")]
        outcome = core.combine(findings, pre)
        headline = f"{wrong}/{len(seqs)} sequences without {want} tokens, max |dlogp| {gap:.3g}"
        detail = {"key_metric": float(wrong), "headline": headline, "abs_dlogp_max": gap}
        failed = [f.name for f in findings if f.outcome == "fail"]
        if not failed:
            return core.Verdict(outcome, None, headline, findings, pre), detail
        diagnosis = "wrong_length" if "count.wrong_length" in failed else "logprob_mismatch"
        return core.Verdict(
            "fail", diagnosis, f"{self.diagnoses[diagnosis]} ({headline})", findings, pre
        ), detail


CATEGORY = TokenCount()
