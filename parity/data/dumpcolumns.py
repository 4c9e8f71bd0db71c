"""The canonical columns of a per-token dump and each RL framework's names for them (PRESETS):
`--map` options parsed, and a file's columns resolved onto the canonical ones, every problem
named."""

from __future__ import annotations

# The canonical schema, long layout (one row per scored token). A wide table (one row per
# sequence, list columns such as verl's [B, T] tensors) is exploded into it.
CANONICAL = {
    "sequence_id": "the sequence a token belongs to (int or str; wide tables: the row number)",
    "engine_logprob": "the rollout engine's logprob of the sampled token (required)",
    "trainer_logprob": "the trainer's logprob of the same token (required; -inf = probability 0)",
    "token_id": "the sampled token id (optional)",
    "position": "0-based position in the completion (optional; orders a sequence's rows)",
    "entropy": "the trainer's entropy at that position (optional)",
    "trainer_log_kept_mass": "log of the tempered probability mass the engine's top-k/top-p "
    "keep at that position, <= 0 (optional; with it a tempered trainer's gap is tested for "
    "truncation_bias)",
    "weight_version": "the policy version that generated the token (optional, nullable int)",
    "prompt_id": "the prompt a sequence answers (optional; its samples are resampled together)",
    "boundary_tie": "1 = the token is tied with the lowest kept logit at the top-k/top-p cut "
    "(optional; such a token the trainer excludes is the tie rule's choice and "
    "does not count)",
    "mask": "1 = a scored token, 0 = padding or prompt, dropped (optional)",
}
REQUIRED = ("engine_logprob", "trainer_logprob")

# Each framework's names for the canonical columns (the first one present wins), read from its
# source: verl verl/trainer/ppo/rollout_corr_helper.py, verl/workers/actor/dp_actor.py,
# verl/experimental/agent_loop/agent_loop.py (uid: ray_trainer.py; param_version_start:
# experimental/fully_async_policy); TRL trl/trainer/grpo_trainer.py (the dict
# _generate_and_score_completions returns); prime-rl src/prime_rl/trainer/rl/loss.py (LossInputs)
# and data.py; NeMo-RL nemo_rl/algorithms/grpo.py (train_data, train_data_step<N>.jsonl).
PRESETS: dict[str, dict[str, tuple[str, ...]]] = {
    "parity": {"prompt_id": ("prompt_id", "prompt_index")},
    "verl": {
        "engine_logprob": ("rollout_log_probs",),
        "trainer_logprob": ("old_log_probs",),
        "mask": ("response_mask",),
        "token_id": ("responses",),
        "entropy": ("entropys",),
        "prompt_id": ("uid",),
        "weight_version": ("param_version_start",),
    },
    "trl": {
        "engine_logprob": ("sampling_per_token_logps",),
        "trainer_logprob": ("old_per_token_logps",),
        "mask": ("completion_mask",),
        "token_id": ("completion_ids",),
    },
    "prime-rl": {
        "engine_logprob": ("inference_logprobs",),
        "trainer_logprob": ("trainer_logprobs",),
        "mask": ("loss_mask",),
        "token_id": ("input_ids",),
        "entropy": ("entropy",),
    },
    "nemo-rl": {
        "engine_logprob": ("generation_logprobs",),
        "trainer_logprob": ("prev_logprobs",),
        "mask": ("token_loss_mask", "token_mask"),
        "token_id": ("token_ids", "input_ids"),
        "sequence_id": ("idx",),
    },
}


def parse_map(items: list[str]) -> tuple[dict[str, str], list[tuple[str, str, str]]]:
    """`--map canonical=theirs` options -> {canonical: theirs} ("" = no such column)."""
    out, problems = {}, []
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep:
            problems.append(
                ("--map", item, "expected canonical=column, e.g. engine_logprob=rollout_log_probs")
            )
        elif key not in CANONICAL:
            problems.append(
                ("--map", key, f"not a canonical column: use one of {', '.join(CANONICAL)}")
            )
        else:
            out[key] = value.strip()
    return out, problems


# ------------------------------------------------------------------------- mapping, layout


def resolve(
    names: list[str],
    fmt: str | None,
    overrides: dict[str, str],
    path: str,
) -> tuple[dict[str, str], list[tuple[str, str, str]]]:
    """{canonical: the file's column}: --map first, then the preset's names, then the canonical
    name itself. Every problem: a --map column the file lacks, a required column not found."""
    preset = PRESETS[fmt or "parity"]
    shown = ", ".join(names[:40]) + (f" (+{len(names) - 40} more)" if len(names) > 40 else "")
    mapping, problems = {}, []
    for canon in CANONICAL:
        if canon in overrides:
            theirs = overrides[canon]
            if theirs and theirs not in names:
                problems.append(
                    (path, theirs, f"--map {canon}={theirs}: no such column; the file has: {shown}")
                )
            elif theirs:
                mapping[canon] = theirs
            continue
        found = [n for n in preset.get(canon, ()) + (canon,) if n in names]
        if found:
            mapping[canon] = found[0]
    for canon in REQUIRED:
        if canon in mapping or canon in overrides:
            continue
        looked = ", ".join(dict.fromkeys(preset.get(canon, ()) + (canon,)))
        guess = [
            f
            for f, p in PRESETS.items()
            if f != (fmt or "parity")
            and all(any(n in names for n in p.get(c, ())) for c in REQUIRED)
        ]
        hint = (
            f"this looks like a {guess[0]} dump: add --format {guess[0]}"
            if guess
            else f"name it with --map {canon}=COLUMN or use --format {{{','.join(PRESETS)}}}"
        )
        problems.append(
            (
                path,
                canon,
                f"no {canon} column ({CANONICAL[canon]}); looked for "
                f"{looked}; the file has: {shown}; {hint}",
            )
        )
    return mapping, problems
