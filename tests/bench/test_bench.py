"""parity.bench's table and metrics benchmark, the build phase of a run's timings, and the
faster metrics giving the previous code's results bit for bit. No engines, no timing asserts:
a fake clock where time matters."""

import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fault_fakes import FakeCategory, install_fakes, quiet, scenario, write_shim
from rich.console import Console

from parity import categories
from parity.bench import main as bench
from parity.bench import metrics as bench_metrics
from parity.bench import table as bench_table
from parity.run import runner
from parity.setup import envs, envspecs, phases
from parity.setup.modelbuild import build_once
from parity.verdicts import formulas, metrics

DATA = Path(__file__).resolve().parents[1] / "fixtures"


# ------------------------------------------------------------------------------ the table


def _report(**timings) -> dict:
    base = {
        "prepare_s": 2.0,
        "validate_s": 3.0,
        "engine_start_s": 20.0,
        "generate_s": 60.0,
        "engine_stop_s": 1.5,
        "score_s": 10.0,
        "judge_s": 1.0,
        "total_s": 100.0,
        "build_s": 2.0,
        "report_s": 1.0,
        "tokens_generated": 6000,
    }
    return {
        "run_id": "r",
        "timings": {**base, **timings},
        "engines": [{"n": 1, "start_s": 12.0}, {"n": 2, "start_s": 8.0}, {"n": 3}],
        "reference": {"m:float32:keep_ties": {"scored_tokens": 2000}},
        "scenarios": [],
    }


def _row(table: dict, prefix: str) -> dict:
    (row,) = [r for r in table["rows"] if r["phase"].startswith(prefix)]
    return row


def test_table_adds_up_and_meets_the_target():
    t = bench_table.phase_table(_report())
    assert t["wall_s"] == 101.0  # total + report writing
    assert sum(r["seconds"] for r in t["rows"]) == pytest.approx(t["wall_s"])
    assert t["floor_s"] == 90.0  # starts + generation + reference forward
    assert t["overhead_s"] == pytest.approx(101.0 - 2.0 - 90.0)
    assert t["overhead_share"] == pytest.approx(9.0 / 101.0)
    assert t["meets_target"] is False  # 8.9 % > 5 %
    assert _row(t, "engine starts")["phase"] == "engine starts (2)"  # engine 3 never started
    assert _row(t, "generation")["tokens_per_s"] == 100.0
    assert _row(t, "reference")["tokens_per_s"] == 200.0
    assert _row(t, "engine stops")["kind"] == "overhead"
    phases_s = 2 + 5 + 20 + 60 + 1.5 + 10 + 1 + 1
    assert _row(t, "other")["seconds"] == pytest.approx(101.0 - phases_s)


def test_table_meets_the_target_when_the_harness_is_thin():
    t = bench_table.phase_table(
        _report(prepare_s=0.5, validate_s=0.5, judge_s=0.5, report_s=0.5, total_s=94.0)
    )
    assert t["overhead_s"] == pytest.approx(94.5 - 2.0 - 90.0)
    assert t["meets_target"] is True


def test_builds_are_not_overhead():
    slow_build = bench_table.phase_table(_report(build_s=50.0, total_s=145.0, report_s=0.0))
    assert slow_build["overhead_s"] == pytest.approx(145.0 - 50.0 - 90.0)
    assert slow_build["meets_target"] is True  # 5 s of 145


def test_table_of_a_real_report_without_the_new_keys():
    data = json.loads((DATA / "diff-vllm-0.32.json").read_text())
    t = bench_table.phase_table(data)
    timings = data["timings"]
    assert t["wall_s"] == pytest.approx(timings["total_s"])
    # Older reports: builds unknown (overhead), tokens from the scenarios' non-reused roles.
    assert t["overhead_s"] == pytest.approx(timings["harness_overhead_s"])
    assert not any(t["recorded"].values())  # build_s, engine_stop_s, report_s, tokens_generated
    gen = _row(t, "generation")
    assert gen["tokens"] == 1644
    assert gen["tokens_per_s"] == pytest.approx(1644 / timings["generate_s"])
    assert _row(t, "reference")["tokens_per_s"] is None


def test_render_and_the_table_command(tmp_path, monkeypatch, capsys):
    console = Console(record=True, width=120, file=io.StringIO())
    bench_table.render(bench_table.phase_table(_report()), console)
    text = console.export_text()
    for phase in (
        "builds",
        "prepare + validate",
        "engine starts (2)",
        "generation",
        "engine stops",
        "reference forward",
        "judging",
        "report writing",
        "floor",
        "overhead",
        "misses 5%",
        "wall",
    ):
        assert phase in text
    (tmp_path / "report.json").write_text(json.dumps(_report()))
    monkeypatch.setattr(sys, "argv", ["bench", "table", str(tmp_path), "--json"])
    bench.main()
    out = json.loads(capsys.readouterr().out)
    assert out["floor_s"] == 90.0 and out["meets_target"] is False


