"""Fixtures and helpers the unit tests of tests/*/test_identity.py and the engine tests of tests/e2e/test_engine_identity.py share."""

import json
import shutil
from pathlib import Path

import pytest

T5_ROPE_THETA = 100000.0  # the tiny model's is 10000, 4.51's default: drift must be visible


def _t5_only(src: Path, dst: Path, tokenizer_too: bool = False) -> Path:
    """A copy of `src` whose config.json is spelled as transformers 5 alone writes it."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    assert cfg["rope_theta"] == 10000.0  # the tiny model's; rewritten to 100000 below
    dtype = cfg.pop("torch_dtype")
    cfg.pop("rope_theta")
    cfg.update(dtype=dtype, rope_parameters={"rope_theta": T5_ROPE_THETA, "rope_type": "default"})
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    if tokenizer_too:
        tok = json.loads((dst / "tokenizer_config.json").read_text())
        tok["tokenizer_class"] = "TokenizersBackend"
        (dst / "tokenizer_config.json").write_text(json.dumps(tok, indent=2))
    return dst


def _generation_edited(src: Path, dst: Path, **fields) -> Path:
    """A copy of `src` whose generation_config.json has `fields` set (e.g. another eos)."""
    shutil.copytree(src, dst)
    gen = json.loads((dst / "generation_config.json").read_text())
    gen.update(fields)
    (dst / "generation_config.json").write_text(json.dumps(gen, indent=2))
    return dst


@pytest.fixture(scope="module")
def copies(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("identity")
    return {
        "tiny": tiny_model,
        "t5": _t5_only(tiny_model, root / "t5"),
        "t5_tok": _t5_only(tiny_model, root / "t5_tok", tokenizer_too=True),
        # generation_config.json's eos differs from config.json's (1): engines also stop at 5
        "gen_eos": _generation_edited(tiny_model, root / "gen_eos", eos_token_id=[1, 5]),
        # request defaults in generation_config.json
        "gen_defaults": _generation_edited(
            tiny_model, root / "gen_defaults", temperature=0.7, top_p=0.8, top_k=20
        ),
    }
