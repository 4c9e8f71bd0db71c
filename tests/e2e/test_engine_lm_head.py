"""The real-engine tests of test_lm_head.py's subject (The lm_head category: the bf16-grid fingerprint, the head classification and the verdict)."""

import pytest

from parity.categories import lm_head


def _scenario(report, name):
    return next(s for s in report["scenarios"] if s["name"] == name)


@pytest.mark.parametrize(
    "name, head", [("lmhead-v1-fp32", "float32"), ("lmhead-v0-fp32head", "float32")]
)
def test_fp32_head_engines_pass(runtime_run, name, head):
    _, _, report = runtime_run
    sc = _scenario(report, name)
    assert sc["verdict"]["outcome"] == "pass", sc["verdict"]["message"]
    m = sc["metrics"]
    assert m["head"] == head and m["lattice"]["fraction"] <= lm_head.LATTICE_OFF
    assert m["vs_ref"]["float32"]["abs_dlogp_mean"] < m["vs_ref"]["model"]["abs_dlogp_mean"]


@pytest.mark.parametrize(
    "name, fix",
    [("lmhead-v1-bf16-control", "hf_overrides"), ("lmhead-v0-bf16-control", "PARITY_FP32_HEAD=1")],
)
def test_bf16_head_engines_fail_with_the_fix(runtime_run, name, fix):
    _, _, report = runtime_run
    sc = _scenario(report, name)
    assert sc["verdict"]["outcome"] == "fail" and sc["verdict"]["diagnosis"] == "bf16_head"
    assert fix in sc["verdict"]["message"] and sc["as_expected"]
    assert sc["metrics"]["lattice"]["fraction"] >= lm_head.LATTICE_ON


def test_v0_patch_is_reported_in_the_effective_config(runtime_run):
    _, _, report = runtime_run
    engines = {
        e["setting"]["profile"]: e["effective_config"]
        for e in report["engines"]
        if "effective_config" in e
    }
    patched = engines["v0-fp32head"]
    assert patched["key"]["head_dtype"] == "torch.float32"
    assert patched["notes"]["head_dtype"] == "parity fp32 head patch"
    assert patched["patches"]["fp32_head"]["self_test"]["logits_dtype_after"] == "torch.float32"
    assert engines["v0"]["key"]["head_dtype"] == "torch.bfloat16"