def test_bench_run_passes_the_check_arguments_on(tmp_path, monkeypatch, capsys):
    seen = {}

    def fake_check(args, output):
        seen.update(args=args, output=output)
        output.mkdir(parents=True)
        (output / "report.json").write_text(json.dumps(_report()))
        return 1, 123.0

    monkeypatch.setattr(bench_table, "run_check", fake_check)
    code = bench.run_main(
        ["scenarios/x.toml", "--model", "tiny", "-o", str(tmp_path / "o"), "--json"]
    )
    assert code == 1
    assert seen == {"args": ["scenarios/x.toml", "--model", "tiny"], "output": tmp_path / "o"}
    out = json.loads(capsys.readouterr().out)
    assert out["check_exit_code"] == 1 and out["process_wall_s"] == 123.0


# ------------------------------------------------------------------------------ build phase


@pytest.fixture
def clock(monkeypatch):
    """time.perf_counter as a clock that moves only when a test advances it."""
    now = [1000.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    return now


def test_a_build_counts_once_and_a_cache_hit_not(tmp_path, clock):
    def build(tmp):
        clock[0] += 3.0
        (tmp / "config.json").write_text("{}")

    before = phases.build_seconds()
    target = tmp_path / "models" / "m"
    assert build_once(target, build, {"name": "m"}, False, quiet) == target
    assert phases.build_seconds() - before == 3.0
    build_once(target, build, {"name": "m"}, False, quiet)  # built: nothing runs
    assert phases.build_seconds() - before == 3.0


def test_nested_builds_count_once(clock):
    before = phases.build_seconds()
    with phases.building():
        clock[0] += 1.0
        with phases.building():  # perturb building its base model
            clock[0] += 2.0
    assert phases.build_seconds() - before == 3.0


def test_env_build_counts_and_a_built_env_not(tmp_path, monkeypatch, clock):
    monkeypatch.setenv("PARITY_CACHE_DIR", str(tmp_path))
    spec = envspecs.EnvSpec("bench-test", requirements=("nothing==1",))

    def fake_build(spec, root, log):
        clock[0] += 7.0
        root.mkdir(parents=True)
        (root / envs.STAMP).write_text(json.dumps({"preload": []}))

    monkeypatch.setattr(envs, "_build", fake_build)
    before = phases.build_seconds()
    python = envs.ensure_env(spec, log=quiet)
    assert python == envs.env_dir(spec) / "bin" / "python"
    assert phases.build_seconds() - before == 7.0
    envs.ensure_env(spec, log=quiet)
    assert phases.build_seconds() - before == 7.0


class BuildingCategory(FakeCategory):
    """Builds a checkpoint (5 s) and generates (2 s) in each role's engine work."""

    def __init__(self, clock):
        self.clock = clock

    def drive(self, engine, res, role, prompts, log):
        with phases.building():
            self.clock[0] += 5.0
        self.clock[0] += 2.0
        super().drive(engine, res, role, prompts, log)


def test_runner_reports_builds_as_their_own_phase(tmp_path, monkeypatch, clock):
    monkeypatch.setenv("PARITY_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "bin").mkdir()
    install_fakes(monkeypatch.setattr, monkeypatch.setitem, write_shim(tmp_path / "bin"))
    monkeypatch.setitem(categories.registry(), "fake", BuildingCategory(clock))
    run = runner.run(
        [scenario("a"), scenario("b", items=("a", "b", "c"))], tmp_path / "out", log=quiet
    )
    t = run.timings
    assert t["build_s"] == 10.0
    assert t["generate_s"] == 4.0  # the builds inside the engine work left out
    assert [r.runs["candidate"].generate_s for r in run.results] == [2.0, 2.0]
    assert t["tokens_generated"] == 2 * 2 + 3 * 2  # two tokens per prompt
    assert t["engine_stop_s"] == 0.0  # the fake engine stops at once
    assert t["total_s"] == 14.0
    assert t["harness_overhead_s"] == pytest.approx(
        t["total_s"] - t["engine_start_s"] - t["generate_s"] - t["score_s"] - t["build_s"]
    )


# ------------------------------------------------------------------------------ metrics bench


def test_metrics_bench_times_every_function():
    result = bench_metrics.run(10_000, repeat=1)
    assert result["n_tokens"] == 10_000
    assert set(result["functions"]) == {
        "_common.arrays",
        "metrics.summarize",
        "metrics.per_sequence",
        "metrics.excluded_rates",
        "_common.clusters",
        "stats.non_inferiority",
        "stats.equivalence_tost",
        "stats.threshold",
    }
    assert set(result["categories"]) == {
        "rl.check (both roles)",
        "logprobs.check (all tokens, one role)",
    }
    assert all(s >= 0 for s in [*result["functions"].values(), *result["categories"].values()])
    console = Console(record=True, width=120, file=io.StringIO())
    bench_metrics.render(result, console)
    assert "stats.threshold" in console.export_text()


def test_synthetic_data_has_the_shape_of_a_run():
    data = bench_metrics.synthetic(20_000, seed=1, samples=4)
    assert set(data) == {"baseline", "candidate"}
    seqs, scores, rewards = data["candidate"]
    lengths = [len(s.token_ids) for s in seqs]
    assert sum(lengths) == 10_000 and max(lengths) <= 200 and len(rewards) == len(seqs)
    assert [s.prompt_index for s in seqs[:8]] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert all(len(r.processed_logprob) == n for r, n in zip(scores, lengths))
    excluded = sum(int(np.isneginf(r.processed_logprob).sum()) for r in scores)
    assert 0 < excluded < 200  # some masked tokens, as real runs have


# ------------------------------------------------------------------------------ identical results


def _old_summaries(ref, cand, ref_entropy, clip, seq_clip=formulas.GSPO_CLIP):
    """summarize and per_sequence as they were before the speed-up (parity 57af1a3^): every
    per-token metric on all tokens, then masked per metric. Returns (summary, per_sequence)."""
    refs = [np.asarray(a, dtype=np.float64) for a in ref]
    cands = [np.asarray(a, dtype=np.float64) for a in cand]
    ents = None if ref_entropy is None else [np.asarray(a, dtype=np.float64) for a in ref_entropy]
    lengths = np.array([a.size for a in refs], dtype=np.int64)
    fr = np.concatenate(refs) if refs else np.zeros(0)
    fc = np.concatenate(cands) if cands else np.zeros(0)
    fe = None if ents is None else (np.concatenate(ents) if ents else np.zeros(0))
    seq = np.repeat(np.arange(len(refs)), lengths)
    cand_excl = np.isneginf(fc)
    ref_excl = np.isneginf(fr) & ~cand_excl
    valid = ~(ref_excl | cand_excl)
    valid_seq = seq[valid]
    counts = np.bincount(valid_seq, minlength=lengths.size)
    all_valid = bool(valid.all())

    def pick(v):
        return v if all_valid else v[valid]

    def seq_means(v):
        sums = np.bincount(valid_seq, weights=pick(v), minlength=lengths.size)
        out = np.full(lengths.size, np.nan)
        np.divide(sums, counts, out=out, where=counts > 0)
        return out

    def mean(x):
        x = x[~np.isnan(x)]
        return float(np.mean(x)) if x.size else float("nan")

    with np.errstate(invalid="ignore", over="ignore"):
        tok = {
            "r": formulas.log_ratio(fr, fc),
            "abs_dlogp": formulas.abs_dlogp(fr, fc),
            "abs_dprob": formulas.abs_dprob(fr, fc),
            "kl_k1": formulas.kl_k1(fr, fc),
            "kl_k2": formulas.kl_k2(fr, fc),
            "kl_k3": formulas.kl_k3(fr, fc),
            "clipped": formulas.token_clipped(fr, fc, clip).astype(np.float64),
        }
    names = ("abs_dlogp", "abs_dprob", "kl_k1", "kl_k2", "kl_k3")
    n_ref = np.bincount(seq[ref_excl], minlength=lengths.size).astype(np.int64)
    rate = np.full(lengths.size, np.nan)
    np.divide(n_ref, lengths, out=rate, where=lengths > 0)
    per = {
        "n_tokens": lengths.astype(np.int64),
        "n_masked_tokens": lengths - counts,
        "n_ref_excluded": n_ref,
        "ref_excluded_rate": rate,
        "n_cand_excluded": np.bincount(seq[cand_excl], minlength=lengths.size).astype(np.int64),
    }
    for name in names:
        per[f"{name}_mean"] = seq_means(tok[name])
    per["clip_rate_token"] = seq_means(tok["clipped"])
    r_mean = seq_means(tok["r"])
    with np.errstate(invalid="ignore"):
        gspo = ((r_mean < seq_clip.log_low) | (r_mean > seq_clip.log_high)).astype(np.float64)
    per["clipped_seq"] = np.where(np.isnan(r_mean), np.nan, gspo)
    per["entropy_cand_mc"] = seq_means(-fc)
    if fe is not None:
        per["entropy_ref_mean"] = seq_means(fe)
    n_tokens, n_masked = int(lengths.sum()), int(lengths.sum() - counts.sum())
    n_ref_excl = int(ref_excl.sum())

    def share(n):
        return n / n_tokens if n_tokens else float("nan")

    out = {
        "n_seqs": len(ref),
        "n_tokens": n_tokens,
        "n_masked_tokens": n_masked,
        "masked_token_rate": share(n_masked),
        "n_ref_excluded": n_ref_excl,
        "ref_excluded_rate": share(n_ref_excl),
        "n_cand_excluded": int(cand_excl.sum()),
    }
    v = {name: pick(x) for name, x in tok.items()}
    adl = v["abs_dlogp"]
    out["abs_dlogp_mean"] = mean(adl)
    for q in (50, 99):
        out[f"abs_dlogp_p{q}"] = float(np.percentile(adl, q)) if adl.size else float("nan")
    out["abs_dlogp_max"] = float(np.max(adl)) if adl.size else float("nan")
    for name in names[1:]:
        out[f"{name}_mean"] = mean(v[name])
    out["clip_rate_token"] = mean(v["clipped"])
    out["clip_rate_seq"] = mean(per["clipped_seq"])
    out["ess_norm"] = formulas.ess_normalized(v["r"])
    out["entropy_cand_mc"] = mean(-pick(fc))
    if fe is not None:
        out["entropy_ref_mean"] = mean(pick(fe))
    for name in names:
        out[f"{name}_seqmean"] = mean(per[f"{name}_mean"])
    out["clip_rate_token_seqmean"] = mean(per["clip_rate_token"])
    out["entropy_cand_mc_seqmean"] = mean(per["entropy_cand_mc"])
    if fe is not None:
        out["entropy_ref_seqmean"] = mean(per["entropy_ref_mean"])
    return out, per


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        x, y = np.asarray(a[k]), np.asarray(b[k])
        assert x.dtype == y.dtype and x.shape == y.shape, k
        assert np.array_equal(x, y, equal_nan=True), (k, a[k], b[k])  # bit for bit, NaN = NaN


@pytest.mark.parametrize("masked", [0.0, 0.01, 0.5])
def test_metrics_match_the_previous_code_bit_for_bit(masked):
    rng = np.random.default_rng(15)
    for trial in range(40):
        ref, cand, ent = [], [], []
        for _ in range(int(rng.integers(0, 25))):
            n = int(rng.integers(0, 300))
            r = -rng.gamma(0.5, 1.0, n)
            c = np.minimum(r + rng.normal(0, rng.choice([1e-3, 0.1, 3.0]), n), 0.0)
            r[rng.random(n) < masked] = -np.inf
            c[rng.random(n) < masked / 3] = -np.inf
            ref.append(r), cand.append(c), ent.append(rng.gamma(2.0, 0.5, n))
        entropy = ent if trial % 2 else None
        clip = formulas.ClipRange(0.2, 0.28)
        summary, per = _old_summaries(ref, cand, entropy, clip)
        _same(metrics.summarize(ref, cand, entropy, clip), summary)
        _same(metrics.per_sequence(ref, cand, entropy, clip), per)


def test_metrics_match_the_previous_code_on_a_bench_sized_batch():
    seqs, scores, _ = bench_metrics.synthetic(200_000, seed=3)["candidate"]
    cand = [np.asarray(s.logprobs) for s in seqs]
    ref = [r.processed_logprob for r in scores]
    ent = [r.entropy for r in scores]
    summary, per = _old_summaries(ref, cand, ent, formulas.ClipRange())
    _same(metrics.summarize(ref, cand, ent), summary)
    _same(metrics.per_sequence(ref, cand, ent), per)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_and_plus_inf_still_refused_with_their_count(bad):
    with pytest.raises(ValueError, match="ref logprobs contain 2 NaN/\\+inf values"):
        metrics.summarize([np.array([bad, -1.0, bad])], [np.array([-1.0, -1.0, -1.0])])
    with pytest.raises(ValueError, match="cand logprobs contain 1 NaN/\\+inf values"):
        metrics.per_sequence([np.array([-1.0])], [np.array([bad])])


def test_bind_bench_tries_auto_one_core_and_every_core():
    from parity.bench.bind import bindings_for

    assert bindings_for([0, 1]) == ["auto", "0", "0-1"]
    assert bindings_for([3]) == ["auto", "3"]
    assert bindings_for([0, 2, 5]) == ["auto", "0", "0,2,5"]


def test_other_trainer_side_scoring_counts_as_reference_time():
    """The weight-update trainer's forwards (old and new checkpoint) are reference time, not
    harness overhead: References.add_seconds adds them to seconds() and to stats()."""
    from parity.run.scoring import References

    refs = References(lambda m: None)
    try:
        assert refs.seconds() == 0.0
        refs.add_seconds("update trainer", 2.5, 100)
        refs.add_seconds("update trainer", 0.5, 20)
        assert refs.seconds() == 3.0
        assert refs.stats()["update trainer"] == {"forward_s": 3.0, "scored_tokens": 120}
    finally:
        refs.close()
