"""Trainer logprobs computed outside parity: the content key of a sequence (the sequences a
run would score are exported by parity.run.tokens.export, `parity check --export-sequences FILE`),
scores files read back as the reference of a scenario (`[reference] scores = "FILE"`), and a
trainer script that writes such a file from an export with parity's own HF reference:

    python -m parity.trainer.external score SEQS OUT --model NAME_OR_PATH [--head-dtype float32]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from parity import trainer
from parity.data import tables
from parity.data.schema import EXPORT_COLUMNS
from parity.engines.base import SamplingSpec
from parity.setup import models
from parity.setup.modelbuild import ModelError
from parity.trainer.reference import RefScore

# Columns of a scores file: the processed logprob is required; the others are optional (a
# category that needs one refuses a file without it when the scenario is parsed).
SCORE_COLUMNS = ("trainer_logprob", "trainer_raw_logprob", "entropy", "boundary_tie")
# Optional columns saying which sampling and head a row was scored with: when present, only the
# rows matching the scenario's sampling and head dtype are used.
CONTEXT_COLUMNS = ("temperature", "top_p", "top_k", "head_dtype")


def sequence_key(prompt: list[int], completion: list[int]) -> str:
    """The content key of a sequence: sha256 (hex) of the UTF-8 text
    "p1,p2,...|c1,c2,..." (prompt token ids, "|", completion token ids, decimal, comma-separated;
    e.g. prompt [1, 2] and completion [5] hash "1,2|5"). It names the tokens only: the same
    tokens sampled by two engines or two scenarios have the same key."""
    text = ",".join(map(str, map(int, prompt))) + "|" + ",".join(map(str, map(int, completion)))
    return hashlib.sha256(text.encode()).hexdigest()


class ScoresMissing(Exception):
    """Sequences a scores file has no scores for (the scenario cannot be judged)."""

    def __init__(self, scores: "ExternalScores", n_missing: int, n_total: int):
        super().__init__(f"{n_missing} of {n_total} sequences have no scores in {scores.path}")
        self.scores, self.n_missing, self.n_total = scores, n_missing, n_total


class ScoresUnavailable(Exception):
    """A scores file asked for what it cannot hold (another sampling or head dtype)."""


# ----------------------------------------------------------------------------- scores files


@dataclass
class ScoresData:
    """A validated scores file: per (sequence_key, *context values), each score column's values
    in position order."""

    path: Path
    columns: frozenset[str]
    context: tuple[str, ...]
    groups: dict[tuple, dict[str, np.ndarray]] = field(default_factory=dict)

    def contexts(self) -> set[tuple]:
        return {k[1:] for k in self.groups}


_LOADED: dict[tuple[str, int, int], ScoresData] = {}


def load_scores(path: Path) -> tuple[ScoresData | None, list[str]]:
    """Read and validate a scores file: (data, []) or (None, every problem found, each with
    its fix). Long rows (sequence_key, position, trainer_logprob, ...) or wide rows (list
    columns, position = index in the list), parquet or JSON lines. Loaded once per file
    version (path, mtime, size)."""
    path = Path(path)
    why = tables.format_problem(path)
    if why:
        return None, [why]
    try:
        st = path.stat()
    except OSError as exc:
        return None, [
            f"cannot read: {exc.strerror or exc} (give the path relative to the "
            "scenario file, or an absolute one)"
        ]
    tag = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if tag in _LOADED:
        return _LOADED[tag], []
    try:
        cols = tables.read_columns(path)
    except (OSError, ValueError) as exc:
        return None, [f"cannot read: {exc}"]
    data, problems = _validate(path, cols)
    if data is not None:
        _LOADED[tag] = data
    return data, problems


def _numbers(name: str, values: list, problems: list[str], integer: bool = False) -> np.ndarray:
    bad = sum(
        1
        for v in values
        if v is not None
        and (isinstance(v, bool) or not isinstance(v, int if integer else (int, float)))
    )
    if bad:
        kind = "integers" if integer else "numbers"
        problems.append(f"column {name}: {bad} value(s) are not {kind}")
        return np.full(len(values), np.nan)
    return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)


def _widen(cols: dict[str, list], problems: list[str]) -> dict[str, list]:
    """Wide rows (one per sequence, list columns) as long rows with positions."""
    listed = [c for c in SCORE_COLUMNS if c in cols]
    out: dict[str, list] = {
        k: []
        for k in ["sequence_key", "position", *listed, *[c for c in CONTEXT_COLUMNS if c in cols]]
    }
    uneven = 0
    for i, key in enumerate(cols["sequence_key"]):
        values = [cols[c][i] for c in listed]
        if any(not isinstance(v, list) for v in values) or len({len(v) for v in values}) > 1:
            uneven += 1
            continue
        for pos in range(len(values[0])):
            out["sequence_key"].append(key)
            out["position"].append(pos)
            for c, v in zip(listed, values):
                out[c].append(v[pos])
            for c in CONTEXT_COLUMNS:
                if c in cols:
                    out[c].append(cols[c][i])
    if uneven:
        problems.append(
            f"{uneven} wide row(s) whose score columns are not lists of one "
            "length (one value per completion token)"
        )
    return out


def _validate(path: Path, cols: dict[str, list]) -> tuple[ScoresData | None, list[str]]:
    problems: list[str] = []
    for need in ("sequence_key", "trainer_logprob"):
        if need not in cols:
            problems.append(
                f"no {need} column (columns: {', '.join(cols) or 'none'}); a scores "
                "file has sequence_key, position, trainer_logprob and optionally "
                'trainer_raw_logprob, entropy (docs/trainer.md, "Trainer logprobs computed elsewhere")'
            )
    if problems:
        return None, problems
    if any(isinstance(v, list) for v in cols["trainer_logprob"]):
        cols = _widen(cols, problems)
    elif "position" not in cols:
        problems.append(
            "no position column: long rows need the 0-based position of the token "
            "in the completion (or write one wide row per sequence, list columns)"
        )
        return None, problems
    n = len(cols["sequence_key"])
    if n == 0:
        return None, problems + ["holds no scores (no rows)"]
    keys = cols["sequence_key"]
    bad = sum(1 for k in keys if not (isinstance(k, str) and len(k) == 64))
    if bad:
        problems.append(
            f"{bad} sequence_key value(s) are not 64-character sha256 hex strings "
            "(parity.trainer.external.sequence_key)"
        )
    pos = _numbers("position", cols["position"], problems, integer=True)
    if np.isnan(pos).any() or (pos < 0).any():
        problems.append("column position: missing or negative values (0-based positions)")
    values = {c: _numbers(c, cols[c], problems) for c in SCORE_COLUMNS[:3] if c in cols}
    for c, v in values.items():
        nan, pinf = int(np.isnan(v).sum()), int((v == np.inf).sum())
        if nan:
            problems.append(
                f"column {c}: {nan} NaN or missing value(s); every scored token "
                "needs a number (-inf: a token the processed distribution excludes)"
            )
        if pinf:
            problems.append(f"column {c}: {pinf} value(s) are +inf")
    if "entropy" in values and (values["entropy"] < -1e-6).any():
        problems.append("column entropy: negative values (nats, >= 0)")
    if "boundary_tie" in cols:
        if any(not isinstance(v, bool) for v in cols["boundary_tie"]):
            problems.append("column boundary_tie: values must be true or false")
        values["boundary_tie"] = np.asarray([v is True for v in cols["boundary_tie"]])
    context = tuple(c for c in CONTEXT_COLUMNS if c in cols)
    for c in context:
        if any(tables.is_nan(v) for v in cols[c]):
            problems.append(f"column {c}: missing values (give it on every row, or drop it)")
    if problems:
        return None, problems
    group_of: dict[tuple, int] = {}
    gids = np.asarray(
        [
            group_of.setdefault((k, *(cols[c][i] for c in context)), len(group_of))
            for i, k in enumerate(keys)
        ]
    )
    order = np.lexsort((pos, gids))
    g, p = gids[order], pos[order].astype(np.int64)
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    ends = np.r_[starts[1:], len(g)]
    expected = np.arange(len(g)) - np.repeat(starts, ends - starts)
    wrong = np.unique(g[p != expected])
    if wrong.size:
        names = [k for k, i in group_of.items() if i == wrong[0]]
        return None, [
            f"{wrong.size} sequence(s) whose positions are not 0, 1, ..., T-1 exactly "
            f"once (duplicates or gaps), e.g. sequence_key {names[0][0]}"
            + (
                " (rows for another sampling or head dtype need the columns "
                f"{', '.join(CONTEXT_COLUMNS)})"
                if not context
                else ""
            )
        ]
    keys_by_gid = {i: k for k, i in group_of.items()}
    data = ScoresData(path, frozenset(values), context)
    for s, e in zip(starts, ends):
        rows = order[s:e]
        data.groups[keys_by_gid[int(g[s])]] = {c: v[rows] for c, v in values.items()}
    return data, []


def context_of(sampling, head_dtype: str) -> dict[str, Any]:
    return {
        "temperature": float(sampling.temperature),
        "top_p": float(sampling.top_p),
        "top_k": int(sampling.top_k),
        "head_dtype": head_dtype,
    }


class ExternalScores:
    """A scores file standing in for parity.trainer.reference.Reference for one scenario: the same
    `score(pairs, sampling) -> list[RefScore]`, looked up by sequence_key. Any sequence the
    file lacks raises ScoresMissing (never a partial result)."""

    def __init__(self, data: ScoresData, sampling, head_dtype: str):
        self.data, self.path, self.head_dtype = data, data.path, head_dtype
        self._context = context_of(sampling, head_dtype)
        self._want = tuple(self._context[c] for c in data.context)
        self.stats = {
            "file": str(data.path),
            "device": None,
            "scored_seqs": 0,
            "missing_seqs": 0,
            "forward_s": 0.0,
            "load_s": 0.0,
        }

    def lookup(self, prompt: list[int], tokens: list[int]) -> dict[str, np.ndarray] | None:
        """The file's columns for one sequence (None when absent or of another length)."""
        found = self.data.groups.get((sequence_key(prompt, tokens), *self._want))
        return found if found is not None and len(found["trainer_logprob"]) == len(tokens) else None

    def count_missing(self, pairs) -> int:
        return sum(1 for p, t in pairs if t and self.lookup(p, t) is None)

    def score(self, pairs, sampling):

        asked = context_of(sampling, self.head_dtype)
        if any(asked[c] != self._context[c] for c in ("temperature", "top_p", "top_k")):
            raise ScoresUnavailable(
                f"{self.path} holds the trainer's logprobs for the scenario's sampling only"
            )
        out = []
        for prompt, tokens in pairs:
            if not tokens:
                out.append(RefScore(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0, bool)))
                continue
            found = self.lookup(prompt, tokens)
            if found is None:
                out.append(None)
                continue
            # Columns the file lacks stay None: the scenario's category was checked to need
            # none of them (Category.scores_columns) when the scenario was parsed.
            out.append(
                RefScore(
                    found.get("trainer_raw_logprob"),
                    found["trainer_logprob"],
                    found.get("entropy"),
                    found.get("boundary_tie"),
                )
            )
        missing = sum(1 for r in out if r is None)
        self.stats["scored_seqs"] += len(out) - missing
        if missing:
            self.stats["missing_seqs"] += missing
            raise ScoresMissing(self, missing, len(out))
        return out


