"""The lm_head category: the bf16-grid fingerprint, the head classification and the verdict
(unit tests on synthetic logits), and the real engines on the tiny model (V1 and V0, fp32 head
and bf16 head)."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from parity.categories import lm_head
from parity.engines.base import SamplingSpec, Sequence
from parity.engines.vllm_patches import Fp32HeadMethod, _patch_model, fp32_head_requested
from parity.trainer.reference import RefScore
from parity.verdicts import formulas
from parity.verdicts.core import expected

V = 64


def _positions(n, head_dtype, temperature=1.0, seed=0, k=6):
    """Top-k logprobs per position, from random logits rounded as a head of `head_dtype` would."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, V, generator=gen) * 4
    if head_dtype != torch.float32:
        logits = logits.to(head_dtype).float()
    lp = (logits / temperature).log_softmax(-1)
    top = lp.topk(k, dim=-1)
    return [{int(t): float(v) for t, v in zip(i, vals)} for i, vals in zip(top.indices, top.values)]


def test_grid_separates_bf16_from_fp32_logits():
    bf16 = lm_head.lattice([_positions(400, torch.bfloat16)], 7)
    fp32 = lm_head.lattice([_positions(400, torch.float32)], 7)
    assert bf16["n_positions"] == 400 and bf16["fraction"] >= 0.98
    assert fp32["fraction"] <= 0.05


def test_grid_reads_tempered_logprobs_and_fp16():
    tempered = lm_head.lattice([_positions(300, torch.bfloat16, temperature=0.7)], 7, 0.7)
    assert tempered["fraction"] >= 0.98 and tempered["scale"] == 0.7
    fp16 = lm_head.lattice([_positions(300, torch.float16)], 10)
    assert fp16["fraction"] >= 0.95
    assert lm_head.lattice([_positions(300, torch.float32)], 10)["fraction"] <= 0.1


def test_on_grid_by_hand():
    # 10.0 - 9.9375 = 1/16: both are bf16 values in [8, 16), whose spacing is 1/16.
    assert lm_head.on_grid([-0.5, -0.5 - 0.0625, -0.5 - 1.25], 7)
    assert not lm_head.on_grid([-0.5, -0.5 - 0.0123457], 7)
    assert lm_head.on_grid([-0.5, float("-inf")], 7) is None


def test_classify_prefers_the_grid_and_falls_back_to_the_trainer():
    on = {"n_positions": 100, "fraction": 1.0}
    off = {"n_positions": 100, "fraction": 0.0}
    none = {"n_positions": 0, "fraction": float("nan")}
    closer_fp32 = {"mean": 0.004, "ci_low": 0.002, "ci_high": 0.006}
    closer_model = {"mean": -0.004, "ci_low": -0.006, "ci_high": -0.002}
    # A bf16-head engine that sits closer to the fp32 trainer (V0 and SmolLM2 do): the grid wins.
    assert lm_head.classify(on, closer_fp32, "bfloat16")[0] == "model"
    assert lm_head.classify(off, closer_model, "bfloat16")[0] == "float32"
    assert lm_head.classify(none, closer_model, "bfloat16")[0] == "model"
    assert lm_head.classify(none, {"mean": 0, "ci_low": -1, "ci_high": 1}, "bfloat16")[0] is None
    assert lm_head.classify(none, None, "float32")[0] == "float32"


def test_paired_gap():
    out = lm_head.paired_gap(np.array([0.01] * 30), np.array([0.02] * 30))
    assert out["mean"] == pytest.approx(0.01) and out["ci_low"] == pytest.approx(0.01)


class _Refs:
    """Stands in for runner.References: the reference logprob is the engine's plus an offset."""

    def __init__(self, offsets):
        self.offsets = offsets

    def get(self, model_path, head, run=None):
        def score(pairs, sampling):
            return [
                RefScore(
                    np.asarray(self.lps[i]) + self.offsets[head],
                    np.asarray(self.lps[i]) + self.offsets[head],
                    np.zeros(len(t)),
                )
                for i, (_, t) in enumerate(pairs)
            ]

        return SimpleNamespace(score=score)


def _result(head_dtype, engine_impl, require="float32", offsets=None):
    seqs = []
    for i in range(30):
        tops = _positions(10, head_dtype, seed=i)
        tokens = [max(p, key=p.get) for p in tops]
        seqs.append(
            Sequence(i, 0, [1, 2], tokens, [tops[j][t] for j, t in enumerate(tokens)], tops)
        )
    key = {
        "dtype": "torch.bfloat16",
        "head_dtype": "torch.bfloat16",
        "logprobs_mode": "raw_logprobs",
        "engine_impl": engine_impl,
    }
    run = SimpleNamespace(sequences=seqs, effective_config={"key": key})
    sc = SimpleNamespace(
        options={"require_head": require},
        sampling=SamplingSpec(logprobs=5),
        clip=formulas.ClipRange(),
    )
    res = SimpleNamespace(scenario=sc, runs={"candidate": run}, model_path="m")
    refs = _Refs(offsets or {"float32": 0.01, "model": 0.02})
    refs.lps = [s.logprobs for s in seqs]
    return res, refs


