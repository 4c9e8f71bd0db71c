"""The trainer side refuses a checkpoint whose tensors transformers would make up (a layer's MLP
missing), names them, and accepts a tied lm_head that is legitimately absent."""

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from safetensors.torch import load_file, save_file

from parity.run import modelcheck
from parity.trainer import loading
from parity.trainer.heads import ReferenceError
from parity.trainer.reference import Reference

MLP = [f"model.layers.1.mlp.{p}.weight" for p in ("down_proj", "gate_proj", "up_proj")]


def _without(src: Path, dst: Path, drop) -> Path:
    """A copy of checkpoint `src` whose safetensors lacks the tensors `drop` selects."""
    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    save_file(
        {k: v for k, v in tensors.items() if not drop(k)},
        dst / "model.safetensors",
        metadata={"format": "pt"},
    )
    return dst


@pytest.fixture(scope="module")
def no_mlp(tiny_model, tmp_path_factory):
    """The tiny model without layer 1's MLP."""
    out = tmp_path_factory.mktemp("loading") / "tiny-no-mlp"
    return _without(Path(tiny_model), out, lambda k: k.startswith("model.layers.1.mlp."))


def test_a_checkpoint_missing_a_layers_mlp_is_refused_naming_the_tensors(no_mlp):
    assert loading.check_checkpoint(no_mlp) == MLP
    with pytest.raises(loading.InventedWeightsError) as err:
        loading.load_causal_lm(no_mlp, dtype="auto")
    assert err.value.invented == MLP and isinstance(err.value, ReferenceError)
    assert all(name in str(err.value) for name in MLP)
    assert "random" in str(err.value)
    # The reference refuses it at load instead of scoring with random MLP weights.
    with pytest.raises(loading.InventedWeightsError):
        Reference(no_mlp, device="cpu")._load()


def test_complete_checkpoints_and_a_tied_lm_head_load(tiny_model, tmp_path):
    assert loading.check_checkpoint(tiny_model) == []
    assert loading.load_causal_lm(tiny_model, dtype="auto") is not None
    from parity.setup.models import build_model

    tied = build_model("tiny-tied", log=lambda m: None)
    assert "lm_head.weight" not in load_file(Path(tied) / "model.safetensors")
    assert loading.check_checkpoint(tied) == []
    # An untied lm_head left out is made up: refused.
    no_head = _without(Path(tiny_model), tmp_path / "no-head", lambda k: k == "lm_head.weight")
    assert loading.check_checkpoint(no_head) == ["lm_head.weight"]


def test_more_tensors_than_shown_are_counted():
    names = [f"t{i}" for i in range(loading.SHOWN + 3)]
    text = loading.refusal("/x/ckpt", names)
    assert "lacks 11 tensor(s)" in text and "and 3 more" in text and "t8" not in text


def test_preflight_refuses_the_model_before_any_engine_starts(no_mlp, tiny_model):
    def res(path):
        return SimpleNamespace(model_path=str(path), scenario=SimpleNamespace(path=Path("s.toml")))

    logs = []
    problems = modelcheck.weight_problems(
        [res(no_mlp), res(tiny_model), res(no_mlp), res("/nonexistent")], logs.append
    )
    assert [(p[0], p[1]) for p in problems] == [("s.toml", "model")] * 2
    assert all(name in problems[0][2] for name in MLP)
    assert logs == []  # a path that is no checkpoint: the engines and the reference say so


def test_preflight_goes_on_when_a_checkpoint_cannot_be_checked(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    logs = []
    res = SimpleNamespace(model_path=str(tmp_path), scenario=SimpleNamespace(path=Path("s.toml")))
    assert modelcheck.weight_problems([res], logs.append) == []
    assert len(logs) == 1 and "could not check the tensors" in logs[0]


@pytest.fixture(scope="module")
def update_no_mlp(perturbed, tmp_path_factory):
    """The update target (the perturbed tiny model) without layer 1's MLP."""
    out = tmp_path_factory.mktemp("loading") / "perturbed-no-mlp"
    return _without(Path(perturbed), out, lambda k: k.startswith("model.layers.1.mlp."))


def test_an_update_checkpoint_missing_tensors_keeps_the_old_ones(
    tiny_model, perturbed, update_no_mlp
):
    # As vLLM's reload_weights does (docs/measurements.md#update-missing-tensors): the
    # tensors the update lacks keep the values from before it; the rest are the new ones.
    old = loading.load_causal_lm(tiny_model, dtype="auto")
    new = loading.load_causal_lm(perturbed, dtype="auto")
    model, kept = loading.load_update(old, update_no_mlp, dtype="auto")
    assert kept == MLP
    got, before, after = model.state_dict(), old.state_dict(), new.state_dict()
    for name in got:
        expected = before[name] if name in MLP else after[name]
        assert got[name].equal(expected), name
    assert not before[MLP[0]].equal(after[MLP[0]])  # the control: the update changes them
    # A complete update keeps nothing.
    assert loading.load_update(old, perturbed, dtype="auto")[1] == []


def test_the_update_trainer_scores_missing_tensors_with_the_old_weights(tiny_model, update_no_mlp):
    from parity.categories import weight_update
    from parity.trainer.updates import SplitScorer
    from parity.verdicts import core

    scorer = SplitScorer(tiny_model, update_no_mlp)
    scorer.pairs()
    assert scorer.kept_old == MLP
    verdict, detail = weight_update._kept_old(
        core.Verdict("pass", None, "the update took effect", []), {}, scorer.kept_old
    )
    assert detail["kept_old_tensors"] == MLP
    # An incomplete checkpoint fails on its own, naming the tensors and the fix, even when the
    # engine did what its reload makes of it.
    assert (verdict.outcome, verdict.diagnosis) == ("fail", "incomplete_checkpoint")
    (missing,) = [f for f in verdict.findings if f.name == "missing_tensors"]
    assert (missing.outcome, missing.value, missing.limit) == ("fail", 3, 0)
    assert "lacks 3 tensor(s)" in verdict.message and "keeps their old values" in verdict.message
    assert "export every tensor" in verdict.message and MLP[0] in verdict.message
    # A verdict that failed otherwise keeps its diagnosis and names the tensors too.
    other, _ = weight_update._kept_old(
        core.Verdict("fail", "no_effect", "still the old weights", []), {}, MLP
    )
    assert other.diagnosis == "no_effect" and "lacks 3 tensor(s)" in other.message
    # The scenario's own (old) checkpoint is never completed: a missing tensor there is refused.
    with pytest.raises(loading.InventedWeightsError):
        SplitScorer(update_no_mlp, tiny_model).pairs()
