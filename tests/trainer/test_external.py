"""External trainer scores without engines: the content key, the sequences export of a run, a
scores file judged in place of the HF reference (pass, a shifted file fails, missing sequences
inconclusive), scores-file validation (exit 2 before anything runs), tokens.parquet of those
runs, and the reference device ([reference] device, --reference-device)."""

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_cli
from fault_fakes import FakeEngine, install_fakes, quiet

from parity import engines
from parity.categories.logprobs import CATEGORY as LOGPROBS
from parity.data import schema as data_schema
from parity.data import tables
from parity.engines.base import EngineSetting, SamplingSpec, Sequence
from parity.report import build as report_build
from parity.report import files as report_files
from parity.run import runner, tokens
from parity.run.scenario import Overrides, Scenario, ScenarioError, load_scenarios
from parity.trainer import external, scores_data
from parity.verdicts.formulas import ClipRange

SAMPLING = SamplingSpec(temperature=0.7, top_p=0.9, max_tokens=6)
N_PROMPTS, N_TOKENS = 24, 6


class VariedEngine(FakeEngine):
    """A process-free engine whose sequences differ per prompt (distinct content keys)."""

    def generate(self, prompts, sampling):
        return [
            Sequence(
                i,
                0,
                list(p) + [i],
                [(i * 7 + j) % 50 + 3 for j in range(N_TOKENS)],
                [-0.1 * (j + 1) - 0.01 * i for j in range(N_TOKENS)],
                text="x",
            )
            for i, p in enumerate(prompts)
        ]


@pytest.fixture
def fakes(monkeypatch, tmp_path):
    monkeypatch.setenv("PARITY_CACHE_DIR", str(tmp_path / "cache"))
    install_fakes(monkeypatch.setattr, monkeypatch.setitem, "/bin/false")
    monkeypatch.setitem(engines.ENGINES, "varied", f"{__name__}:VariedEngine")


def scenario(name: str, scores: Path | None = None, category: str = "logprobs") -> Scenario:
    return Scenario(
        Path(f"{name}.toml"),
        name,
        category,
        "",
        "fake-model",
        None,
        [f"p{i}" for i in range(N_PROMPTS)],
        0,
        False,
        SAMPLING,
        EngineSetting.make("varied", "harness", {}, profile="fake"),
        None,
        "float32",
        dict(LOGPROBS.tolerances),
        ClipRange(),
        min_tokens=0,
        scores=scores,
    )


def export_run(tmp_path, name="seqs.parquet"):
    out = tmp_path / "export"
    run = runner.run(
        [scenario("a"), scenario("f", category="fake")], out, log=quiet, export=tmp_path / name
    )
    return run, out


def scores_from_export(
    seqs: Path, out: Path, shift: float = 0.0, drop: int = 0, wide: bool = False
) -> None:
    """A scores file whose processed logprobs are the engine's own (+ shift), raw 1 lower."""
    cols = tables.read_columns(seqs)
    rows: dict[str, list] = {
        k: []
        for k in ("sequence_key", "position", "trainer_logprob", "trainer_raw_logprob", "entropy")
    }
    for key, lps in list(zip(cols["sequence_key"], cols["engine_logprobs"]))[drop:]:
        values = {
            "trainer_logprob": [x + shift for x in lps],
            "trainer_raw_logprob": [x - 1.0 for x in lps],
            "entropy": [1.0] * len(lps),
        }
        if wide:
            rows["sequence_key"].append(key)
            for c, v in values.items():
                rows[c].append(v)
            continue
        for pos in range(len(lps)):
            rows["sequence_key"].append(key)
            rows["position"].append(pos)
            for c, v in values.items():
                rows[c].append(v[pos])
    if wide:
        del rows["position"]
    tables.write_rows(rows, out)


def test_sequence_key_is_sha256_of_the_id_text():
    assert external.sequence_key([1, 2], [5]) == hashlib.sha256(b"1,2|5").hexdigest()
    assert external.sequence_key([1], [25]) != external.sequence_key([1, 2], [5])
    assert external.sequence_key([], []) == hashlib.sha256(b"|").hexdigest()


