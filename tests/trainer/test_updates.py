"""Weight updates: the trainer's keep/recompute scoring against an independent step-by-step
decode, scenario validation, and (marked `engine`) the update scenarios on real V1 and V0."""

import numpy as np
import pytest
import torch

from parity.engines.base import SamplingSpec
from parity.trainer.update_spec import UpdateSpec, parse_update
from parity.trainer.updates import (
    SplitScorer,
    cached_boundary,
    keep_boundary,
    shared_context,
)

T1 = SamplingSpec(temperature=1.0)
PROMPT = [1, 40, 41, 42, 43, 44, 45]
TOKENS = [50, 51, 52, 53, 54, 55, 56, 57, 58, 59]


@pytest.fixture(scope="module")
def scorer(tiny_model, perturbed):
    # float32 everywhere: the cached and uncached forwards then agree to ~1e-6.
    return SplitScorer(tiny_model, perturbed, head_dtype="model", dtype="float32")


@pytest.fixture(scope="module")
def same(tiny_model):
    return SplitScorer(tiny_model, tiny_model, head_dtype="model", dtype="float32")


def _step_loop(scorer: SplitScorer, prompt, tokens, k):
    """An engine's step loop, written out: the prefill samples token 1, each later step feeds
    the last token and samples the next; steps from the (k+1)-th on run the new weights over
    the cache the old ones filled. Uses the models' own logits (their head, their cache)."""
    (old, _), (new, _) = scorer._load()
    out = (old if k >= 1 else new)(input_ids=torch.tensor([prompt]), use_cache=True)
    logps = [out.logits[0, -1].float().log_softmax(-1)[tokens[0]].item()]
    cache = out.past_key_values
    for j in range(1, len(tokens)):
        model = old if j < k else new
        out = model(
            input_ids=torch.tensor([[tokens[j - 1]]]), past_key_values=cache, use_cache=True
        )
        cache = out.past_key_values
        logps.append(out.logits[0, -1].float().log_softmax(-1)[tokens[j]].item())
    return np.array(logps)


def test_boundaries():
    assert keep_boundary(7, 0) == 0  # never prefilled: nothing computed by the old
    assert keep_boundary(7, 1) == 7  # prefill computed the 7 prompt positions
    assert keep_boundary(7, 3) == 9  # plus the KV of tokens 1 and 2
    assert cached_boundary(129, 128) == 128  # one full block served from the cache
    assert cached_boundary(128, 128) == 0  # the last prompt token is always recomputed
    assert cached_boundary(300, 128) == 256


@pytest.mark.parametrize("k", [0, 1, 4, 9, 10])
def test_keep_matches_an_explicit_step_loop(scorer, k):
    ours = scorer.keep(PROMPT, TOKENS, k, T1)
    assert np.allclose(ours, _step_loop(scorer, PROMPT, TOKENS, k), atol=2e-4)


def test_keep_equals_recompute_when_the_weights_do_not_change(same):
    for k in (0, 3, 10):
        assert np.allclose(
            same.keep(PROMPT, TOKENS, k, T1), same.recompute(PROMPT, TOKENS, k, T1), atol=2e-4
        )


def test_keep_with_k0_is_the_new_weights_everywhere(scorer):
    assert np.allclose(
        scorer.keep(PROMPT, TOKENS, 0, T1), scorer.new(PROMPT, TOKENS, T1), atol=1e-6
    )


def test_keep_and_recompute_agree_before_the_update_and_differ_after(scorer):
    k = 4
    keep, rec = scorer.keep(PROMPT, TOKENS, k, T1), scorer.recompute(PROMPT, TOKENS, k, T1)
    old = scorer.old(PROMPT, TOKENS, T1)
    assert np.allclose(keep[:k], old[:k], atol=1e-5) and np.allclose(rec[:k], old[:k], atol=1e-5)
    # Token k+1 is predicted by the new weights in both, over old vs new KV: they differ.
    assert np.abs(keep[k:] - rec[k:]).mean() > 0.05
    # And the boundary is exact: one position later is the old weights' prediction.
    assert not np.isclose(keep[k], old[k], atol=1e-3)


def test_stale_prefix_split_scores_the_completion_under_new_weights(scorer):
    prompt = PROMPT * 3
    stale = scorer.score(prompt, TOKENS, 16, T1)
    assert stale.shape == (len(TOKENS),)
    assert np.abs(stale - scorer.new(prompt, TOKENS, T1)).mean() > 0.01
    assert np.allclose(scorer.score(prompt, TOKENS, 0, T1), scorer.new(prompt, TOKENS, T1))


