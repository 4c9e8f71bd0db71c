"""Built-in models: the tiny model is deterministic, peaked, portable across transformers
versions; perturbed copies differ deterministically; SmolLM2 answers arithmetic."""

import json
import math
import shutil

import pytest
from models_fixtures import _config
from safetensors.torch import load_file

from parity.setup import modelbuild, models
from parity.setup.modelbuild import ModelError
from parity.setup.models import (
    build_model,
    fingerprint,
    mean_entropy,
    perturb,
    resolve_model,
)

SAMPLE = [
    "The cat sees a red ball today. 12 + 7 = 19.",
    "A student reads the old book. 33 - 8 = 25. 6 * 7 = 42.",
    "My friend helps a new idea in the park. The river follows a long road.",
]
SAMPLING_KEYS = {"do_sample", "temperature", "top_p", "top_k", "repetition_penalty"}


def test_tiny_build_is_deterministic_and_on_demand(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("PARITY_CACHE_DIR", str(tmp_path))
    logs = []
    again = resolve_model("tiny", log=logs.append)
    assert "not built yet" in logs[0]
    assert again != tiny
    assert fingerprint(again) == fingerprint(tiny)
    assert (
        load_file(str(again / "model.safetensors")).keys()
        == load_file(str(tiny / "model.safetensors")).keys()
    )


def test_tiny_config_reads_the_same_in_old_and_new_transformers(tiny):
    cfg = _config(tiny)
    assert cfg["rope_theta"] == cfg["rope_parameters"]["rope_theta"] == 10000.0
    assert cfg["torch_dtype"] == cfg["dtype"] == "bfloat16"
    assert cfg["tie_word_embeddings"] is False
    assert cfg["num_key_value_heads"] < cfg["num_attention_heads"]  # GQA
    assert 512 <= cfg["vocab_size"] <= 1024
    tok_cfg = json.loads((tiny / "tokenizer_config.json").read_text())
    assert tok_cfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    gen = json.loads((tiny / "generation_config.json").read_text())
    assert not SAMPLING_KEYS & gen.keys()
    assert gen["eos_token_id"] == cfg["eos_token_id"]


def test_tiny_weights_are_bf16_with_an_untied_head(tiny):
    import torch

    weights = load_file(str(tiny / "model.safetensors"))
    assert {w.dtype for w in weights.values()} == {torch.bfloat16}
    assert not torch.equal(weights["lm_head.weight"], weights["model.embed_tokens.weight"])


def test_tiny_tokenizer_round_trips(tiny):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny))
    text = "12 + 7 = 19. The cat sees a red ball! Ünïcödé 🙂"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id == _config(tiny)["bos_token_id"]
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_tiny_distributions_are_peaked_but_not_degenerate(tiny):
    vocab = _config(tiny)["vocab_size"]
    entropy = mean_entropy(tiny, SAMPLE)
    assert 0.3 < entropy < 0.6 * math.log(vocab)


