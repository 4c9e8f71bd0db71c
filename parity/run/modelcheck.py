"""The findings every category gets from the runner: the model each engine runs must be the
model the trainer loads (and both engines of a pair the same one), by the one identity rule of
parity.engines.identity; and config drift, what an engine environment's own transformers would read
from the checkpoint, found before any engine starts."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable

from parity import engines
from parity.engines import identity, identity_drift
from parity.engines.base import EngineError
from parity.engines.engine_checks import read_model_facts
from parity.trainer import loading
from parity.verdicts import core
from parity.verdicts.core import Verdict

Log = Callable[[str], None]

# The findings the runner adds to every category's verdict, by name family and kind (as a
# category's `findings`): identity (each engine vs the trainer, baseline vs candidate) and config
# drift (an engine environment's reading of the checkpoint, before its engine starts).
FINDINGS = {"identity.*": "equality", "drift.*": "equality"}


def facts_wanted(results) -> list[tuple[str, str]]:
    """(engine environment, checkpoint) pairs whose facts config_drift reads, sorted."""
    return sorted(
        {
            (s.env, r.model_path)
            for r in results
            for s in r.scenario.settings().values()
            # a served engine's server, and a plugin's engine kind, read the checkpoint their
            # own way: their effective config's identity facts are judged after the run; the
            # trainer's own interpreter ("harness") has nothing to drift from
            if s.engine != "openai" and s.engine in engines.ENGINES and s.env != "harness"
        }
    )


def config_drift(
    results, pythons: dict[str, str], log_dir: Path, log: Log
) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """What each engine environment's own transformers reads from each checkpoint, against what
    the trainer reads (identity_drift.drift), before any engine starts: {(env, model): rows}."""

    out = {}
    for env, model_path in facts_wanted(results):
        try:
            facts = read_model_facts(pythons[env], model_path, log_dir / f"facts-{env}.log")
        except EngineError as exc:
            log(f"[validate] could not read {Path(model_path).name} in env {env}: {exc}")
            continue  # the engine start will say what is wrong with the environment
        rows = identity_drift.drift(
            trainer_facts(model_path), facts, env, str(facts.get("transformers_version"))
        )
        if rows:
            out[(env, model_path)] = rows
    return out


def drift_for(drifts: dict, setting, model_path: str) -> list[dict[str, Any]] | None:
    """The config drift (config_drift's rows) that keeps this setting's engine from starting:
    its environment's, for the engine kinds config_drift reads for; None when there is none."""
    return drifts.get((setting.env, model_path)) if setting.engine in engines.ENGINES else None


def weight_problems(results, log: Log) -> list[tuple[str, str, str]]:
    """A checkpoint whose tensors the trainer would make up (parity.trainer.loading), refused
    before any engine starts: one problem per scenario on it, naming the tensors."""
    invented: dict[str, list[str]] = {}
    out = []
    for res in results:
        path = res.model_path
        if path not in invented and not (Path(path) / "config.json").is_file():
            invented[path] = []  # not a checkpoint directory: the engines and reference say so
        if path not in invented:
            try:
                invented[path] = loading.check_checkpoint(path)
            except Exception as exc:  # unreadable here: the reference's own load says why
                log(f"[validate] could not check the tensors of {Path(path).name}: {exc}")
                invented[path] = []
        if invented[path]:
            out.append(
                (str(res.scenario.path), "model", loading.refusal(path, invented[path], "model"))
            )
    return out


@functools.cache
def trainer_facts(model_path: str) -> dict[str, Any]:
    """The model-identity facts the trainer side reads, once per checkpoint and process."""

    return identity.trainer_facts(model_path)


def drift_verdict(res) -> Verdict:
    envs = {role: s.env for role, s in res.scenario.settings().items()}
    findings = [
        core.Finding(
            f"drift.{role}.{r['key']}",
            "equality",
            "fail",
            r.get(envs[role]),
            r.get("trainer"),
            {"row": r},
            r["message"],
        )
        for role, rows in res.drift.items()
        for r in rows
    ]
    text = "; ".join(f"{role}: {r['message']}" for role, rows in res.drift.items() for r in rows)
    return Verdict(
        "fail",
        "config_drift",
        "the engine's environment would read this checkpoint "
        f"differently from the trainer (engine not started): {text}",
        findings,
    )


# The fix of an identity key whose difference is not a different checkpoint.
_FIXES = {
    "model.stop_token_ids": "the engine ends generation at its tokenizer's eos and at every "
    "eos id of generation_config.json, the trainer at config.json's and the tokenizer's: give "
    "generation_config.json the eos_token_id of config.json (or the reverse)",
    "model.sampling_defaults": "requests that omit temperature/top_p/top_k/min_p get other "
    "defaults on the engine than the model's generation_config.json sets (engine arguments "
    "generation_config, override_generation_config): send every sampling parameter with each "
    "request, or start the engine with the model's defaults",
}


def add_identity(res, verdict: Verdict, detail: dict[str, Any]) -> None:
    """Model identity, engine vs trainer and engine vs engine, by the one rule (identity.py)."""

    trainer = trainer_facts(res.model_path)
    facts = {
        role: identity.engine_facts((er.effective_config or {}).get("key") or {})
        for role, er in res.runs.items()
    }
    # Facts an engine kind cannot expose at all (a served engine's endpoints give no
    # hf_config): shown as unknown, not compared, and named in the finding's note.
    hidden = {
        role: set((er.effective_config or {}).get("not_exposed") or ())
        for role, er in res.runs.items()
    }
    # The dtype an engine computes in is a setting (the update scenarios run fp32 engines on
    # bf16 checkpoints, scored by an fp32 trainer); it is compared engine vs engine only.
    pairs = [
        (
            f"identity.{role}_vs_trainer",
            (role, "trainer"),
            facts[role],
            trainer,
            {"model.dtype"},
            hidden[role],
        )
        for role in facts
    ]
    if len(facts) == 2:
        pairs.append(
            (
                "identity.baseline_vs_candidate",
                ("baseline", "candidate"),
                facts["baseline"],
                facts["candidate"],
                set(),
                hidden["baseline"] | hidden["candidate"],
            )
        )
    rows_out = {}
    for name, names, a, b, skip, not_exposed in pairs:
        rows = [r for r in identity.compare(a, b, names=names) if r["key"] not in skip]
        rows_out[name] = rows
        compared = [r for r in rows if r["key"] not in not_exposed]
        differs = [r for r in compared if r["status"] == "differs"]
        unknown = [r for r in compared if r["status"] == "unknown"]
        if not compared:  # nothing this pair can show: no finding, only the rows
            continue
        outcome = "fail" if differs else ("inconclusive" if unknown else "pass")
        note = "; ".join(f"{r['key']}: {r[names[0]]!r} vs {r[names[1]]!r}" for r in differs) or (
            ("not readable on one side: " + ", ".join(r["key"] for r in unknown)) if unknown else ""
        )
        if not_exposed & {r["key"] for r in rows}:
            note = "; ".join(
                filter(
                    None,
                    [
                        note,
                        "not exposed by a served engine, not "
                        "compared: " + ", ".join(sorted(not_exposed & {r["key"] for r in rows})),
                    ],
                )
            )
        verdict.findings.append(
            core.Finding(name, "equality", outcome, len(differs), 0, {"rows": rows}, note)
        )
        if differs:
            fixes = "".join(f"{_FIXES[r['key']]}; " for r in differs if r["key"] in _FIXES)
            verdict.diagnosis = "model_mismatch"
            verdict.message = (
                f"{names[0]} and {names[1]} do not run the same model ({note}): {fixes}"
                "check the checkpoint each side loads, its hf_overrides, and "
                "config drift between transformers versions (rope_theta vs "
                "rope_parameters); " + verdict.message
            )
    detail["identity"] = rows_out
    verdict.recombine()
