"""The trainer side of a run: the reference models its scenarios share (HF transformers on the
scenario's device, or a scenario's scores file), every score recorded per scenario for
tokens.parquet, the [reference] table of scenario files, and the verdicts of scenarios the
reference could not judge (sequences exported, scores missing from a file)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable

from parity import categories, trainer
from parity.categories.base import choice
from parity.setup import inputs, models
from parity.trainer import external
from parity.trainer import semantics as trainer_semantics
from parity.trainer.chunked import resolve_device
from parity.trainer.heads import HEAD_DTYPES, ReferenceError
from parity.trainer.reference import ScoreCache
from parity.trainer.sampler import tie_rule_for
from parity.verdicts import core

Log = Callable[[str], None]
Problem = tuple[str, str, str]
REFERENCE_FIELDS = ("head_dtype", "device", "scores", "scorer", "semantics")
DEVICE_ENV = "PARITY_REFERENCE_DEVICE"


class Recorded:
    """A scorer seen through a record: every score it returns is kept in `sink` under
    (temperature, top_p, top_k, prompt ids, completion ids) with the head dtype and tie rule
    it was scored with (tokens.parquet matches them to the engine's sequences)."""

    def __init__(self, scorer, head_dtype: str, tie_rule: str, sink: dict):
        self._scorer, self._head, self._rule, self._sink = scorer, head_dtype, tie_rule, sink

    def score(self, pairs, sampling):
        scores = self._scorer.score(pairs, sampling)
        ctx = (float(sampling.temperature), float(sampling.top_p), int(sampling.top_k))
        for (prompt, tokens), r in zip(pairs, scores):
            entries = self._sink.setdefault((*ctx, tuple(prompt), tuple(tokens)), [])
            if not any(h == self._head and t == self._rule for h, t, _ in entries):
                entries.append((self._head, self._rule, r))
        return scores

    def __getattr__(self, name):
        return getattr(self._scorer, name)


class References:
    """Reference models shared by a run: one per (checkpoint, head dtype, tie rule, device),
    loaded on first use, all writing to one score cache; a scenario with `[reference] scores`
    gets its file instead (parity.trainer.external.ExternalScores). While a scenario is judged
    (`judging`), every score is recorded into its ScenarioResult.ref_scores."""

    def __init__(self, log: Log):

        self.cache = ScoreCache()
        self.log = log
        self._refs: dict[tuple[str, str, str, str], Any] = {}
        self._files: dict[tuple, Any] = {}
        self._current = None  # the ScenarioResult being judged
        self._other: dict[str, dict] = {}  # other trainer-side scorers: name -> counters

    @contextlib.contextmanager
    def judging(self, res):
        """Score on behalf of `res` (its scenario's device or scores file; recorded)."""
        self._current = res
        try:
            yield self
        finally:
            self._current = None

    def get(self, model_path: str, head_dtype: str, run=None):
        """The reference for a checkpoint and head dtype; `run` (the engine run it will judge)
        picks the top-k tie rule of that engine's platform.

        Raises:
            ScoresUnavailable: the scenario's scores file was asked for another head dtype.
        """

        res = self._current
        sc = res.scenario if res is not None else None
        if sc is not None and getattr(sc, "scores", None) is not None:
            return Recorded(self._file(sc, head_dtype), head_dtype, "external", res.ref_scores)
        key_cfg = ((run.effective_config or {}).get("key") or {}) if run is not None else {}
        rule = tie_rule_for(key_cfg.get("platform"), key_cfg.get("vllm_version"))
        device = resolve_device(getattr(sc, "reference_device", None) or "auto")
        scorer = getattr(sc, "reference_scorer", None) or trainer.DEFAULT
        key = (str(model_path), head_dtype, rule, device, scorer)
        if key not in self._refs:
            what = "HF transformers" if scorer == "hf" else f"scorer {scorer}"
            self.log(
                f"[reference] {what} on {Path(model_path).name} "
                f"({head_dtype} lm_head, top-k ties: {rule}, device {device})"
            )
            self._refs[key] = trainer.new_scorer(
                model_path,
                head_dtype,
                scorer,
                model_fp=models.fingerprint(model_path),
                cache=self.cache,
                tie_rule=rule,
                device=device,
            )
        ref = self._refs[key]
        return ref if res is None else Recorded(ref, head_dtype, rule, res.ref_scores)

    def _file(self, sc, head_dtype: str):

        if head_dtype != sc.head_dtype:
            raise external.ScoresUnavailable(
                f"{sc.scores} holds scores for the {sc.head_dtype} head only, {head_dtype} "
                "was asked for"
            )
        key = (
            str(sc.scores),
            sc.sampling.temperature,
            sc.sampling.top_p,
            sc.sampling.top_k,
            sc.head_dtype,
        )
        if key not in self._files:
            data, problems = external.load_scores(sc.scores)
            if data is None:  # changed on disk since the scenario was validated
                raise ValueError(f"{sc.scores}: {'; '.join(problems)}")
            self.log(f"[reference] scores file {sc.scores} ({sc.head_dtype} head)")
            self._files[key] = external.ExternalScores(data, sc.sampling, sc.head_dtype)
        return self._files[key]

    def stats(self) -> dict[str, dict]:
        """Per reference: its counters and the device it ran on (files: "scores:<name>")."""
        out = {}
        for (m, h, r, device, scorer), ref in self._refs.items():
            name = f"{Path(m).name}:{h}:{r}" + ("" if scorer == trainer.DEFAULT else f":{scorer}")
            if name in out:  # the same model and head on a second device
                name += f"@{device}"
            out[name] = dict(ref.stats)  # Reference.stats carries its device
        for key, scores in self._files.items():
            out[f"scores:{Path(key[0]).name}:{key[-1]}"] = dict(scores.stats)
        for name, counters in self._other.items():
            out[name] = dict(counters)
        return out

    def seconds(self) -> float:
        """Model loads and forward passes so far (the scoring share of judging), the other
        trainer-side scorers' (`add_seconds`) included."""
        own = sum(r.stats["forward_s"] + r.stats["load_s"] for r in self._refs.values())
        return own + sum(other["forward_s"] for other in self._other.values())

    def add_seconds(self, name: str, seconds: float, tokens: int = 0) -> None:
        """Scoring done by another trainer-side scorer (weight updates: the old and the new
        checkpoint, parity.trainer.updates.SplitScorer), counted as reference time."""
        other = self._other.setdefault(name, {"forward_s": 0.0, "scored_tokens": 0})
        other["forward_s"] += seconds
        other["scored_tokens"] += tokens

    def close(self) -> None:
        for ref in self._refs.values():
            ref.close()
        self.cache.close()


# ----------------------------------------------------------------------------- verdicts


def exported_verdict(res, export: dict[str, Any]) -> core.Verdict:
    """The verdict of a scenario in a `--export-sequences` run: never judged (the reference is
    not run), its sequences in the file when its category can be judged from a scores file."""

    if export.get("error"):
        return core.unresolved("sequences_exported", f"not judged: {export['error']}")
    category = categories.get(res.scenario.category)
    if category.scores_columns is None:
        return core.unresolved(
            "sequences_exported",
            (
                f"not judged (sequences exported): the {category.name} category cannot be judged "
                f"from a scores file ({category.scores_refusal}), so its sequences are not in "
                f"{export.get('file')}; run it without --export-sequences"
            ),
        )
    n = sum(len(er.sequences) for er in res.runs.values())
    return core.unresolved(
        "sequences_exported",
        (
            f"not judged (sequences exported): {n} sequence(s) written to {export.get('file')}; "
            "score them with the trainer (e.g. python -m parity.trainer.external score SEQS OUT --model M) "
            'and judge them with [reference] scores = "OUT"'
        ),
    )


def missing_verdict(res, exc) -> core.Verdict:
    """Inconclusive, never a pass: sequences of the scenario that its scores file lacks
    (exc: parity.trainer.external.ScoresMissing), counted over every engine role."""
    scores = exc.scores
    counts = []
    total_missing = total = 0
    for role, er in res.runs.items():
        pairs = [(s.prompt_token_ids, s.token_ids) for s in er.sequences]
        n = scores.count_missing(pairs)
        total_missing, total = total_missing + n, total + len(pairs)
        counts.append(f"{role} {n} of {len(pairs)}")
    message = (
        f"{total_missing} of {total} sequences ({', '.join(counts)}) have no trainer "
        f"scores in {scores.path}: the file scores the sequences of an earlier "
        "--export-sequences run, and this run's engine did not reproduce them token for "
        "token (vLLM is not bitwise reproducible across runs, batch shapes, versions or "
        "hardware), or the file was made for other scenarios. Export and score this "
        "run's sequences again, or judge with the HF reference (remove "
        "reference.scores)"
    )
    pre = core.Precondition("scored_sequences", False, total - total_missing, total, message)
    return core.Verdict("inconclusive", "scores_missing", message, preconditions=[pre])


# ----------------------------------------------------------------------------- [reference]


def parse_reference(
    table: dict,
    category,
    sampling,
    path: str,
    device_override: str | None,
    trainer_override: str | None = None,
) -> tuple[dict[str, Any], list[Problem]]:
    """The [reference] table of one scenario: head_dtype, device (by the one precedence rule:
    --reference-device > $PARITY_REFERENCE_DEVICE > the file > "auto"), scores (a file
    relative to the scenario, validated in full), scorer (a name in the parity.trainer
    registry, "hf" by default), semantics (what the trainer's logprob is: --trainer PRESET >
    $PARITY_TRAINER > the file's semantics > "tempered"). Returns ({"head_dtype", "device",
    "device_source", "scores", "scorer", "semantics", "trainer", "semantics_source"},
    problems)."""

    problems: list[Problem] = []
    for key in table:
        if key not in REFERENCE_FIELDS:
            problems.append(
                (path, f"reference.{key}", "unknown field; allowed: " + ", ".join(REFERENCE_FIELDS))
            )
    head_dtype = choice(
        table, "head_dtype", HEAD_DTYPES, "float32", path, problems, fld="reference.head_dtype"
    )
    scorer = choice(
        table,
        "scorer",
        tuple(trainer.names()),
        trainer.DEFAULT,
        path,
        problems,
        fld="reference.scorer",
    )
    file_device = table.get("device")
    if file_device is not None and not isinstance(file_device, str):
        problems.append(
            (
                path,
                "reference.device",
                f'must be a string ("auto", "cpu", "cuda" or "cuda:N"), got {file_device!r}',
            )
        )
        file_device = None
    device, source = inputs.precedence(device_override, DEVICE_ENV, file_device, "auto")
    why = device_problem(device)
    if why:
        where = {"cli": "--reference-device", f"env:{DEVICE_ENV}": f"${DEVICE_ENV}"}.get(
            source, path
        )
        problems.append((where, "reference.device", why))
    scores = table.get("scores")
    if scores is not None:
        scores, found = _scores(scores, category, sampling, head_dtype, path)
        problems += found
    semantics = trainer_semantics.parse(table, trainer_override, path, problems)
    return {
        "head_dtype": head_dtype,
        "device": device,
        "device_source": source,
        "scores": scores,
        "scorer": scorer,
        **semantics,
    }, problems


def device_problem(spec: str) -> str | None:
    """Why the reference cannot run on `spec` here (None when it can)."""
    if spec in ("auto", "cpu"):  # always usable: no need to import torch to know
        return None

    try:
        resolve_device(spec)
    except ReferenceError as exc:
        return str(exc)
    return None


def _scores(
    value: Any,
    category,
    sampling,
    head_dtype: str,
    path: str,
) -> tuple[Path | None, list[Problem]]:

    fld = "reference.scores"
    if not isinstance(value, str) or not value.strip():
        return None, [
            (
                path,
                fld,
                f"must be the path of a scores file (.parquet or .jsonl, "
                f"relative to the scenario file), got {value!r}",
            )
        ]
    if category is not None and category.scores_columns is None:
        return None, [
            (
                path,
                fld,
                f"the {category.name} category cannot be judged from a "
                f"scores file: {category.scores_refusal}; remove "
                "reference.scores",
            )
        ]
    file = Path(path).parent / Path(value).expanduser()
    data, found = external.load_scores(file)
    problems = [(path, fld, f"{file}: {m}") for m in found]
    if data is None or category is None:
        return file, problems
    for column, why in category.scores_columns.items():
        if column not in data.columns:
            problems.append(
                (
                    path,
                    fld,
                    f"{file}: no {column} column, which the "
                    f"{category.name} category needs ({why}); write it with "
                    "the trainer (python -m parity.trainer.external score writes "
                    "every column) or judge with the HF reference",
                )
            )
    want = external.context_of(sampling, head_dtype)
    want = tuple(want[c] for c in data.context)
    if data.context and want not in data.contexts():
        have = "; ".join(
            ", ".join(f"{c}={v}" for c, v in zip(data.context, t))
            for t in sorted(data.contexts(), key=str)[:3]
        )
        problems.append(
            (
                path,
                fld,
                f"{file}: no scores for this scenario's "
                + ", ".join(f"{c}={v}" for c, v in zip(data.context, want))
                + f" (the file has {have}); score the sequences with the scenario's "
                "sampling and head dtype",
            )
        )
    return file, problems
