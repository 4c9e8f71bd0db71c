"""`parity judge`: per-token tables made elsewhere, judged with no engine. Every check has its
failing input: a known shift fails with the right numbers, the same table unshifted passes."""

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from parity import judging as judge
from parity.cli import app
from parity.data import dumps
from parity.verdicts import alignment, formulas, metrics

N_SEQS, N_TOK = 64, 32


def table(shift=0.0, noise=0.02, n_seqs=N_SEQS, n_tok=N_TOK, seed=0, floor=0.0):
    """Long layout: trainer logprobs mostly near 0 with a tail, engine = trainer + noise + shift
    (`floor` keeps trainer logprobs below -floor, so that a positive shift stays a logprob)."""
    rng = np.random.default_rng(seed)
    n = n_seqs * n_tok
    trainer = -floor - rng.gamma(0.4, 1.5, n)
    return {
        "sequence_id": np.repeat(np.arange(n_seqs), n_tok),
        "position": np.tile(np.arange(n_tok), n_seqs),
        "token_id": rng.integers(0, 32000, n),
        "engine_logprob": trainer + rng.normal(0.0, noise, n) + shift,
        "trainer_logprob": trainer,
    }


def write(path, cols):
    pq.write_table(pa.table(cols), path)
    return path


def run(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    return result


def judged(tmp_path, cols, *args, name="dump.parquet"):
    path = write(tmp_path / name, cols)
    result = run("judge", path, "--output", tmp_path / "out", *args)
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    return result, data


def bad(tmp_path, path, *args):
    result = run("judge", path, "--output", tmp_path / "out", *args)
    assert result.exit_code == 2, result.output
    assert not (tmp_path / "out").exists()
    return " ".join(result.output.split())  # rich wraps long lines


# ------------------------------------------------------------------------------ verdicts


def test_unshifted_dump_passes_and_writes_every_report(tmp_path):
    result, data = judged(tmp_path, table())
    assert result.exit_code == 0, result.output
    g = data["groups"][0]
    assert g["verdict"]["outcome"] == "pass" and g["verdict"]["diagnosis"] is None
    assert g["metrics"]["abs_dlogp_mean"] < 0.02
    for name in ("report.json", "report.md", "junit.xml"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    inp = data["input"]
    assert inp["sha256"] == dumps.sha256(tmp_path / "dump.parquet")
    assert inp["mapping"]["engine_logprob"] == "engine_logprob" and inp["layout"] == "long"
    assert data["provenance"]["parity_version"] and data["tolerances"]["abs_dlogp_mean"] == 0.06
    assert 'failures="0"' in (tmp_path / "out" / "junit.xml").read_text()


def test_shift_below_fails_with_the_right_numbers(tmp_path):
    result, data = judged(tmp_path, table(shift=-0.2))
    assert result.exit_code == 1, result.output
    g = data["groups"][0]
    m = g["metrics"]
    assert m["abs_dlogp_mean"] == pytest.approx(0.2, abs=0.003)
    assert g["shape"]["offset_mean"] == pytest.approx(-0.2, abs=0.003)
    # k3 by hand for r = ref - cand = +0.2: exp(0.2) - 1 - 0.2
    assert m["kl_k3_mean"] == pytest.approx(math.exp(0.2) - 1.2, abs=0.001)
    outcomes = {f["name"]: f["outcome"] for f in g["verdict"]["findings"]}
    assert outcomes == {
        "offset_seqmean": "fail",  # the signed gap, -0.2
        "abs_dlogp_seqmean": "fail",
        "kl_k3_seqmean": "fail",
        "abs_dlogp_p99": "pass",
        "excluded_rate": "pass",
        "engine_neginf": "pass",
        "absurd_logprob": "pass",
    }
    assert g["verdict"]["diagnosis"] == "systematic_offset"
    assert "processed_logprobs" in g["verdict"]["message"]
    assert "abs_dlogp_seqmean" in (tmp_path / "out" / "report.md").read_text()
    assert 'failures="1"' in (tmp_path / "out" / "junit.xml").read_text()
    assert "sit below the trainer's" in " ".join(result.output.split())  # the terminal too


def test_shift_above_names_the_trainer_side(tmp_path):
    result, data = judged(tmp_path, table(shift=0.2, floor=0.3))
    assert result.exit_code == 1
    g = data["groups"][0]
    assert g["shape"]["offset_mean"] == pytest.approx(0.2, abs=0.003)
    assert g["verdict"]["diagnosis"] == "systematic_offset"
    assert "above the trainer's" in g["verdict"]["message"]


def test_temperature_on_one_side_shows_as_a_slope(tmp_path):
    cols = table(noise=0.0)
    cols["engine_logprob"] = cols["trainer_logprob"] / 0.7  # log p / T, roughly
    _, data = judged(tmp_path, cols)
    g = data["groups"][0]
    assert g["shape"]["slope"] == pytest.approx(1 / 0.7 - 1, abs=1e-6)
    assert "temperature" in g["verdict"]["message"]


def test_tolerances_can_be_overridden(tmp_path):
    result, data = judged(
        tmp_path,
        table(shift=-0.2),
        "--tolerance",
        "abs_dlogp_mean=0.5",
        "--tolerance",
        "kl_k3_mean=0.05",
        "--tolerance",
        "offset_mean=0.5",
    )
    assert result.exit_code == 0, result.output
    assert data["tolerances"]["abs_dlogp_mean"] == 0.5


def test_heavy_tail_is_told_apart_from_a_shift(tmp_path):
    cols = table()
    rng = np.random.default_rng(1)
    tail = rng.random(cols["engine_logprob"].size) < 0.015
    cols["engine_logprob"] = np.where(tail, cols["trainer_logprob"] - 0.9, cols["engine_logprob"])
    result, data = judged(tmp_path, cols)
    g = data["groups"][0]
    assert result.exit_code == 1
    assert {f["name"]: f["outcome"] for f in g["verdict"]["findings"]}["abs_dlogp_p99"] == "fail"
    assert g["verdict"]["diagnosis"] == "heavy_tail" and "fp32" in g["verdict"]["message"]


def test_tokens_the_trainer_excludes_fail_as_support_mismatch(tmp_path):
    cols = table()
    cols["trainer_logprob"][::20] = -np.inf  # 5% of tokens: probability 0 for the trainer
    result, data = judged(tmp_path, cols)
    g = data["groups"][0]
    assert result.exit_code == 1
    assert g["metrics"]["n_ref_excluded"] == len(range(0, cols["trainer_logprob"].size, 20))
    assert g["verdict"]["diagnosis"] == "support_mismatch"


def test_excluded_tokens_tied_at_the_cut_do_not_count(tmp_path):
    cols = table()
    cols["trainer_logprob"][::20] = -np.inf
    cols["boundary_tie"] = np.isneginf(cols["trainer_logprob"])
    result, data = judged(tmp_path, cols)
    assert result.exit_code == 0, result.output
    g = data["groups"][0]
    assert g["metrics"]["n_tied_excluded"] == g["metrics"]["n_ref_excluded"] > 0
    assert "tied at the cut, not counted" in g["verdict"]["findings"][-1]["note"]


def test_too_few_tokens_is_inconclusive(tmp_path):
    result, data = judged(tmp_path, table(n_seqs=4, n_tok=10))
    assert result.exit_code == 125
    assert data["groups"][0]["verdict"]["outcome"] == "inconclusive"
    assert "too little data" in data["groups"][0]["verdict"]["message"]


def test_weight_versions_are_shown_and_the_worst_named(tmp_path):
    cols = table()
    cols["weight_version"] = cols["sequence_id"] % 4
    stale = cols["weight_version"] == 2
    cols["engine_logprob"] = np.where(stale, cols["engine_logprob"] - 0.3, cols["engine_logprob"])
    _, data = judged(tmp_path, cols)
    g = data["groups"][0]
    assert set(g["per_weight_version"]) == {"0", "1", "2", "3"}
    assert g["worst_weight_version"] == "2"
    assert g["per_weight_version"]["2"]["abs_dlogp_mean"] == pytest.approx(0.3, abs=0.005)
    assert g["per_weight_version"]["2"]["n_tokens"] == N_SEQS // 4 * N_TOK
    assert "worst weight version 2" in g["verdict"]["message"]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| version | " + " | ".join(judge.VERSION_KEYS) + " |" in md and "| 2 | 16 | 512 |" in md


def test_parity_tokens_parquet_is_judged_per_scenario_and_engine(tmp_path):
    parts = []
    for scenario, engine, shift in (
        ("a", "candidate", 0.0),
        ("a", "baseline", -0.2),
        ("b", "candidate", 0.0),
    ):
        cols = table(shift=shift, seed=len(parts))
        n = cols["engine_logprob"].size
        cols.update(
            run_id=np.full(n, "r1"),
            scenario=np.full(n, scenario),
            entropy=np.full(n, 1.5),
            prompt_index=cols["sequence_id"] // 2,
            engine=np.full(n, engine),
            engine_label=np.full(n, f"{engine}-label"),
            trainer_raw_logprob=cols["trainer_logprob"] - 0.01,
        )
        parts.append(cols)
    unscored = slice(-2 * N_TOK, None)  # two sequences not scored by the reference (probes)
    for k in ("trainer_logprob", "trainer_raw_logprob", "entropy"):
        parts[2][k][unscored] = np.nan
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    n = cols["engine_logprob"].size
    cols["weight_version"] = pa.array([None] * (n - 10) + [1] * 10, pa.int64())
    cols["boundary_tie"] = pa.array([None] * 5 + [False] * (n - 5), pa.bool_())
    result, data = judged(tmp_path, cols)
    assert result.exit_code == 1
    outcomes = {g["name"]: g["verdict"]["outcome"] for g in data["groups"]}
    assert outcomes == {"a/candidate": "pass", "a/baseline": "fail", "b/candidate": "pass"}
    b = data["groups"][2]
    assert b["dropped_unscored"] == 2 * N_TOK and b["n_sequences"] == N_SEQS - 2
    assert b["labels"]["engine_label"] == "candidate-label"
    assert data["input"]["mapping"]["prompt_id"] == "prompt_index"
    assert any("dropped 64 row(s)" in n for n in data["input"]["notes"])


# ------------------------------------------------- one check: the logprobs category's


def per_token(shift=0.0, excluded=0, n_prompts=24, samples=2, n_tok=30, seed=0):
    """Per sequence: trainer (processed) and engine logprobs, `excluded` tokens per sequence
    at -inf for the trainer (every other one tied at the cut), two samples per prompt."""
    rng = np.random.default_rng(seed)
    out = {k: [] for k in ("trainer", "engine", "entropy", "tie", "prompt")}
    for i in range(n_prompts * samples):
        trainer = -rng.gamma(0.4, 1.5, n_tok)
        out["engine"].append(trainer + rng.normal(0.0, 0.02, n_tok) + shift)
        trainer[:excluded] = -np.inf
        out["tie"].append(np.isneginf(trainer) & (np.arange(n_tok) % 2 == 1))
        out["trainer"].append(trainer)
        out["entropy"].append(rng.uniform(0.5, 2.0, n_tok))
        out["prompt"].append(i // samples)
    return out


def as_category(d):
    from parity.engines.base import Sequence
    from parity.trainer.reference import RefScore

    seqs = [
        Sequence(p, i % 2, [1], list(range(e.size)), list(e))
        for i, (p, e) in enumerate(zip(d["prompt"], d["engine"]))
    ]
    scores = [RefScore(t - 0.3, t, h, b) for t, h, b in zip(d["trainer"], d["entropy"], d["tie"])]
    return seqs, scores


def as_group(d):
    return dumps.Group(
        "all",
        {},
        list(range(len(d["engine"]))),
        d["engine"],
        d["trainer"],
        entropy=d["entropy"],
        boundary_tie=d["tie"],
        prompt_ids=np.asarray(d["prompt"]),
    )


@pytest.mark.parametrize(
    "kwargs,outcome",
    [
        ({}, "pass"),
        ({"shift": -0.2}, "fail"),
        ({"excluded": 2}, "fail"),
        ({"excluded": 4}, "fail"),  # half tied: still 2 of 30 per sequence
        ({"n_prompts": 3}, "inconclusive"),
    ],
)
def test_judge_and_the_logprobs_category_judge_alike(kwargs, outcome):
    """The same per-token data through `parity judge` and the logprobs category: the same
    findings (values, limits, intervals, p-values, outcomes), precondition and metrics; only
    the words for the tokens differ (scored by a dump, sampled by an engine)."""
    from parity.categories import _common, logprobs

    d = per_token(**kwargs)
    tolerances, clip, min_tokens, _ = judge.options([])
    cat, cat_detail = logprobs.check(*as_category(d), tolerances, clip, min_tokens)
    jud, jud_detail = judge.judge_group(as_group(d), tolerances, clip, min_tokens)
    assert cat.outcome == jud.outcome == outcome
    assert json.dumps(cat_detail["vs_processed"]) == json.dumps(jud_detail["metrics"])

    def worded(verdict, words):
        out = json.dumps([verdict.to_dict()[k] for k in ("findings", "preconditions")])
        return out.replace(words.excluded, "EXCLUDED").replace(words.tokens, "TOKENS")

    assert worded(cat, _common.SAMPLED) == worded(jud, judge.SCORED)
    assert cat.findings[-1].note != jud.findings[-1].note  # the words do differ
    # and parity judge's findings are the shared function's, exactly
    shared = logprobs.judge_tokens(
        d["trainer"],
        d["engine"],
        tolerances,
        clip,
        min_tokens,
        entropy=d["entropy"],
        boundary_tie=d["tie"],
        prompt_ids=d["prompt"],
        words=judge.SCORED,
    )
    as_json = json.dumps  # NaN-aware: a NaN interval equals itself
    assert as_json(shared.findings, default=vars) == as_json(jud.findings, default=vars)
    assert as_json(shared.preconditions, default=vars) == as_json(jud.preconditions, default=vars)


def test_without_a_boundary_tie_column_every_excluded_token_counts():
    d = per_token(excluded=2)
    group = as_group(d)
    group.boundary_tie = None
    verdict, detail = judge.judge_group(group, *judge.options([])[:3])
    assert "n_tied_excluded" not in detail["metrics"]
    assert "no boundary_tie column: ties at the cut count" in verdict.findings[-1].note
    excluded = verdict.findings[-1]
    assert excluded.name == "excluded_rate" and excluded.value == pytest.approx(2 / 30)


# ------------------------------------------------------------------------------- presets


def wide(shift=0.0, seed=0, pad=8):
    """verl-like [B, T] arrays: right-padded responses with response_mask, padding garbage."""
    t = table(shift=shift, seed=seed)
    lp_r = t["engine_logprob"].reshape(N_SEQS, N_TOK)
    lp_t = t["trainer_logprob"].reshape(N_SEQS, N_TOK)
    mask = np.ones((N_SEQS, N_TOK + pad), np.int64)
    lengths = N_TOK + pad - np.arange(N_SEQS) % (pad + 1)  # rows of N_TOK..N_TOK+pad tokens
    for i, n in enumerate(lengths):
        mask[i, n:] = 0
    full = lambda a, fill: np.concatenate([a, np.full((N_SEQS, pad), fill)], axis=1)  # noqa: E731
    engine, trainer = full(lp_r, 0.0), full(lp_t, 0.0)
    # the extra real tokens beyond N_TOK copy the first ones; padding holds zeros
    engine[:, N_TOK:], trainer[:, N_TOK:] = lp_r[:, :pad], lp_t[:, :pad]
    return engine, trainer, mask


def test_verl_pt_dump_with_format_verl(tmp_path):
    torch = pytest.importorskip("torch")
    engine, trainer, mask = wide(shift=-0.2)
    path = tmp_path / "batch.pt"
    torch.save(
        {
            "rollout_log_probs": torch.tensor(engine, dtype=torch.float32),
            "old_log_probs": torch.tensor(trainer, dtype=torch.float32),
            "response_mask": torch.tensor(mask),
            "responses": torch.zeros(mask.shape, dtype=torch.long),
            "entropys": torch.ones(mask.shape),
            "uid": [f"p{i // 2}" for i in range(N_SEQS)],
        },
        path,
    )
    result = run("judge", path, "--format", "verl", "--output", tmp_path / "out")
    assert result.exit_code == 1, result.output
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    g = data["groups"][0]
    assert data["input"]["layout"] == "wide"
    assert data["input"]["mapping"]["prompt_id"] == "uid"
    assert g["metrics"]["n_tokens"] == mask.sum()  # padding dropped
    assert g["metrics"]["abs_dlogp_mean"] == pytest.approx(0.2, abs=0.003)
    assert g["verdict"]["findings"][0]["test"]["unit"] == "prompt"


def test_verl_names_without_format_are_recognised(tmp_path):
    engine, trainer, mask = wide()
    path = write(
        tmp_path / "verl.parquet",
        {
            "rollout_log_probs": list(engine),
            "old_log_probs": list(trainer),
            "response_mask": list(mask),
        },
    )
    text = bad(tmp_path, path)
    assert "engine_logprob" in text and "rollout_log_probs" in text
    assert "--format verl" in text
    result = run("judge", path, "--format", "verl", "--output", tmp_path / "ok")
    assert result.exit_code == 0, result.output


def test_wide_table_without_its_mask_is_refused(tmp_path):
    engine, trainer, _ = wide()
    path = write(
        tmp_path / "verl.parquet",
        {"rollout_log_probs": list(engine), "old_log_probs": list(trainer)},
    )
    text = bad(tmp_path, path, "--format", "verl")
    assert "response_mask" in text and "--map mask=" in text


def test_nemo_rl_jsonl(tmp_path):
    engine, trainer, mask = wide()
    prompt = 5  # NeMo-RL logs the whole sequence; token_loss_mask marks the generated tokens
    with open(tmp_path / "train_data_step1.jsonl", "w") as fh:
        for i in range(N_SEQS):
            m = [0] * prompt + mask[i].tolist()
            fh.write(
                json.dumps(
                    {
                        "content": ["..."],
                        "rewards": [1.0],
                        "input_lengths": [sum(m)],
                        "token_ids": [[1] * len(m)],
                        "token_loss_mask": [m],
                        "generation_logprobs": [[0.0] * prompt + engine[i].tolist()],
                        "prev_logprobs": [[0.0] * prompt + trainer[i].tolist()],
                        "idx": i,
                    }
                )
                + "\n"
            )
    result = run(
        "judge",
        tmp_path / "train_data_step1.jsonl",
        "--format",
        "nemo-rl",
        "--output",
        tmp_path / "out",
    )
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["groups"][0]["metrics"]["n_tokens"] == mask.sum()
    assert data["input"]["mapping"]["sequence_id"] == "idx"


def test_trl_names_and_map_override(tmp_path):
    engine, trainer, mask = wide(shift=-0.2)
    path = write(
        tmp_path / "trl.parquet",
        {
            "sampling_per_token_logps": list(engine),
            "old_per_token_logps": list(trainer),
            "completion_mask": list(mask),
            "my_lp": list(trainer),
        },
    )
    dump = dumps.load(path, "trl")
    assert sum(len(s) for s in dump.groups[0].engine) == mask.sum()
    # --map wins over the preset: the trainer column compared with itself (up to the shift)
    dump = dumps.load(path, "trl", {"engine_logprob": "my_lp"})
    assert dump.mapping["engine_logprob"] == "my_lp"
    assert all(np.array_equal(a, b) for a, b in zip(dump.groups[0].engine, dump.groups[0].trainer))


def test_prime_rl_pt_with_per_sample_tensor_lists(tmp_path):
    torch = pytest.importorskip("torch")
    t = table(shift=-0.2)
    split = lambda a: list(torch.tensor(a).split(N_TOK))  # noqa: E731  (one tensor per sample)
    torch.save(
        {
            "inference_logprobs": split(t["engine_logprob"]),
            "trainer_logprobs": split(t["trainer_logprob"]),
            "loss_mask": split(np.ones(t["engine_logprob"].size, np.int64)),
        },
        tmp_path / "prime.pt",
    )
    dump = dumps.load(tmp_path / "prime.pt", "prime-rl")
    assert dump.layout == "wide" and len(dump.groups[0].engine) == N_SEQS
    verdict, detail = judge.judge_group(dump.groups[0], *judge.options([])[:3])
    assert verdict.outcome == "fail"
    assert detail["metrics"]["abs_dlogp_mean"] == pytest.approx(0.2, abs=0.003)


def test_csv_long_layout_with_minus_inf(tmp_path):
    cols = table()
    cols["trainer_logprob"][0] = -np.inf
    path = tmp_path / "dump.csv"
    pacsv.write_csv(pa.table(cols), path)
    dump = dumps.load(path)
    s = metrics.summarize(dump.groups[0].trainer, dump.groups[0].engine)
    assert s["n_ref_excluded"] == 1 and s["n_tokens"] == N_SEQS * N_TOK


def test_rows_are_ordered_by_position(tmp_path):
    cols = table()
    order = np.random.default_rng(2).permutation(cols["engine_logprob"].size)
    dump = dumps.load(write(tmp_path / "shuffled.parquet", {k: v[order] for k, v in cols.items()}))
    g = dump.groups[0]
    assert g.sequence_ids[0] == cols["sequence_id"][order[0]]  # first appearance order
    i = g.sequence_ids.index(3)
    assert np.array_equal(g.trainer[i], cols["trainer_logprob"][3 * N_TOK : 4 * N_TOK])


# ----------------------------------------------------------------------------- bad input


def test_missing_column_lists_the_columns_and_suggests_map(tmp_path):
    cols = table()
    del cols["trainer_logprob"]
    text = bad(tmp_path, write(tmp_path / "d.parquet", cols))
    assert "d.parquet" in text and "no trainer_logprob column" in text
    assert "sequence_id, position, token_id, engine_logprob" in text and "--map" in text


def test_nan_is_an_error_naming_column_count_and_row(tmp_path):
    cols = table()
    cols["trainer_logprob"][[70, 90]] = np.nan
    cols["engine_logprob"][5] = np.nan
    text = bad(tmp_path, write(tmp_path / "d.parquet", cols))
    assert "2 problem(s)" in text
    assert "2 NaN value(s) in trainer_logprob, first at row 70" in text
    assert "1 NaN value(s) in engine_logprob, first at row 5" in text


def test_positive_logprobs_are_refused(tmp_path):
    text = bad(tmp_path, write(tmp_path / "d.parquet", table(shift=0.2)))
    assert "engine_logprob" in text and "> 0.1" in text and "probability" in text


def test_misaligned_wide_rows(tmp_path):
    engine, trainer, mask = wide()
    trainer_rows = [r for r in trainer]
    trainer_rows[3] = trainer_rows[3][:-1]
    path = write(
        tmp_path / "w.parquet",
        {"engine_logprob": list(engine), "trainer_logprob": trainer_rows, "mask": list(mask)},
    )
    text = bad(tmp_path, path)
    assert "w.parquet" in text and "trainer_logprob" in text
    assert f"{N_TOK + 7} values in row 3" in text and "1 of 64 rows differ" in text


def test_position_gap_or_duplicate(tmp_path):
    cols = table()
    cols["position"][N_TOK + 5] = 4  # sequence 1: position 4 twice, 5 missing
    text = bad(tmp_path, write(tmp_path / "d.parquet", cols))
    assert "sequence 1" in text and "gap or a duplicate" in text


@pytest.mark.parametrize(
    "content,name,expected",
    [
        (b"", "empty.parquet", "is empty"),
        (b"not a parquet file at all", "junk.parquet", "cannot be read as parquet"),
        (b"", "x.xlsx", "unknown file type"),
        (b"", "empty.jsonl", "is empty"),
        (b"{not json\n", "bad.jsonl", "cannot be read as jsonl"),
        (b"not a pickle", "bad.pt", "torch.load(weights_only=True)"),
    ],
)
def test_unreadable_files(tmp_path, content, name, expected):
    if name.endswith(".pt"):
        pytest.importorskip("torch")
    path = tmp_path / name
    path.write_bytes(content)
    text = bad(tmp_path, path)
    assert name in text and expected in text


def test_no_rows_missing_path_and_directory(tmp_path):
    cols = {k: v[:0] for k, v in table().items()}
    assert "has no rows" in bad(tmp_path, write(tmp_path / "none.parquet", cols))
    assert "does not exist" in bad(tmp_path, tmp_path / "nowhere.parquet")
    assert "not a regular file" in bad(tmp_path, tmp_path)


def test_bad_options_are_all_listed(tmp_path):
    path = write(tmp_path / "d.parquet", table())
    text = bad(
        tmp_path,
        path,
        "--map",
        "nonsense=x",
        "--tolerance",
        "kl=1",
        "--tolerance",
        "abs_dlogp_mean=-1",
        "--clip-low",
        "2",
    )
    assert "4 problem(s)" in text
    assert "not a canonical column" in text and "kl" in text and "-1" in text
    assert "eps_low" in text
    text = bad(tmp_path, path, "--map", "engine_logprob=absent_col")
    assert "absent_col" in text and "no such column" in text
    assert "unknown format" in bad(tmp_path, path, "--format", "nope")


def test_options_defaults_match_the_logprobs_category():
    from parity.categories.logprobs import CATEGORY
    from parity.run.scenario import DEFAULT_MIN_TOKENS

    tolerances, clip, min_tokens, problems = judge.options([])
    assert tolerances == CATEGORY.tolerances and clip == formulas.ClipRange()
    assert min_tokens == DEFAULT_MIN_TOKENS and problems == []


def test_engine_neginf_fails_where_it_used_to_vanish_from_every_mean(tmp_path):
    # 20% of engine logprobs at -inf used to pass: they were dropped from every mean.
    cols = table()
    cols["engine_logprob"][::5] = -np.inf
    result, data = judged(tmp_path, cols)
    assert result.exit_code == 1, result.output
    v = data["groups"][0]["verdict"]
    found = {f["name"]: f for f in v["findings"]}
    assert found["engine_neginf"]["outcome"] == "fail"
    assert found["engine_neginf"]["value"] == len(range(0, N_SEQS * N_TOK, 5))
    assert v["diagnosis"] == "vanished_tokens" and "infinite importance ratio" in v["message"]
    # the other findings on the rest still pass: the count limit alone decides
    assert {f["outcome"] for n, f in found.items() if n != "engine_neginf"} == {"pass"}


@pytest.mark.parametrize("fill", [-1e4, float(np.finfo(np.float32).min)])
def test_a_trainer_fill_value_for_minus_inf_fails_and_says_what_it_looks_like(tmp_path, fill):
    # Two tokens among 1,925 with a finite fill value used to come out inconclusive (exit 125):
    # one sequence mean was huge while the p99 passed.
    cols = table(n_seqs=55, n_tok=35)
    cols["trainer_logprob"][[40, 41]] = fill
    result, data = judged(tmp_path, cols)
    assert result.exit_code == 1, result.output
    v = data["groups"][0]["verdict"]
    found = {f["name"]: f for f in v["findings"]}
    assert found["absurd_logprob"]["outcome"] == "fail" and found["absurd_logprob"]["value"] == 2
    assert v["diagnosis"] == "vanished_tokens"
    assert (
        f"2 trainer (lowest {fill:.6g})" in v["message"] and "of 1925 scored tokens" in v["message"]
    )
    assert data["groups"][0]["metrics"]["n_ref_absurd"] == 2
    # masked like -inf tokens: the means are the clean ones
    assert {f["outcome"] for n, f in found.items() if n != "absurd_logprob"} == {"pass"}


def test_a_logprob_just_above_the_smallest_fp32_probability_is_no_fill_value():
    trainer = [np.full(200, metrics.ABSURD_LOGPROB + 0.01)]
    engine = [trainer[0].copy()]
    s = metrics.summarize(trainer, engine)
    assert "n_ref_absurd" not in s and s["n_masked_tokens"] == 0
    s = metrics.summarize([trainer[0] - 0.02], engine)
    assert s["n_ref_absurd"] == 200 and s["n_masked_tokens"] == 200


# A real dump: parity's own tokens.parquet of `parity check scenarios/logprobs-processed.toml`
# (SmolLM2-135M, V1-parity; docs/measurements.md#off-by-one), its candidate's columns only.
REAL = Path(__file__).parent / "fixtures" / "tokens-logprobs-processed-smollm2.parquet"


def shifted_by_one(cols, later=True):
    """The engine column moved one position later (or earlier) within each sequence, the row
    that has no engine logprob left dropped: a batch saved by hand with the alignment off."""
    seq, eng = np.asarray(cols["sequence_id"]), np.asarray(cols["engine_logprob"])
    prev = np.r_[-1, seq[:-1]] if later else np.r_[seq[1:], -1]
    moved = np.r_[np.nan, eng[:-1]] if later else np.r_[eng[1:], np.nan]
    keep = prev == seq
    out = {k: np.asarray(v)[keep] for k, v in cols.items()}
    out["engine_logprob"] = moved[keep]
    out["position"] = out["position"] - 1 if later else out["position"]  # 0..n-2 again
    return out


@pytest.mark.parametrize("later", [True, False])
def test_a_real_dump_shifted_by_one_is_named_off_by_one(tmp_path, later):
    cols = {k: np.asarray(v) for k, v in pq.read_table(REAL).to_pydict().items()}
    result, data = judged(tmp_path, cols, name="aligned.parquet")
    assert result.exit_code == 0, result.output  # the dump as parity wrote it passes
    aligned = data["groups"][0]["metrics"]["abs_dlogp_mean"]
    assert data["groups"][0]["verdict"]["diagnosis"] is None
    result, data = judged(tmp_path, shifted_by_one(cols, later), name="shifted.parquet")
    assert result.exit_code == 1, result.output
    g = data["groups"][0]
    assert g["verdict"]["diagnosis"] == "off_by_one", g["verdict"]["message"]
    assert f"position t {'+' if later else '-'} 1 matches" in g["verdict"]["message"]
    back = g["shape"]["gap_engine_later" if later else "gap_engine_earlier"]
    assert back <= alignment.COLLAPSE * g["metrics"]["abs_dlogp_mean"]
    # shifted back, the gap is the aligned dump's (less the one row dropped per sequence)
    assert back == pytest.approx(aligned, rel=0.25)


def test_off_by_one_needs_a_failing_gap_that_collapses():
    shape = {"gap_engine_later": 0.01, "gap_engine_earlier": 0.9}
    assert alignment.off_by_one(0.8, shape, 0.06) == "gap_engine_later"
    assert alignment.off_by_one(0.05, shape, 0.06) is None  # within tolerance: nothing to name
    assert alignment.off_by_one(0.8, {**shape, "gap_engine_later": 0.3}, 0.06) is None
    # near-certain tokens (every logprob ~0): shifting changes nothing, so it names nothing
    flat = {"gap_engine_later": 0.0, "gap_engine_earlier": 0.0}
    assert alignment.off_by_one(0.0, flat, 0.06) is None
