"""`parity judge` with the trainer frameworks' numbers: shown (metrics) on every group, the
--format's framework first, and a gate asked for with --gate that fails a dump parity's own
findings pass (the negative control) and passes where the gate holds."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from parity.cli import app
from parity.report.frameworks import TITLES

N_SEQS, N_TOK = 64, 32


def dump(tmp_path, noise, seed=0):
    """Long layout, engine = trainer + N(0, noise) per token."""
    rng = np.random.default_rng(seed)
    n = N_SEQS * N_TOK
    trainer = -0.5 - rng.gamma(0.4, 1.5, n)
    path = tmp_path / "dump.parquet"
    pq.write_table(
        pa.table(
            {
                "sequence_id": np.repeat(np.arange(N_SEQS), N_TOK),
                "position": np.tile(np.arange(N_TOK), N_SEQS),
                "engine_logprob": trainer + rng.normal(0.0, noise, n),
                "trainer_logprob": trainer,
            }
        ),
        path,
    )
    return path


def judge(tmp_path, path, *args):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["judge", str(path), "--output", str(out), *args])
    assert "Traceback" not in result.output, result.output
    if result.exit_code == 2:
        return result, None
    return result, json.loads((out / "report.json").read_text())


def test_numbers_are_metrics_by_default(tmp_path):
    result, data = judge(tmp_path, dump(tmp_path, 0.02))
    assert result.exit_code == 0, result.output
    g = data["groups"][0]
    n = g["frameworks"]
    assert n["n_tokens"] == N_SEQS * N_TOK
    assert 1.0 < n["nemo-rl"]["token_mult_prob_error"] < 1.05
    assert all(row["met"] for rows in n["gates"].values() for row in rows)
    assert not any(
        f["name"].startswith(("nemo", "prime", "verl")) for f in g["verdict"]["findings"]
    )
    md = (tmp_path / "out" / "report.md").read_text()
    assert (
        "Trainer frameworks' health numbers" in md and "| NeMo-RL | token_mult_prob_error |" in md
    )
    assert "NeMo-RL: token_mult_prob_error" in " ".join(result.output.split())


def test_format_puts_that_frameworks_numbers_first(tmp_path):
    path = dump(tmp_path, 0.02)
    for fmt, title in (
        ("verl", "verl rollout correction"),
        ("prime-rl", "prime-rl"),
        ("trl", "TRL (sequence_mask, clip_max 3)"),
    ):
        result, _ = judge(tmp_path, path, "--format", fmt)
        md = (tmp_path / "out" / "report.md").read_text()
        titles = tuple(f"| {t} |" for t in TITLES.values())
        first = next(line for line in md.splitlines() if line.startswith(titles))
        assert first.startswith(f"| {title} |"), (fmt, first)
        terminal = " ".join(result.output.split()).split("all: ")[1:]
        assert terminal[0].startswith(title), (fmt, terminal[:2])


def test_nemo_gate_fails_a_dump_that_parity_passes(tmp_path):
    # noise sd 0.065: mean |dlogp| 0.052 (parity's bound 0.06 holds) but mean exp|dlogp| 1.054
    # exceeds NeMo-RL's 1.05; prime-rl's mismatch KL (~0.002) stays under its 0.015.
    path = dump(tmp_path, 0.065)
    result, data = judge(tmp_path, path)
    assert result.exit_code == 0, result.output
    assert data["groups"][0]["frameworks"]["gates"]["nemo-rl"][0]["met"] is False

    result, data = judge(tmp_path, path, "--gate", "nemo-rl")
    assert result.exit_code == 1, result.output
    v = data["groups"][0]["verdict"]
    assert v["outcome"] == "fail" and v["diagnosis"] == "framework_gate"
    f = {x["name"]: x for x in v["findings"]}
    assert f["nemo_rl_token_mult_prob_error"]["outcome"] == "fail"
    assert f["nemo_rl_token_mult_prob_error"]["value"] > 1.05
    assert "token_mult_prob_error" in v["message"] and data["gates"] == ["nemo-rl"]
    assert 'failures="1"' in (tmp_path / "out" / "junit.xml").read_text()

    result, data = judge(tmp_path, path, "--gate", "prime-rl", "--gate", "verl")
    assert result.exit_code == 0, result.output
    names = {x["name"] for x in data["groups"][0]["verdict"]["findings"]}
    assert {"prime_rl_mismatch_kl", "verl_health_warnings"} <= names


def test_unknown_gate_is_bad_input(tmp_path):
    result, data = judge(tmp_path, dump(tmp_path, 0.02), "--gate", "nemo", "--gate", "trl")
    assert result.exit_code == 2 and data is None
    text = " ".join(result.output.split())
    assert "nemo" in text and "trl" in text and "nemo-rl, prime-rl, verl" in text


FIXTURE = Path(__file__).parent / "fixtures" / "tiny-logprobs-tokens.parquet"


def test_real_dump_gates_pass_for_processed_and_fail_for_raw_logprobs(tmp_path):
    """tokens.parquet of a real run (docs/measurements.md#framework-numbers): tiny, V1
    v1-parity (processed logprobs) and v1-defaults (raw: the negative control), 43 tokens each."""
    result, data = judge(tmp_path, FIXTURE, "--min-tokens", "40", "--gate", "nemo-rl")
    assert result.exit_code == 1, result.output
    groups = {g["name"]: g for g in data["groups"]}
    cols = pq.read_table(FIXTURE).to_pandas()
    for name, met in (("logprobs-processed", True), ("logprobs-raw-control", False)):
        g = groups[f"{name}/candidate"]
        rows = cols[(cols.scenario == name) & (cols.engine == "candidate")]
        r = (rows.trainer_logprob - rows.engine_logprob).to_numpy()
        nemo = g["frameworks"]["nemo-rl"]
        assert nemo["token_mult_prob_error"] == pytest.approx(np.mean(np.exp(np.abs(r))))
        assert nemo["gen_kl_error"] == pytest.approx(np.mean(np.exp(r) - 1 - r))
        outcomes = {f["outcome"] for f in g["verdict"]["findings"] if f["name"].startswith("nemo")}
        assert outcomes == ({"pass"} if met else {"fail"}), name
    raw = groups["logprobs-raw-control/candidate"]
    assert raw["frameworks"]["nemo-rl"]["token_mult_prob_error"] == pytest.approx(1.35, abs=0.005)
    assert raw["verdict"]["diagnosis"] == "systematic_offset"  # parity's own, kept
