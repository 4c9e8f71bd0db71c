"""The worker-side evidence of what a weight update reached (parity/engines/vllm_evidence.py):
its classification and the workaround's re-processing on stand-in modules (no engine). On real
vLLM V1 it is asserted in tests/test_updates.py (tied head compute_stale after a reload, the
workaround on every reload, the in-place control)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from parity.engines import vllm_evidence

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
    w = {
        "model.embed_tokens.weight": model.model.embed_tokens.weight,
        "model.o_proj.weight": model.model.o_proj.weight,
    }
    for i, part in enumerate(("q_proj", "k_proj", "v_proj")):
        w[f"model.{part}.weight"] = model.model.qkv_proj.weight[8 * i : 8 * (i + 1)]
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
        for mod, key in (
            (model.model.embed_tokens, "model.embed_tokens.weight"),
            (model.model.o_proj, "model.o_proj.weight"),
        ):
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
    model.model.qkv_proj.weight = torch.nn.Parameter(
        torch.cat([new[f"model.{p}.weight"] for p in ("q_proj", "k_proj", "v_proj")]),
        requires_grad=False,
    )
    model.model.qkv_proj.quant_method.process_weights_after_loading(model.model.qkv_proj)
    clean = vllm_evidence.collect(model, str(tmp_path / "ckpt"), reprocess_stale=True)
    assert clean["reprocessed"] == [] and clean["evidence"]["ok"] == 4
    assert clean["evidence"]["max_ok_rel_err"] < 1e-6


def test_evidence_never_raises(tmp_path):
    out = vllm_evidence.collect(Model(), str(tmp_path))  # no checkpoint there
    assert (
        out == {"evidence_error": out["evidence_error"]} and "safetensors" in out["evidence_error"]
    )


# The real-engine evidence (V1 reload on a tied head: lm_head compute_stale; the workaround
# re-processes it on every reload; the in-place control's emptied linear weights) is asserted on
# the shipped update scenarios' run in tests/test_updates.py, which starts those engines anyway.