@pytest.mark.parametrize("name", ["seqs.parquet", "seqs.jsonl"])
def test_export_writes_sequences_and_judges_nothing(tmp_path, fakes, name):
    run, out = export_run(tmp_path, name)
    cols = tables.read_columns(tmp_path / name)
    assert len(cols["sequence_key"]) == N_PROMPTS and run.export["sequences"] == N_PROMPTS
    assert set(cols["scenario"]) == {"a"}  # the fake category cannot use a scores file
    assert cols["engine"][0] == "candidate" and cols["head_dtype"][0] == "float32"
    assert (cols["temperature"][0], cols["top_p"][0], cols["top_k"][0]) == (0.7, 0.9, 0)
    first = run.results[0].runs["candidate"].sequences[0]
    assert cols["prompt_token_ids"][0] == first.prompt_token_ids
    assert cols["token_ids"][0] == first.token_ids and cols["engine_logprobs"][0] == first.logprobs
    assert cols["sequence_key"][0] == external.sequence_key(first.prompt_token_ids, first.token_ids)
    for res in run.results:  # nothing judged, never a pass
        assert (res.verdict.outcome, res.verdict.diagnosis) == ("unresolved", "sequences_exported")
    assert "written to" in run.results[0].verdict.message
    assert "cannot be judged from a scores file" not in run.results[0].verdict.message
    assert report_build.exit_code(run) == 125
    data = report_files.write(run, out, report_build.exit_code(run))
    assert data["export"]["sequences"] == N_PROMPTS
    table = pq.read_table(out / data_schema.FILE)
    assert table.num_rows == 2 * N_PROMPTS * N_TOKENS == data["tokens"]["rows"]
    assert np.isnan(table.column("trainer_logprob").to_numpy()).all()


def test_scores_file_judges_like_a_reference(tmp_path, fakes):
    _, _ = export_run(tmp_path)
    seqs = tmp_path / "seqs.parquet"
    scores_from_export(seqs, tmp_path / "good.parquet")
    scores_from_export(seqs, tmp_path / "shifted.jsonl", shift=-0.5)
    scores_from_export(seqs, tmp_path / "wide.jsonl", wide=True)
    scores_from_export(seqs, tmp_path / "partial.parquet", drop=5)
    out = tmp_path / "judged"
    run = runner.run(
        [
            scenario("good", tmp_path / "good.parquet"),
            scenario("shifted", tmp_path / "shifted.jsonl"),
            scenario("wide", tmp_path / "wide.jsonl"),
            scenario("partial", tmp_path / "partial.parquet"),
        ],
        out,
        log=quiet,
    )
    v = {r.scenario.name: r.verdict for r in run.results}
    assert v["good"].outcome == "pass", v["good"].message
    assert v["wide"].outcome == "pass", v["wide"].message
    assert v["shifted"].outcome == "fail" and v["shifted"].diagnosis == "processed_mismatch"
    # Missing sequences never pass: inconclusive, how many and why.
    assert (v["partial"].outcome, v["partial"].diagnosis) == ("inconclusive", "scores_missing")
    assert v["partial"].message.startswith("5 of 24 sequences (candidate 5 of 24)")
    assert "not reproduce" in v["partial"].message
    stats = run.reference_stats
    assert stats["scores:good.parquet:float32"]["scored_seqs"] == N_PROMPTS
    assert stats["scores:partial.parquet:float32"]["missing_seqs"] == 5
    table = pq.read_table(out / data_schema.FILE).to_pandas()
    assert len(table) == 4 * N_PROMPTS * N_TOKENS
    good = table[table.scenario == "good"]
    assert np.allclose(good.trainer_logprob, good.engine_logprob)
    assert np.allclose(good.trainer_raw_logprob, good.engine_logprob - 1.0)
    assert set(good.head_dtype) == {"float32"} and good.weight_version.isna().all()
    assert table[table.scenario == "partial"].trainer_logprob.isna().all()


def test_tokens_table_matches_scores_to_sequences(tmp_path):
    """Rows for every role's tokens; scores matched by content, the scenario's head first."""
    from parity.trainer.reference import RefScore

    sc = scenario("t")
    res = runner.ScenarioResult(sc)
    seqs = [
        Sequence(0, 0, [1, 2], [5, 6, 7], [-1.0, -2.0, -3.0], weight_versions=[0, 0, 1]),
        Sequence(1, 0, [1, 3], [8], [-0.5]),
    ]
    res.runs["candidate"] = runner.EngineRun("candidate", sc.candidate, sequences=seqs)
    res.runs["baseline"] = runner.EngineRun(
        "baseline", sc.candidate, sequences=[Sequence(0, 0, [1, 2], [5, 6, 7], [-1.1, -2.1, -3.1])]
    )

    def score(v):
        return RefScore(np.full(3, v - 1), np.full(3, v), np.full(3, 0.5), np.zeros(3, bool))

    key = (0.7, 0.9, 0, (1, 2), (5, 6, 7))
    res.ref_scores[key] = [
        ("model", "keep_ties", score(-9.0)),
        ("float32", "keep_ties", score(-1.5)),
    ]
    table = tokens.build(runner.RunResult("r1", [res])).to_pandas()
    assert list(table.columns) == list(data_schema.COLUMNS)
    assert len(table) == 3 + 1 + 3
    cand = table[table.engine == "candidate"]
    assert list(cand.trainer_logprob[:3]) == [-1.5] * 3 and set(cand.head_dtype[:3]) == {"float32"}
    assert np.isnan(cand.trainer_logprob.iloc[3]) and cand.head_dtype.isna().iloc[3]
    assert list(cand.weight_version[:3]) == [0, 0, 1] and cand.weight_version.isna().iloc[3]
    assert list(cand.position) == [0, 1, 2, 0] and list(cand.sequence_id) == [0, 0, 0, 1]
    base = table[table.engine == "baseline"]
    assert list(base.engine_logprob) == [-1.1, -2.1, -3.1]
    assert list(base.trainer_logprob) == [-1.5] * 3
    schema = data_schema.schema()
    assert schema.field("token_id").type == pa.int64()
    assert schema.field("weight_version").type == pa.int64()