def test_untrained_model_fails_the_entropy_check(tiny, tmp_path):
    """Negative control: random init of the same architecture is near-uniform."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(tiny))).save_pretrained(
        tmp_path
    )
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tiny / name, tmp_path / name)
    assert mean_entropy(tmp_path, SAMPLE) > 0.9 * math.log(_config(tiny)["vocab_size"])


def test_tiny_sampling_gives_varied_continuations(tiny):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny))
    model = AutoModelForCausalLM.from_pretrained(str(tiny))
    ids = tok("The cat", return_tensors="pt")["input_ids"]
    torch.manual_seed(0)
    out = model.generate(
        ids,
        do_sample=True,
        temperature=0.8,
        top_p=0.9,
        max_new_tokens=8,
        num_return_sequences=8,
        pad_token_id=tok.pad_token_id,
    )
    assert len({tuple(row[ids.shape[1] :].tolist()) for row in out}) >= 4


def test_build_is_idempotent_and_rebuilds_an_unstamped_dir(tiny):
    logs = []
    assert build_model("tiny", log=logs.append) == tiny
    assert logs == []
    digest = fingerprint(tiny)
    (tiny / modelbuild.STAMP).unlink()  # as if the build had stopped before the stamp
    assert build_model("tiny", log=logs.append) == tiny
    assert any("building model tiny" in line for line in logs)
    assert fingerprint(tiny) == digest


def test_fingerprint_ignores_a_stale_cached_digest(tiny, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny, copy)
    cfg = _config(copy)
    cfg["rope_theta"] = 500000.0
    (copy / "config.json").write_text(json.dumps(cfg))
    assert fingerprint(copy) != fingerprint(tiny)


def _unstamped_copy(tiny, tmp_path):
    copy = tmp_path / "user-checkpoint"
    shutil.copytree(tiny, copy)
    (copy / modelbuild.STAMP).unlink()
    return copy


def test_fingerprint_of_a_users_checkpoint_is_read_once(tiny, tmp_path, monkeypatch):
    """No stamp (not built by parity): the digest is kept in the cache for the files' state;
    the same files are not read again, a changed file (same size) is."""
    monkeypatch.setenv("PARITY_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "_settled", lambda stats: True)
    reads = []
    monkeypatch.setattr(
        models, "digest", lambda root, files: reads.append(root) or "d%d" % len(reads)
    )
    copy = _unstamped_copy(tiny, tmp_path)
    assert fingerprint(copy) == fingerprint(copy) == "d1" and len(reads) == 1
    text = (copy / "config.json").read_text()
    (copy / "config.json").write_text(text[:-1] + ("#" if text[-1] != "#" else "%"))  # same size
    assert fingerprint(copy) == "d2" and len(reads) == 2
    assert fingerprint(copy) == "d2" and len(reads) == 2


def test_fingerprint_of_files_just_written_is_not_kept(tiny, tmp_path, monkeypatch):
    """A file written in the last 2 s may change again within the same tick of file times
    unseen: its digest is computed, not kept."""
    monkeypatch.setenv("PARITY_CACHE_DIR", str(tmp_path / "cache"))
    copy = _unstamped_copy(tiny, tmp_path)
    assert fingerprint(copy) == fingerprint(tiny)
    assert not (tmp_path / "cache" / "fingerprints").exists()
    stats = [f.stat() for f in modelbuild.hashed_files(copy)]
    assert not models._settled(stats)
    assert models._settled(stats, quiet_s=-1.0)


def test_resolve_model(tiny, tmp_path):
    assert resolve_model("tiny") == tiny
    assert resolve_model(str(tiny)) == tiny.resolve()
    with pytest.raises(ModelError, match="tiny, tiny-tied, smollm2-135m"):
        resolve_model("no-such-model")
    with pytest.raises(ModelError):
        resolve_model(str(tmp_path))  # a directory without config.json
    with pytest.raises(ModelError, match="tiny, tiny-tied, smollm2-135m"):
        build_model("no-such-model")


def test_perturb_changes_weights_deterministically(tiny, tmp_path):
    one = perturb("tiny", seed=1, scale=0.05, log=lambda m: None)
    assert one == models.model_dir("tiny-perturb-s1-x0.05")
    assert resolve_model(one.name) == one
    again = perturb("tiny", seed=1, scale=0.05, out=tmp_path / "again", log=lambda m: None)
    other = perturb("tiny", seed=2, scale=0.05, log=lambda m: None)
    assert fingerprint(again) == fingerprint(one) != fingerprint(other) != fingerprint(tiny)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (one / name).read_bytes() == (tiny / name).read_bytes()
    base, new = (
        load_file(str(tiny / "model.safetensors")),
        load_file(str(one / "model.safetensors")),
    )
    assert base.keys() == new.keys()
    for key, w in base.items():
        assert new[key].dtype == w.dtype and new[key].shape == w.shape
        rms = w.float().square().mean().sqrt()
        rel = float((new[key].float() - w.float()).square().mean().sqrt() / rms)
        assert 0.03 < rel < 0.07, key  # scale 0.05 of each tensor's rms, bf16 rounding aside


def test_perturb_with_zero_scale_keeps_the_weights(tiny, tmp_path):
    import torch

    same = perturb(tiny, seed=3, scale=0.0, out=tmp_path / "same", log=lambda m: None)
    base, new = (
        load_file(str(tiny / "model.safetensors")),
        load_file(str(same / "model.safetensors")),
    )
    assert all(torch.equal(base[k], new[k]) for k in base)


def test_perturb_rejects_a_bad_scale(tiny):
    with pytest.raises(ModelError):
        perturb("tiny", seed=1, scale=float("nan"))
    with pytest.raises(ModelError):
        perturb("tiny", seed=1, scale=-1.0)
