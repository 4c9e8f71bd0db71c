"""off_by_one in the logprobs category: a trainer scores file (parity.trainer.external) whose
trainer_logprob column sits one position off the engine's sampled tokens is named so, by the
same detection `parity judge` uses (parity.verdicts.alignment), on a real recorded SmolLM2 run
(the logprobs-processed scenario's tokens.parquet, engine V1-parity against parity's
reference)."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from parity.categories import logprobs
from parity.engines.base import SamplingSpec, Sequence
from parity.trainer import external
from parity.verdicts import alignment
from parity.verdicts.formulas import ClipRange

REAL = Path(__file__).parent.parent / "fixtures" / "tokens-logprobs-processed-smollm2.parquet"
SAMPLING = SamplingSpec(temperature=0.7, top_p=0.9, top_k=50)  # the run's (logprobs-processed)
TOL = logprobs.Logprobs.tolerances  # the shipped ones


def _recorded():
    """Per sequence of the recorded run: (token ids, engine logprobs, trainer logprobs)."""
    cols = pq.read_table(REAL).to_pydict()
    seq = np.asarray(cols["sequence_id"])
    out = []
    for i in np.unique(seq):
        m = seq == i
        out.append(
            (
                np.asarray(cols["token_id"])[m].tolist(),
                np.asarray(cols["engine_logprob"])[m],
                np.asarray(cols["trainer_logprob"])[m],
            )
        )
    return out


def _judge(tmp_path, shift: int):
    """The recorded engine logprobs judged against a scores file holding the recorded trainer
    logprobs moved `shift` positions (+1: each position holds the next token's logprob, the
    last repeated; -1: the previous one's, the first repeated). The file has no raw column
    from the run; trainer_raw_logprob is the trainer's - 0.3 (only the raw diagnosis reads it,
    which off_by_one precedes)."""
    rows = {k: [] for k in ("sequence_key", "position", "trainer_logprob", "trainer_raw_logprob")}
    seqs = []
    for i, (tokens, engine, trainer) in enumerate(_recorded()):
        if shift > 0:
            trainer = np.r_[trainer[shift:], trainer[-shift:]]
        elif shift < 0:
            trainer = np.r_[trainer[:-shift], trainer[:shift]]
        key = external.sequence_key([i], tokens)
        rows["sequence_key"] += [key] * len(tokens)
        rows["position"] += list(range(len(tokens)))
        rows["trainer_logprob"] += trainer.tolist()
        rows["trainer_raw_logprob"] += (trainer - 0.3).tolist()
        seqs.append(Sequence(i, 0, [i], tokens, engine.tolist()))
    path = tmp_path / f"scores{shift}.parquet"
    pq.write_table(pa.table(rows), path)
    data, problems = external.load_scores(path)
    assert not problems, problems
    scores = external.ExternalScores(data, SAMPLING, "float32").score(
        [(s.prompt_token_ids, s.token_ids) for s in seqs], SAMPLING
    )
    return logprobs.check(seqs, scores, TOL, ClipRange(), 200, "processed", SAMPLING)


def test_an_aligned_scores_file_passes(tmp_path):
    verdict, detail = _judge(tmp_path, 0)
    assert verdict.outcome == "pass", verdict.message
    assert detail["alignment"]["gap_engine_later"] > 10 * detail["vs_processed"]["abs_dlogp_mean"]


@pytest.mark.parametrize("shift", [1, -1])
def test_a_scores_file_one_position_off_is_named_off_by_one(tmp_path, shift):
    verdict, detail = _judge(tmp_path, shift)
    assert verdict.outcome == "fail" and verdict.diagnosis == "off_by_one", verdict.message
    gap = detail["vs_processed"]["abs_dlogp_mean"]
    # the file's position t holds the trainer's logprob of token t + shift: the engine's at
    # t + shift matches it
    key = "gap_engine_later" if shift > 0 else "gap_engine_earlier"
    assert detail["alignment"][key] <= alignment.COLLAPSE * gap
    assert "scores file" in verdict.message and "position t" in verdict.message
    assert "off_by_one" in logprobs.CATEGORY.diagnoses
