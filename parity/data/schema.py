"""The columns of the tables a run writes: tokens.parquet (one row per sampled token) and the
sequences file of `parity check --export-sequences` (one row per sequence a trainer scores)."""

from __future__ import annotations

FILE = "tokens.parquet"
# Column -> meaning; the order of the file. `parity judge` reads them by name.
COLUMNS = {
    "run_id": "the run (its directory name)",
    "scenario": "scenario name",
    "engine": "engine role: candidate or baseline",
    "engine_label": "the engine setting (EngineSetting.label())",
    "sequence_id": "index of the sequence in its role's list",
    "prompt_index": "index of the prompt in the scenario",
    "sample_index": "0..n-1 among that prompt's samples",
    "position": "0-based position of the token in the completion",
    "token_id": "the sampled token id",
    "engine_logprob": "the engine's own logprob of the sampled token (its logprobs mode)",
    "trainer_logprob": "the reference's processed logprob (NaN: not scored by the reference)",
    "trainer_raw_logprob": "the reference's raw logprob (NaN: not scored)",
    "entropy": "entropy of the reference's processed distribution (NaN: not scored)",
    "trainer_log_kept_mass": "log of the tempered probability mass top-k/top-p keep at the "
    "position (0: nothing cut), where trainer_logprob is the tempered logprob (NaN: not "
    "scored, other semantics, or a scores file without it); `parity judge` diagnoses "
    "truncation_bias by it",
    "boundary_tie": "the token is tied at the top-k/top-p cut (null: not scored or unknown)",
    "weight_version": "weight version that produced the token (null: no update)",
    "head_dtype": "the reference head the trainer_* columns come from (null: not scored)",
}


def schema():
    import pyarrow as pa  # lazy: pyarrow, only when a table is read or written

    types = {
        "run_id": pa.string(),
        "scenario": pa.string(),
        "engine": pa.string(),
        "engine_label": pa.string(),
        "boundary_tie": pa.bool_(),
        "head_dtype": pa.string(),
        **{
            c: pa.float64()
            for c in (
                "engine_logprob",
                "trainer_logprob",
                "trainer_raw_logprob",
                "entropy",
                "trainer_log_kept_mass",
            )
        },
    }
    return pa.schema([(c, types.get(c, pa.int64())) for c in COLUMNS])


EXPORT_COLUMNS = (
    "sequence_key",
    "scenario",
    "engine",
    "engine_label",
    "sequence_id",
    "prompt_index",
    "sample_index",
    "model",
    "prompt_token_ids",
    "token_ids",
    "engine_logprobs",
    "temperature",
    "top_p",
    "top_k",
    "head_dtype",
    "tie_rule",
)


def export_schema():
    import pyarrow as pa  # lazy: pyarrow, only when a table is read or written

    return pa.schema(
        [
            ("sequence_key", pa.string()),
            ("scenario", pa.string()),
            ("engine", pa.string()),
            ("engine_label", pa.string()),
            ("sequence_id", pa.int64()),
            ("prompt_index", pa.int64()),
            ("sample_index", pa.int64()),
            ("model", pa.string()),
            ("prompt_token_ids", pa.list_(pa.int64())),
            ("token_ids", pa.list_(pa.int64())),
            ("engine_logprobs", pa.list_(pa.float64())),
            ("temperature", pa.float64()),
            ("top_p", pa.float64()),
            ("top_k", pa.int64()),
            ("head_dtype", pa.string()),
            ("tie_rule", pa.string()),
        ]
    )
