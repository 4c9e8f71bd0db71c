"""A checkpoint one training step from a model (parity.setup.trainstep): deterministic, cached
by base and recipe, the base's tensor names in float32, moved by a step's size and no more."""

import pytest
import torch
from safetensors.torch import load_file

from parity.setup import models
from parity.setup.modelbuild import ModelError
from parity.setup.models import fingerprint
from parity.setup.trainstep import qa_texts, train_step


def test_qa_texts_are_answered_and_seeded():
    texts = qa_texts(8, seed=3)
    assert texts == qa_texts(8, seed=3) and texts != qa_texts(8, seed=4)
    for text in texts:
        question, answer = text.removeprefix("What is ").split("? ")
        assert eval(question) == int(answer)  # noqa: S307 - "a + b" of two small ints


def test_train_step_is_deterministic_and_a_step_in_size(tiny, tmp_path):
    one = train_step("tiny", seed=1, steps=1, lr=1e-5, out=tmp_path / "one", log=lambda m: None)
    two = train_step("tiny", seed=1, steps=1, lr=1e-5, out=tmp_path / "two", log=lambda m: None)
    other = train_step("tiny", seed=2, steps=1, lr=1e-5, out=tmp_path / "o", log=lambda m: None)
    assert fingerprint(one) == fingerprint(two) != fingerprint(other)
    base = load_file(str(tiny / "model.safetensors"))
    new = load_file(str(one / "model.safetensors"))
    assert new.keys() == base.keys()
    moved = 0
    for name, w in base.items():
        assert new[name].dtype == torch.float32  # a step this size would round away in bf16
        d = (new[name] - w.float()).abs().max().item()
        # AdamW's first step moves each weight by about lr (and never by more than a few lr).
        assert d <= 5e-5, name
        moved += d > 1e-6
    assert moved == len(base)  # every tensor trained


def test_train_step_is_cached_by_base_and_recipe(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("PARITY_CACHE_DIR", str(tmp_path))
    models.build_model("tiny", log=lambda m: None)
    path = train_step("tiny", seed=1, steps=1, lr=1e-5, log=lambda m: None)
    assert path == models.model_dir("tiny-sft-s1-n1-lr1e-05")
    logs = []
    assert train_step("tiny", seed=1, steps=1, lr=1e-5, log=logs.append) == path
    assert not any("building" in m for m in logs)  # reused, not retrained


@pytest.mark.parametrize("steps, lr", [(0, 1e-5), (1, 0.0), (1, float("nan")), (1.5, 1e-5)])
def test_train_step_rejects_a_bad_recipe(steps, lr):
    with pytest.raises(ModelError):
        train_step("tiny", seed=1, steps=steps, lr=lr)
