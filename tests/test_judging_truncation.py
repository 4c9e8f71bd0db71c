"""`parity judge` and truncation bias: with a trainer_log_kept_mass column (parity's
tokens.parquet name) a tempered trainer's gap is diagnosed truncation_bias as the logprobs
category does (logprobs.truncation_offset); without it, a one-signed engine-above gap says
truncation bias is a likely cause and names the column that would confirm it."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from parity.cli import app
from parity.data import dumpcolumns, schema

N_SEQS, N_TOK = 64, 32


def dump(engine="processed", kept_column=True, seed=0):
    """A tempered trainer's logprobs with each position's log kept mass (top-p ~0.9: masses
    0.6-0.99) and an engine returning `engine`: "processed" (tempered - log kept mass, as vLLM
    renormalises over the kept set, + noise), "offset" (tempered + a constant 0.1 unrelated to
    the kept mass) or "tempered" (+ noise)."""
    rng = np.random.default_rng(seed)
    n = N_SEQS * N_TOK
    processed = -0.05 - rng.gamma(0.4, 1.5, n)  # the kept token's share of the kept mass
    kept = np.log(rng.uniform(0.6, 0.99, n))
    tempered = processed + kept
    noise = rng.normal(0.0, 0.01, n)
    eng = {"processed": processed, "offset": tempered + 0.1, "tempered": tempered}[engine]
    cols = {
        "sequence_id": np.repeat(np.arange(N_SEQS), N_TOK),
        "position": np.tile(np.arange(N_TOK), N_SEQS),
        "engine_logprob": np.minimum(eng + noise, 0.0),
        "trainer_logprob": tempered,
    }
    if kept_column:
        cols["trainer_log_kept_mass"] = kept
    return cols


def judged(tmp_path, cols):
    path = tmp_path / "dump.parquet"
    pq.write_table(pa.table(cols), path)
    result = CliRunner().invoke(app, ["judge", str(path), "--output", str(tmp_path / "out")])
    assert "Traceback" not in result.output
    report = tmp_path / "out" / "report.json"
    return result, json.loads(report.read_text()) if report.exists() else None


def test_the_column_is_named_as_in_parity_tokens_parquet():
    assert "trainer_log_kept_mass" in schema.COLUMNS
    assert "trainer_log_kept_mass" in dumpcolumns.CANONICAL


def test_a_kept_mass_column_diagnoses_truncation_bias(tmp_path):
    cols = dump("processed")
    result, data = judged(tmp_path, cols)
    assert result.exit_code == 1, result.output
    g = data["groups"][0]
    assert g["verdict"]["diagnosis"] == "truncation_bias", g["verdict"]["message"]
    assert g["truncation"]["mean_bias"] == pytest.approx(-cols["trainer_log_kept_mass"].mean())
    assert g["truncation"]["residual_outcome"] == "pass"
    assert "top_p = 1 and top_k off" in g["verdict"]["message"]


@pytest.mark.parametrize("engine", ["offset", "tempered"])
def test_other_gaps_with_the_column_are_not_truncation_bias(tmp_path, engine):
    # A constant offset fails, not as truncation_bias (the residual fails too); an engine
    # returning tempered logprobs passes.
    result, data = judged(tmp_path, dump(engine))
    g = data["groups"][0]
    assert g["verdict"]["diagnosis"] != "truncation_bias"
    assert result.exit_code == (1 if engine == "offset" else 0), g["verdict"]["message"]


def test_without_the_column_a_one_signed_gap_names_truncation_as_likely(tmp_path):
    result, data = judged(tmp_path, dump("processed", kept_column=False))
    assert result.exit_code == 1
    g = data["groups"][0]
    offset = next(f for f in g["verdict"]["findings"] if f["name"] == "offset_seqmean")
    assert offset["outcome"] == "fail" and "sits above" in offset["note"]
    assert g["verdict"]["diagnosis"] == "systematic_offset"
    message = g["verdict"]["message"]
    assert "truncation bias is a likely cause" in message and "trainer_log_kept_mass" in message
    assert g["truncation"] is None


def test_engine_below_the_trainer_gets_no_truncation_hint(tmp_path):
    cols = dump("tempered", kept_column=False)
    cols["engine_logprob"] = cols["engine_logprob"] - 0.1
    result, data = judged(tmp_path, cols)
    assert result.exit_code == 1
    assert "truncation bias" not in data["groups"][0]["verdict"]["message"]


def test_a_positive_kept_mass_is_refused(tmp_path):
    cols = dump("processed")
    cols["trainer_log_kept_mass"][5] = 0.3
    result, data = judged(tmp_path, cols)
    assert result.exit_code == 2 and data is None
    assert "trainer_log_kept_mass" in " ".join(result.output.split())