def test_tokens_written_for_an_interrupted_run(tmp_path, fakes):
    from fault_fakes import scenario as fake_scenario

    run = runner.run(
        [fake_scenario("a"), fake_scenario("b", judge="interrupt")], tmp_path, log=quiet
    )
    assert run.interrupted and run.tokens["rows"] == 2 * 2 * 2  # 2 scenarios x 2 prompts x 2
    assert pq.read_table(tmp_path / data_schema.FILE).num_rows == 8


def test_tokens_write_failure_makes_the_run_incomplete(tmp_path, fakes, monkeypatch):
    def disk_full(table, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tables, "write_parquet", disk_full)
    run = runner.run([scenario("a")], tmp_path, log=quiet)
    assert run.interrupted.startswith("tokens.parquet not written: OSError")
    assert report_build.exit_code(run) == 125
    data = report_files.write(run, tmp_path, report_build.exit_code(run))
    assert "No space left" in data["tokens"]["error"] and not (tmp_path / data_schema.FILE).exists()


# ----------------------------------------------------------------------------- validation

BASE = """name = "{name}"
category = "{category}"
model = "tiny"
[prompts]
source = "arithmetic:8"
[sampling]
temperature = 0.7
logprobs = 1
[candidate]
profile = "v1-defaults"
[reference]
"""


def scenario_file(tmp_path, name, reference: str, category="logprobs", extra=""):
    path = tmp_path / f"{name}.toml"
    path.write_text(BASE.format(name=name, category=category) + reference + "\n" + extra)
    return path


def write_scores(path: Path, **columns):
    tables.write_rows(columns, path)


