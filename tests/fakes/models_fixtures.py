"""Fixtures and helpers the unit tests of tests/*/test_models.py and the engine tests of tests/e2e/test_engine_models.py share."""

import json
from pathlib import Path

import pytest

from parity.setup import models
from parity.setup.models import (
    build_model,
)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private cache holding one tiny build, shared by this module's tests."""
    root = tmp_path_factory.mktemp("parity-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PARITY_CACHE_DIR", str(root))
        mp.setenv("HF_HUB_OFFLINE", "1")
        build_model("tiny", log=lambda m: None)
        yield root


@pytest.fixture
def tiny(cache, monkeypatch):
    monkeypatch.setenv("PARITY_CACHE_DIR", str(cache))
    return models.model_dir("tiny")


def _config(path: Path) -> dict:
    return json.loads((path / "config.json").read_text())
