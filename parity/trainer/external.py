"""Trainer logprobs computed outside parity: the content key of a sequence (`parity check
--export-sequences`), a scores file as a scenario's reference (`[reference] scores = "FILE"`), and
the script writing one with parity's HF reference: `python -m parity.trainer.external score ...`."""

from __future__ import annotations

import argparse
import hashlib
import sys
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
from parity.trainer.scores_data import CONTEXT_COLUMNS, SCORE_COLUMNS, ScoresData, validate


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
    data, problems = validate(path, cols)
    if data is not None:
        _LOADED[tag] = data
    return data, problems


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
