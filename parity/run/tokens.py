"""The tables a run writes beside its report: tokens.parquet (one row per sampled token of every
engine role, with the engine's logprob and the reference's scores where it scored the token),
and the sequences file of `parity check --export-sequences`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from parity import categories
from parity.data import schema, tables
from parity.data.schema import COLUMNS, EXPORT_COLUMNS, FILE
from parity.run import faults
from parity.trainer import semantics as trainer_semantics
from parity.trainer.external import context_of, sequence_key
from parity.trainer.sampler import tie_rule_for

Log = Callable[[str], None]


def _match(res, er, seq) -> tuple[str | None, Any]:
    """(head dtype, RefScore) the reference gave this sequence while its scenario was judged,
    or (None, None): the scenario's own head first, then the tie rule of the role's engine."""

    sc = res.scenario
    s = sc.sampling
    found = res.ref_scores.get(
        (
            float(s.temperature),
            float(s.top_p),
            int(s.top_k),
            tuple(seq.prompt_token_ids),
            tuple(seq.token_ids),
        )
    )
    if not found:
        return None, None
    key = (er.effective_config or {}).get("key") or {}
    rule = tie_rule_for(key.get("platform"), key.get("vllm_version"))
    head, _, score = min(
        found, key=lambda e: (e[0] != sc.head_dtype, e[1] not in (rule, "external"))
    )
    return head, score


def _values(score, name: str, n: int) -> np.ndarray:
    v = None if score is None else getattr(score, name)
    if v is None or len(v) != n:
        return np.full(n, np.nan)
    return np.asarray(v, dtype=np.float64)


def build(run):
    """The per-token table of a run (a runner.RunResult), as a pyarrow Table: one row per
    sampled token of every role's sequences, scored or not (COLUMNS)."""
    import pyarrow as pa  # lazy: pyarrow, only when a table is read or written

    cols: dict[str, list] = {c: [] for c in COLUMNS}
    for res in run.results:
        for role, er in res.runs.items():
            label = er.setting.label()
            for i, seq in enumerate(er.sequences):
                n = len(seq.token_ids)
                if n == 0:
                    continue
                head, score = _match(res, er, seq)
                semantics = getattr(res.scenario, "semantics", trainer_semantics.DEFAULT)
                if score is not None:  # the trainer's logprob under the scenario's semantics
                    score = trainer_semantics.trainer_view(score, semantics)
                # The kept mass only beside a tempered trainer column (what judge reads it for).
                kept = _values(score if semantics == "tempered" else None, "log_kept_mass", n)
                lp = np.full(n, np.nan)
                engine = np.asarray(seq.logprobs[:n], dtype=np.float64)
                lp[: engine.size] = engine
                tie = (
                    None
                    if score is None or score.boundary_tie is None or len(score.boundary_tie) != n
                    else np.asarray(score.boundary_tie, bool)
                )
                versions = list(seq.weight_versions or [])[:n]
                for c, v in (
                    ("run_id", [run.run_id] * n),
                    ("scenario", [res.scenario.name] * n),
                    ("engine", [role] * n),
                    ("engine_label", [label] * n),
                    ("sequence_id", [i] * n),
                    ("prompt_index", [seq.prompt_index] * n),
                    ("sample_index", [seq.sample_index] * n),
                    ("position", range(n)),
                    ("token_id", seq.token_ids),
                    ("engine_logprob", lp),
                    ("trainer_logprob", _values(score, "processed_logprob", n)),
                    ("trainer_raw_logprob", _values(score, "raw_logprob", n)),
                    ("entropy", _values(score, "entropy", n)),
                    ("trainer_log_kept_mass", kept),
                    ("boundary_tie", [None] * n if tie is None else tie.tolist()),
                    ("weight_version", versions + [None] * (n - len(versions))),
                    ("head_dtype", [head] * n),
                ):
                    cols[c].extend(v.tolist() if isinstance(v, np.ndarray) else v)
    return pa.table(cols, schema=schema.schema())


