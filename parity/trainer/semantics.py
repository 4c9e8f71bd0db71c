"""What the trainer's logprob of a sampled token is (a scenario's `[reference] semantics`), the
`--trainer` presets naming each RL framework's choice, and a reference score seen as that
trainer's logprob. The sources of each preset: docs/trainer.md#trainer-semantics."""

from __future__ import annotations

import dataclasses

from parity.setup import inputs
from parity.trainer.reference import RefScore

# tempered: log_softmax(logits / T) over the full vocabulary (no top-k/top-p replay);
# processed: temperature, top-k and top-p replayed as the engine's sampler applies them;
# raw: log_softmax(logits), no temperature.
SEMANTICS = ("tempered", "processed", "raw")
DEFAULT = "tempered"  # what verl, TRL, OpenRLHF and prime-rl compute
ENV = "PARITY_TRAINER"  # a preset name, for every scenario (below --trainer)
PRESETS = {
    "verl": "tempered",
    "trl": "tempered",
    "openrlhf": "tempered",
    "prime-rl": "tempered",
    "nemo-rl": "processed",
    "processed-replay": "processed",
}


def trainer_view(score: RefScore, semantics: str) -> RefScore:
    """`score` with its processed_logprob replaced by the trainer's logprob under `semantics`
    (what the categories judge the engine against). A score without a tempered column (a
    scores file: its trainer_logprob is whatever the trainer computed) is returned as is."""
    if semantics == "processed" or (semantics == "tempered" and score.tempered_logprob is None):
        return score
    column = score.tempered_logprob if semantics == "tempered" else score.raw_logprob
    return dataclasses.replace(score, processed_logprob=column)


def unknown_trainer(name: str | None, where: str, fld: str) -> tuple[str, str, str] | None:
    """The problem (where, field, message naming the presets) of a trainer name that is not a
    PRESETS name; None for a known name or no name."""
    if name is None or name in PRESETS:
        return None
    return (where, fld, f"unknown trainer {name!r}; known: {', '.join(PRESETS)}")


def parse(table: dict, trainer: str | None, path: str, problems: list) -> dict:
    """{"semantics", "trainer", "semantics_source"} of a scenario's [reference] table: a
    --trainer / $PARITY_TRAINER preset (PRESETS) over the file's `semantics` over DEFAULT; each
    problem (file, field, message with the fix) added to `problems`."""
    fld = "reference.semantics"
    value = table.get("semantics")
    if value is not None and value not in SEMANTICS:
        problems.append(
            (
                path,
                fld,
                f"{value!r}: what the trainer's logprob is: use one of "
                + ", ".join(f'"{c}"' for c in SEMANTICS)
                + " (tempered: log_softmax(logits / T) over the full vocabulary, as RL "
                "frameworks compute; processed: top-k/top-p replayed; raw: no temperature)",
            )
        )
        value = None
    preset, source = inputs.precedence(trainer, ENV, None, None)
    if preset is None:
        source = "scenario" if value else "default"
        return {"semantics": value or DEFAULT, "trainer": None, "semantics_source": source}
    unknown = unknown_trainer(preset, "--trainer" if source == "cli" else f"${ENV}", fld)
    if unknown:
        problems.append(unknown)
        return {"semantics": DEFAULT, "trainer": None, "semantics_source": source}
    return {"semantics": PRESETS[preset], "trainer": preset, "semantics_source": source}