def test_judge_bf16_head_fails_with_the_fix_per_engine():
    res, refs = _result(torch.bfloat16, "vllm.v1.engine.llm_engine.LLMEngine")
    verdict, detail = lm_head.judge(res, refs)
    assert verdict.outcome == "fail" and verdict.diagnosis == "bf16_head"
    assert "hf_overrides={head_dtype: float32}" in verdict.message
    assert (
        detail["head"] == "model"
        and detail["vs_ref"]["float32"]["abs_dlogp_mean"]
        < detail["vs_ref"]["model"]["abs_dlogp_mean"]
    )  # closer to fp32, still diagnosed bf16
    res, refs = _result(torch.bfloat16, "vllm.engine.llm_engine.LLMEngine")
    verdict, _ = lm_head.judge(res, refs)
    assert verdict.diagnosis == "bf16_head" and "PARITY_FP32_HEAD=1" in verdict.message
    assert expected(verdict, "fail", "bf16_head")


def test_judge_fp32_head_passes_and_require_model_fails_it():
    res, refs = _result(torch.float32, "vllm.v1.engine.llm_engine.LLMEngine")
    verdict, detail = lm_head.judge(res, refs)
    assert verdict.outcome == "pass", verdict.message
    assert "config says head bfloat16, its logits say float32" in verdict.message
    res, refs = _result(torch.float32, "vllm.v1.engine.llm_engine.LLMEngine", require="model")
    verdict, _ = lm_head.judge(res, refs)
    assert verdict.outcome == "fail" and verdict.diagnosis == "fp32_head"


# --------------------------------------------------------------------- the worker-side patch


class UnquantizedEmbeddingMethod:  # named like vLLM's, which the patch accepts
    def apply(self, layer, x, bias=None):
        return torch.nn.functional.linear(x, layer.weight, bias)

    def embedding(self, layer, ids):
        return torch.nn.functional.embedding(ids, layer.weight)


def _fake_model(tied):
    weight = torch.nn.Parameter((torch.randn(V, 32) * 0.5).to(torch.bfloat16), requires_grad=False)
    head = SimpleNamespace(weight=weight, quant_method=UnquantizedEmbeddingMethod())
    embed = head if tied else SimpleNamespace(weight=weight.clone())
    model = SimpleNamespace(lm_head=head, model=SimpleNamespace(embed_tokens=embed))
    model.compute_logits = lambda h, meta: head.quant_method.apply(head, h)
    return model


@pytest.mark.parametrize("tied", [True, False])
def test_patch_makes_the_head_fp32_for_tied_and_untied(tied):
    model = _fake_model(tied)
    record = _patch_model(model)
    assert record["applied"] and record["tied"] is tied
    assert record["self_test"]["logits_dtype_after"] == "torch.float32"
    assert record["self_test"]["max_abs_change"] > 0
    h = torch.randn(3, 32).to(torch.bfloat16)
    out = model.compute_logits(h, None)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, h.float() @ model.lm_head.weight.float().T)
    # Everything but the projection still goes to vLLM's method (the tied embedding lookup).
    ids = torch.tensor([1, 2])
    assert model.lm_head.quant_method.embedding(model.lm_head, ids).dtype == torch.bfloat16
    assert isinstance(model.lm_head.quant_method, Fp32HeadMethod)
    assert _patch_model(model)["already"]


def test_patch_refuses_quantized_heads():
    model = _fake_model(False)
    model.lm_head.quant_method = SimpleNamespace(apply=None)
    with pytest.raises(RuntimeError, match="unquantized heads only"):
        _patch_model(model)


def test_fp32_head_env_values():
    assert fp32_head_requested({"PARITY_FP32_HEAD": "1"})
    assert not fp32_head_requested({"PARITY_FP32_HEAD": "0"})
    assert not fp32_head_requested({})


# --------------------------------------------------------------------- real engines


def test_fix_follows_where_the_engine_resolved_its_head_dtype():
    """vLLM 0.18.1 has ModelConfig.head_dtype but honours it for pooling models only: there the
    fix is parity's patch, not the hf_overrides it ignores (its notes say it has no option)."""
    v1 = {"engine_impl": "vllm.v1.engine.llm_engine.LLMEngine"}
    native = {"key": v1, "notes": {"head_dtype": "model_config.head_dtype"}}
    pooling_only = {
        "key": v1,
        "notes": {"head_dtype": "engine has no head_dtype option: model dtype"},
    }
    patched = {"key": v1, "notes": {"head_dtype": "parity fp32 head patch"}}
    assert "hf_overrides" in lm_head._engine_fix(native, "float32")
    assert "PARITY_FP32_HEAD=1" in lm_head._engine_fix(pooling_only, "float32")
    assert "pooling models only" in lm_head._engine_fix(pooling_only, "float32")
    assert lm_head._engine_fix(patched, "model") == "unset PARITY_FP32_HEAD"
    assert "hf_overrides" in lm_head._engine_fix({"key": v1}, "float32")  # older records


class _PoolingOnlyConfig:  # vLLM 0.18.1's ModelConfig.head_dtype, abridged
    @property
    def head_dtype(self):
        # "`head_dtype` currently only supports pooling models, fallback to model dtype"
        return "torch.bfloat16"


class _NativeConfig:  # vLLM 0.32's
    @property
    def head_dtype(self):
        return "torch.float32"


def test_pooling_only_head_dtype_is_no_option():
    from parity.engines import vllm_patches

    def llm(cfg):
        return SimpleNamespace(
            llm_engine=SimpleNamespace(vllm_config=SimpleNamespace(model_config=cfg))
        )

    assert vllm_patches.has_native_head_dtype(llm(_NativeConfig()))
    assert not vllm_patches.has_native_head_dtype(llm(_PoolingOnlyConfig()))
    assert not vllm_patches.has_native_head_dtype(llm(SimpleNamespace(dtype="bf16")))