def record(run, out_dir: Path, log: Log) -> None:
    """Write tokens.parquet into out_dir (atomically); run.tokens says {"file", "rows"}. A
    failure to write leaves the run incomplete (run.interrupted, exit 125), never silent."""
    path = Path(out_dir) / FILE
    try:
        table = build(run)
        tables.write_parquet(table, path)
    except (Exception, KeyboardInterrupt) as exc:  # the report must still be written
        why = f"{FILE} not written: {faults.describe(exc)}"
        run.tokens = {"file": FILE, "error": why}
        run.interrupted = run.interrupted or why
        log(why)
        return
    run.tokens = {"file": FILE, "rows": table.num_rows, "columns": list(COLUMNS)}


def export(run, path: Path, log: Log) -> None:
    """Write the sequences file of `--export-sequences` (write_export); sets run.export. A
    failure to write leaves the run incomplete (run.interrupted), never silent."""
    try:
        run.export = write_export(run.results, Path(path))
    except (Exception, KeyboardInterrupt) as exc:  # the report must still be written
        why = f"sequences not exported to {path}: {faults.describe(exc)}"
        run.export = {"file": str(path), "error": why}
        run.interrupted = run.interrupted or why
        log(why)
        return
    log(f"[export] {run.export['sequences']} sequences written to {path}")


# ----------------------------------------------------------------------------- export


def export_columns(results) -> dict[str, list]:
    """One row per sequence the reference would score: every role's sequences of every
    scenario whose category can be judged from a scores file (Category.scores_columns), with
    the sampling and head dtype the trainer must score them with."""

    cols: dict[str, list] = {k: [] for k in EXPORT_COLUMNS}
    for res in results:
        sc = res.scenario
        if categories.get(sc.category).scores_columns is None:
            continue
        for role, er in res.runs.items():
            key = (er.effective_config or {}).get("key") or {}
            rule = tie_rule_for(key.get("platform"), key.get("vllm_version"))
            for i, s in enumerate(er.sequences):
                row = {
                    "sequence_key": sequence_key(s.prompt_token_ids, s.token_ids),
                    "scenario": sc.name,
                    "engine": role,
                    "engine_label": er.setting.label(),
                    "sequence_id": i,
                    "prompt_index": s.prompt_index,
                    "sample_index": s.sample_index,
                    "model": res.model_path,
                    "prompt_token_ids": list(s.prompt_token_ids),
                    "token_ids": list(s.token_ids),
                    "engine_logprobs": [float(x) for x in s.logprobs],
                    **context_of(sc.sampling, sc.head_dtype),
                    "tie_rule": rule,
                }
                for k in cols:
                    cols[k].append(row[k])
    return cols


def write_export(results, path: Path) -> dict[str, Any]:
    """Write the sequences file (parquet or JSON lines by suffix, atomically); returns
    {"file", "sequences", "scenarios"} for report.json."""
    cols = export_columns(results)
    arrow = schema.export_schema() if Path(path).suffix == ".parquet" else None
    tables.write_rows(cols, Path(path), arrow)
    return {
        "file": str(path),
        "sequences": len(cols["sequence_key"]),
        "scenarios": sorted(set(cols["scenario"])),
    }


def scored(res, er) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Per sequence of one engine role that the reference scored while its scenario was judged:
    the trainer's logprobs, the engine's and the trainer's entropy (the columns tokens.parquet
    writes as trainer_logprob, engine_logprob and entropy)."""
    trainer, engine, entropy = [], [], []
    for seq in er.sequences:
        n = len(seq.token_ids)
        _, score = _match(res, er, seq) if n else (None, None)
        if score is None:
            continue
        lp = np.full(n, np.nan)
        got = np.asarray(seq.logprobs[:n], dtype=np.float64)
        lp[: got.size] = got
        trainer.append(_values(score, "processed_logprob", n))
        engine.append(lp)
        entropy.append(_values(score, "entropy", n))
    return trainer, engine, entropy