def test_bad_scores_files_exit_2_with_every_problem(tmp_path):
    key = external.sequence_key([1], [2, 3])
    write_scores(
        tmp_path / "no-raw.parquet",
        sequence_key=[key, key],
        position=[0, 1],
        trainer_logprob=[-1.0, -2.0],
    )
    write_scores(
        tmp_path / "nan.jsonl",
        sequence_key=[key, key],
        position=[0, 1],
        trainer_logprob=[float("nan"), -2.0],
        trainer_raw_logprob=[-1.0, None],
    )
    write_scores(
        tmp_path / "gap.parquet",
        sequence_key=[key, key],
        position=[0, 2],
        trainer_logprob=[-1.0, -2.0],
        trainer_raw_logprob=[-1.0, -2.0],
    )
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    files = [
        scenario_file(tmp_path, "missing", 'scores = "nothing.parquet"'),
        scenario_file(tmp_path, "noraw", 'scores = "no-raw.parquet"'),
        scenario_file(tmp_path, "nan", 'scores = "nan.jsonl"'),
        scenario_file(tmp_path, "gap", 'scores = "gap.parquet"'),
        scenario_file(tmp_path, "junk", 'scores = "junk.parquet"'),
        scenario_file(tmp_path, "csv", 'scores = "x.csv"'),
        scenario_file(tmp_path, "lmhead", 'scores = "no-raw.parquet"', "lm_head"),
    ]
    result = run_cli(["check", *map(str, files), "--output", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert text.count(": reference.scores:") == 8, text
    assert "nothing.parquet: cannot read" in text
    assert "no trainer_raw_logprob column, which the logprobs category needs" in text
    assert "trainer_logprob: 1 NaN or missing value(s)" in text
    assert "trainer_raw_logprob: 1 NaN or missing value(s)" in text
    assert "positions are not 0, 1, ..., T-1" in text
    assert "not a readable parquet file" in text and "unknown format '.csv'" in text
    assert "the lm_head category cannot be judged from a scores file" in text
    assert not (tmp_path / "out").exists()  # nothing ran


def test_scores_file_for_another_sampling_is_refused(tmp_path):
    key = external.sequence_key([1], [2])
    write_scores(
        tmp_path / "s.parquet",
        sequence_key=[key],
        position=[0],
        trainer_logprob=[-1.0],
        trainer_raw_logprob=[-1.5],
        temperature=[1.0],
        top_p=[1.0],
        top_k=[0],
        head_dtype=["float32"],
    )
    with pytest.raises(ScenarioError) as err:
        load_scenarios([scenario_file(tmp_path, "x", 'scores = "s.parquet"')])
    (problem,) = err.value.problems
    assert problem[1] == "reference.scores" and "temperature=0.7" in problem[2]
    ok = (
        scenario_file(tmp_path, "y", 'scores = "s.parquet"')
        .read_text()
        .replace("temperature = 0.7", "temperature = 1.0\ntop_p = 0.5")
    )
    (tmp_path / "y.toml").write_text(ok)
    with pytest.raises(ScenarioError):  # top_p differs
        load_scenarios([tmp_path / "y.toml"])


def test_good_scores_file_parses_relative_to_the_scenario(tmp_path):
    key = external.sequence_key([1], [2])
    (tmp_path / "sub").mkdir()
    write_scores(
        tmp_path / "sub" / "s.jsonl",
        sequence_key=[key],
        trainer_logprob=[[-1.0]],
        trainer_raw_logprob=[[-1.5]],
    )
    (sc,) = load_scenarios([scenario_file(tmp_path / "sub", "x", 'scores = "s.jsonl"')])
    assert sc.scores == tmp_path / "sub" / "s.jsonl"
    data, problems = external.load_scores(sc.scores)
    assert problems == [] and data.columns == {"trainer_logprob", "trainer_raw_logprob"}
    scorer = external.ExternalScores(data, sc.sampling, "float32")
    (r,) = scorer.score([([1], [2])], sc.sampling)
    assert r.processed_logprob.tolist() == [-1.0] and r.entropy is None
    with pytest.raises(external.ScoresUnavailable):  # rl's tempered-only reference
        scorer.score([([1], [2])], SamplingSpec(temperature=1.0))
    with pytest.raises(external.ScoresMissing) as err:
        scorer.score([([1], [2]), ([1], [3])], sc.sampling)
    assert (err.value.n_missing, err.value.n_total) == (1, 2)


@pytest.mark.parametrize("category", ["weight_update", "runtime", "lm_head"])
def test_categories_that_score_otherwise_refuse_scores(tmp_path, category):
    path = scenario_file(tmp_path, "x", 'scores = "s.parquet"', category)
    with pytest.raises(ScenarioError) as err:
        load_scenarios([path])
    found = [p for p in err.value.problems if p[1] == "reference.scores"]
    assert found and f"the {category} category cannot be judged from a scores file" in found[0][2]


def test_export_option_needs_a_known_format(tmp_path):
    path = scenario_file(tmp_path, "x", "")
    result = run_cli(
        [
            "check",
            str(path),
            "--export-sequences",
            str(tmp_path / "seqs.csv"),
            "--output",
            str(tmp_path / "out"),
        ]
    )
    assert result.exit_code == 2 and "--export-sequences" in result.output
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- device


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_device_defaults_to_auto_and_cli_overrides(tmp_path, monkeypatch):
    monkeypatch.delenv("PARITY_REFERENCE_DEVICE", raising=False)
    path = scenario_file(tmp_path, "x", 'device = "cpu"')
    (sc,) = load_scenarios([path])
    assert (sc.reference_device, sc.provenance["reference_device"]) == ("cpu", "scenario")
    (sc,) = load_scenarios([scenario_file(tmp_path, "y", "")])
    assert (sc.reference_device, sc.provenance["reference_device"]) == ("auto", "default")
    monkeypatch.setenv("PARITY_REFERENCE_DEVICE", "cpu")
    (sc,) = load_scenarios([scenario_file(tmp_path, "y", "")])
    assert sc.provenance["reference_device"] == "env:PARITY_REFERENCE_DEVICE"
    (sc,) = load_scenarios([path], Overrides(reference_device="auto"))
    assert (sc.reference_device, sc.provenance["reference_device"]) == ("auto", "cli")


def test_unknown_device_is_a_problem(tmp_path):
    with pytest.raises(ScenarioError) as err:
        load_scenarios([scenario_file(tmp_path, "x", 'device = "gpu"')])
    assert [(Path(f).name, fld) for f, fld, _ in err.value.problems] == [
        ("x.toml", "reference.device")
    ]


@pytest.mark.skipif("_cuda()", reason="this machine has CUDA: a cuda device is usable here")
def test_cuda_without_cuda_exits_2_naming_the_field_or_option(tmp_path):
    files = [
        scenario_file(tmp_path, "x", 'device = "cuda"'),
        scenario_file(tmp_path, "y", 'device = "cuda:1"'),
    ]
    result = run_cli(["check", *map(str, files), "--output", str(tmp_path / "out")])
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "x.toml: reference.device: reference device 'cuda'" in text
    assert "y.toml: reference.device" in text and "sees no CUDA" in text
    result = run_cli(
        [
            "check",
            str(scenario_file(tmp_path, "z", "")),
            "--reference-device",
            "cuda",
            "--output",
            str(tmp_path / "out"),
        ]
    )
    assert result.exit_code == 2 and "--reference-device: reference.device" in " ".join(
        result.output.split()
    )
    assert not (tmp_path / "out").exists()


def test_references_record_device_and_scores(tmp_path, tiny_model):
    """The HF reference on the scenario's device (CUDA where this machine has it), recorded for
    tokens.parquet, with the device in the reference stats."""
    from parity.run.scoring import References

    device = "cuda" if _cuda() else "cpu"
    sc = scenario("d")
    sc.reference_device = device
    res = runner.ScenarioResult(sc, model_path=str(tiny_model))
    refs = References(quiet)
    try:
        with refs.judging(res):
            (r,) = refs.get(str(tiny_model), "float32").score([([1, 2, 3], [4, 5])], SAMPLING)
    finally:
        refs.close()
    assert len(r.processed_logprob) == 2 and np.isfinite(r.raw_logprob).all()
    (stats,) = refs.stats().values()
    assert stats["device"] == device and stats["scored_seqs"] + stats["cached_seqs"] == 1
    (entries,) = res.ref_scores.values()
    assert entries[0][:2] == ("float32", "keep_ties")


@pytest.mark.skipif(
    "not _cuda()",
    reason="no CUDA device on this machine: the CUDA path of the reference cannot run here",
)
def test_reference_on_cuda_matches_cpu(tmp_path, tiny_model):
    from parity.trainer import new_scorer as new_reference

    pairs = [([1, 2, 3], [4, 5, 6]), ([7, 8], [9])]
    cpu = new_reference(str(tiny_model), "float32", device="cpu").score(pairs, SAMPLING)
    gpu = new_reference(str(tiny_model), "float32", device="cuda").score(pairs, SAMPLING)
    for a, b in zip(cpu, gpu):
        assert np.allclose(a.processed_logprob, b.processed_logprob, atol=1e-3)


def test_trainer_script_scores_an_export(tmp_path, tiny_model):
    """python -m parity.trainer.external score: the scores of parity's own reference, every column."""
    from parity.trainer.reference import Reference

    seqs = tmp_path / "seqs.jsonl"
    pairs = [([1, 2, 3], [4, 5, 6]), ([7, 8], [9, 10])]
    cols = {k: [] for k in data_schema.EXPORT_COLUMNS}
    for i, (p, t) in enumerate(pairs):
        row = {
            "sequence_key": external.sequence_key(p, t),
            "scenario": "s",
            "engine": "candidate",
            "engine_label": "x",
            "sequence_id": i,
            "prompt_index": i,
            "sample_index": 0,
            "model": str(tiny_model),
            "prompt_token_ids": p,
            "token_ids": t,
            "engine_logprobs": [-1.0] * len(t),
            **external.context_of(SAMPLING, "float32"),
            "tie_rule": "keep_ties",
        }
        for k in cols:
            cols[k].append(row[k])
    tables.write_rows(cols, seqs)
    out = tmp_path / "scores.parquet"
    assert (
        external.main(["score", str(seqs), str(out), "--model", str(tiny_model), "--device", "cpu"])
        == 0
    )
    data, problems = external.load_scores(out)
    assert problems == [] and data.columns == set(scores_data.SCORE_COLUMNS)
    want = Reference(tiny_model, "float32", device="cpu").score(pairs, SAMPLING)
    got = external.ExternalScores(data, SAMPLING, "float32").score(pairs, SAMPLING)
    for a, b in zip(want, got):
        assert np.array_equal(a.processed_logprob, b.processed_logprob)
        assert np.array_equal(a.raw_logprob, b.raw_logprob)
        assert np.array_equal(a.entropy, b.entropy)
    with pytest.raises(SystemExit) as exc:
        external.main(["score", str(seqs), str(tmp_path / "x.csv"), "--model", "tiny"])
    assert exc.value.code == 2
