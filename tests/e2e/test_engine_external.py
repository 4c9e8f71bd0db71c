"""Real vLLM V1 on the tiny model, the external-trainer workflow end to end: export the sequences
(nothing judged), score them with the trainer script, judge a second run from the scores file
(the same verdict and numbers as the HF reference; a shifted file fails), tokens.parquet of
both runs."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import IN_PROCESS_V1, run_cli

from parity.data import schema as data_schema
from parity.data import tables
from parity.trainer import external

SCENARIO = """# External trainer scores (test): V1 with the V0-parity settings, logprob semantics.
name = "{name}"
category = "logprobs"
expect = "{expect}"
[prompts]
source = "arithmetic:64"
[sampling]
temperature = 0.7
top_p = 0.9
top_k = 50
max_tokens = 48
seed = 1234
[candidate]
profile = "v1-parity"
"""


def write(tmp_path, name, expect="pass", scores=None):
    path = tmp_path / f"{name}.toml"
    path.write_text(
        SCENARIO.format(name=name, expect=expect)
        # The scores file's trainer replays top-k/top-p (parity.trainer.external score writes the
        # processed logprobs): the HF reference is judged by the same semantics.
        + '[reference]\nsemantics = "processed"\n'
        + (f'scores = "{scores}"\n' if scores else "")
    )
    return path


def by_name(report):
    return {s["name"]: s for s in report["scenarios"]}


def test_export_score_and_judge_from_file(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv(*IN_PROCESS_V1)
    hf = write(tmp_path, "ext-hf")
    seqs = tmp_path / "seqs.parquet"
    first = tmp_path / "export"
    result = run_cli(
        [
            "check",
            str(hf),
            "--model",
            "tiny",
            "--export-sequences",
            str(seqs),
            "--output",
            str(first),
        ]
    )
    assert result.exit_code == 125, result.output  # nothing judged: never a pass
    report = json.loads((first / "report.json").read_text())
    (sc,) = report["scenarios"]
    assert (sc["verdict"]["outcome"], sc["verdict"]["diagnosis"]) == (
        "unresolved",
        "sequences_exported",
    )
    assert report["reference"] == {}  # no reference model was loaded
    cand = sc["engines"]["candidate"]
    n_seqs, n_tokens = cand["n_sequences"], cand["n_tokens"]
    assert report["export"]["sequences"] == n_seqs == 64
    table = pq.read_table(first / data_schema.FILE)
    assert table.column_names == list(data_schema.COLUMNS)
    assert table.num_rows == n_tokens == report["tokens"]["rows"]

    scores = tmp_path / "scores.parquet"
    assert external.main(["score", str(seqs), str(scores), "--model", "tiny"]) == 0
    cols = tables.read_columns(scores)
    cols["trainer_logprob"] = [x - 0.5 for x in cols["trainer_logprob"]]
    tables.write_rows(cols, tmp_path / "shifted.parquet")

    second = tmp_path / "judged"
    files = [
        hf,
        write(tmp_path, "ext-scores", scores="scores.parquet"),
        write(tmp_path, "ext-shifted", "fail", scores="shifted.parquet"),
    ]
    result = run_cli(["check", *map(str, files), "--model", "tiny", "--output", str(second)])
    report = json.loads((second / "report.json").read_text())
    s = by_name(report)
    if s["ext-scores"]["verdict"]["diagnosis"] == "scores_missing":
        # The honest verdict when the engine does not regenerate the exported tokens: seeded
        # vLLM CPU runs have been token-identical run to run on the machines seen (docs/measurements.md#reproducibility),
        # but that is the hardware's property, not parity's.
        assert s["ext-scores"]["verdict"]["outcome"] == "inconclusive"
        pytest.skip(
            "this machine's engine did not regenerate the exported sequences token for "
            f"token: {s['ext-scores']['verdict']['message']}"
        )
    assert result.exit_code == 0, result.output
    assert s["ext-hf"]["verdict"]["outcome"] == s["ext-scores"]["verdict"]["outcome"] == "pass"
    assert s["ext-shifted"]["verdict"]["outcome"] == "fail", s["ext-shifted"]["verdict"]
    assert len(report["engines"]) == 1  # one engine start serves all three
    # The same reference code on the same device: equal up to float32 rounding (the run's
    # score cache stores float32; batches are padded differently).
    a, b = (s[n]["metrics"]["vs_processed"] for n in ("ext-hf", "ext-scores"))
    for key in ("abs_dlogp_mean", "kl_k3_mean", "n_tokens", "entropy_ref_mean"):
        assert a[key] == pytest.approx(b[key], rel=1e-3, abs=1e-6), key
    assert report["reference"]["scores:scores.parquet:float32"]["scored_seqs"] == n_seqs
    hf_stats = [v for k, v in report["reference"].items() if not k.startswith("scores:")]
    assert hf_stats and all(v["device"] == "cpu" for v in hf_stats)

    table = pq.read_table(second / data_schema.FILE).to_pandas()
    assert len(table) == 3 * n_tokens == report["tokens"]["rows"]
    hf_rows, file_rows = (table[table.scenario == n] for n in ("ext-hf", "ext-scores"))
    assert np.allclose(
        hf_rows.trainer_logprob.to_numpy(),
        file_rows.trainer_logprob.to_numpy(),
        rtol=0,
        atol=1e-2,
        equal_nan=True,
    )  # bf16 forwards, other batches
    assert set(table.head_dtype) == {"float32"} and not table.trainer_logprob.isna().all()