# ----------------------------------------------------------------------------- trainer script


def score_file(
    seqs: Path,
    out: Path,
    model: str,
    head_dtype: str | None = None,
    device: str = "auto",
    log=print,
) -> int:
    """Score an exported sequences file with parity's HF reference and write a scores file
    (long rows with every score column and the context columns); returns its row count.
    `head_dtype`: score every row with this head (default: each row's own)."""

    cols = tables.read_columns(seqs)
    lacking = [c for c in EXPORT_COLUMNS if c not in cols]
    if lacking:
        raise ValueError(f"{seqs}: not a parity sequences export (no {', '.join(lacking)})")
    model_path = models.resolve_model(model, log=log)
    jobs: dict[tuple, dict[tuple, dict[str, tuple]]] = {}
    for i, key in enumerate(cols["sequence_key"]):
        head = head_dtype or cols["head_dtype"][i]
        ctx = (float(cols["temperature"][i]), float(cols["top_p"][i]), int(cols["top_k"][i]))
        pairs = jobs.setdefault((head, cols["tie_rule"][i] or "keep_ties"), {}).setdefault(ctx, {})
        pairs[key] = (list(cols["prompt_token_ids"][i]), list(cols["token_ids"][i]))
    rows: dict[str, list] = {
        k: [] for k in ("sequence_key", "position", *SCORE_COLUMNS, *CONTEXT_COLUMNS)
    }
    for (head, rule), by_ctx in jobs.items():
        ref = trainer.new_scorer(str(model_path), head, tie_rule=rule, device=device)
        for (t, p, k), pairs in by_ctx.items():
            log(f"scoring {len(pairs)} sequences ({head} head, T={t}, top_p={p}, top_k={k})")
            scores = ref.score(list(pairs.values()), SamplingSpec(temperature=t, top_p=p, top_k=k))
            for key, r in zip(pairs, scores):
                n = len(r.processed_logprob)
                tie = r.boundary_tie if r.boundary_tie is not None else np.zeros(n, bool)
                for name, values in (
                    ("sequence_key", [key] * n),
                    ("position", range(n)),
                    ("trainer_logprob", r.processed_logprob),
                    ("trainer_raw_logprob", r.raw_logprob),
                    ("entropy", r.entropy),
                    ("boundary_tie", tie),
                    ("temperature", [t] * n),
                    ("top_p", [p] * n),
                    ("top_k", [k] * n),
                    ("head_dtype", [head] * n),
                ):
                    rows[name].extend(_plain_list(values))
        ref.close()
    tables.write_rows(rows, Path(out))
    return len(rows["sequence_key"])


def _plain_list(values) -> list:
    return values.tolist() if hasattr(values, "tolist") else list(values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m parity.trainer.external",
        description="The trainer side of an external-scores run: score a sequences file "
        "written by `parity check --export-sequences` and write the scores file a "
        'scenario reads with [reference] scores = "FILE".',
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("score", help="score SEQS with parity's HF reference, write OUT")
    p.add_argument("seqs", type=Path, help="exported sequences (.parquet or .jsonl)")
    p.add_argument("out", type=Path, help="scores file to write (.parquet or .jsonl)")
    p.add_argument("--model", required=True, help="model name or checkpoint directory")
    p.add_argument(
        "--head-dtype",
        choices=("float32", "model"),
        default=None,
        help="lm_head dtype for every row (default: each row's head_dtype)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    args = parser.parse_args(argv)

    for path in (args.seqs, args.out):
        why = tables.format_problem(path)
        if why:
            parser.error(f"{path}: {why}")
    try:
        n = score_file(
            args.seqs,
            args.out,
            args.model,
            args.head_dtype,
            args.device,
            log=lambda m: print(m, file=sys.stderr),
        )
    except (OSError, ValueError, ModelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {n} token scores to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