def test_shared_context():
    assert shared_context([[1, 2], [3]], 5) == [1, 2, 3, 1, 2]
    assert shared_context([[1, 2]], 0) == []


def test_parse_update_reports_every_problem():
    spec, problems = parse_update({"scale": 0.5, "via": "reload", "mode": "keep"}, "f.toml")
    assert spec is not None and spec.scale == 0.5 and not problems
    spec, problems = parse_update(
        {"via": "magic", "mode": "later", "scale": -1, "nope": 1, "clear_cache": "yes"}, "f.toml"
    )
    assert spec is None
    assert {fld for _, fld, _ in problems} == {
        "update.via",
        "update.mode",
        "update.scale",
        "update.nope",
        "update.clear_cache",
    }


def test_scenario_validation(tmp_path):
    from parity.run.scenario import parse_scenario

    good = tmp_path / "good.toml"
    good.write_text(
        'category = "weight_update"\nprobe = "inflight"\n'
        'update = { after_tokens = 4 }\n[prompts]\nsource = "arithmetic:4"\n'
    )
    sc, problems = parse_scenario(good)
    assert not problems and sc.options["update"].after_tokens == 4
    assert sc.options["probe"] == "inflight"
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'category = "weight_update"\nprobe = "sometimes"\n'
        'update = { via = "magic" }\n[prompts]\nsource = "arithmetic:4"\n'
    )
    sc, problems = parse_scenario(bad)
    assert sc is None and {fld for _, fld, _ in problems} == {"probe", "update.via"}
    other = tmp_path / "other.toml"
    other.write_text(
        'category = "logprobs"\nupdate = { scale = 1.0 }\n[prompts]\n'
        'source = "arithmetic:4"\n[sampling]\ntemperature = 0.7\n'
    )
    sc, problems = parse_scenario(other)
    assert "update" in {fld for _, fld, _ in problems}


# ----------------------------------------------------------------------------- real engines


@pytest.mark.parametrize(
    "paused,kind",
    [
        ([1, 2, 3, 4], "equal"),
        ([1, 2, 4, 5], "lost"),
        ([1, 2, 2, 3], "duplicated"),
        ([1, 2, 9, 9], "diverged"),
        ([1, 2, 3, 5], "diverged"),
    ],
)
def test_stream_check_tells_a_shift_from_a_divergence(paused, kind):
    from parity.trainer.updates import stream_check

    assert stream_check(paused, [1, 2, 3, 4, 5, 6], 4) == kind
    assert stream_check(paused, [1, 2], 4) == "short"


def test_parse_update_a_training_step():
    spec, problems = parse_update({"train_steps": 2, "lr": 2e-5, "seed": 3}, "f.toml")
    assert not problems and (spec.train_steps, spec.lr, spec.seed) == (2, 2e-5, 3)
    _, problems = parse_update({"train_steps": 2, "scale": 1.0}, "f.toml")
    assert [fld for _, fld, _ in problems] == ["update.scale"]  # a perturbation's field
    _, problems = parse_update({"lr": 1e-5}, "f.toml")
    assert [fld for _, fld, _ in problems] == ["update.lr"]  # lr without a step
    _, problems = parse_update({"train_steps": -1, "lr": 0.0}, "f.toml")
    assert {fld for _, fld, _ in problems} == {"update.train_steps", "update.lr"}


def test_target_path_of_a_training_step(monkeypatch):
    from types import SimpleNamespace

    from parity.trainer import updates

    calls = []
    monkeypatch.setattr(updates, "train_step", lambda *a, **k: calls.append(a) or "/step")
    monkeypatch.setattr(updates, "perturb", lambda *a, **k: calls.append(a) or "/perturbed")
    step = SimpleNamespace(options={"update": UpdateSpec(train_steps=2, lr=1e-5, seed=4)})
    assert updates.target_path(step, "/m") == "/step" and calls[-1] == ("/m", 4, 2, 1e-5)
    coarse = SimpleNamespace(options={"update": UpdateSpec(scale=1.0)})
    assert updates.target_path(coarse, "/m") == "/perturbed" and calls[-1] == ("/m", 1, 1.0)
