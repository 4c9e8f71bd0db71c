"""The weight paths besides reload: in-memory tensors (parity.engines.vllm_tensors: the trainer's
tensors into the model's load_weights, bucket by bucket) and vLLM's weight-transfer API
(parity.engines.vllm_transfer: a backend this machine cannot run is refused before any engine
start, with vLLM's reason). Option parsing, bucketing and the refusal, on fakes and on the real
vLLM 0.32 of the harness (no engine started); the real-engine runs are the update-step-tensors
scenarios (tests/e2e/test_engine_updates.py, docs/measurements.md#tensors-update)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from parity.categories._update_drive import transfer_setting_problems
from parity.engines import vllm_tensors, vllm_transfer, vllm_updates
from parity.engines.base import EngineSetting
from parity.run import preflight
from parity.run.preflight import Check
from parity.trainer.update_spec import UpdateSpec, parse_update

# ----------------------------------------------------------------------------- options


def test_parse_update_tensors_and_transfer():
    spec, problems = parse_update({"via": "tensors", "bucket_mb": 64}, "f.toml")
    assert problems == [] and spec.bucket_mb == 64.0
    assert spec.transport() == {"bucket_mb": 64.0}
    spec, problems = parse_update({"via": "tensors"}, "f.toml")
    assert spec.bucket_mb == vllm_tensors.DEFAULT_BUCKET_MB == 512
    spec, problems = parse_update({"via": "transfer", "backend": "ipc"}, "f.toml")
    assert problems == [] and spec.transport() == {"bucket_mb": 512, "backend": "ipc"}
    assert UpdateSpec().transport() == {}  # reload: the engine call is unchanged


@pytest.mark.parametrize(
    "table, field, words",
    [
        (
            {"via": "reload", "bucket_mb": 64},
            "update.bucket_mb",
            'only with update.via = "tensors"',
        ),
        ({"via": "tensors", "bucket_mb": 0}, "update.bucket_mb", "> 0"),
        ({"via": "transfer"}, "update.backend", "needs one: nccl"),
        ({"via": "transfer", "backend": "gloo"}, "update.backend", "use one of"),
        (
            {"via": "tensors", "backend": "ipc"},
            "update.backend",
            'only with update.via = "transfer"',
        ),
        ({"via": "sideways"}, "update.via", "use one of reload, tensors, transfer, inplace"),
    ],
)
def test_parse_update_refuses_bad_transport_options(table, field, words):
    spec, problems = parse_update(table, "f.toml")
    assert spec is None
    assert any(p[1] == field and words in p[2] for p in problems), problems


def _scenario(update: dict, engine_args: dict):
    spec, problems = parse_update(update, "f.toml")
    assert not problems
    setting = EngineSetting.make("vllm", "harness", engine_args)
    return SimpleNamespace(options={"update": spec}, settings=lambda: {"candidate": setting})


def test_transfer_needs_the_engine_started_with_its_backend():
    update = {"via": "transfer", "backend": "ipc"}
    ok = _scenario(update, {"weight_transfer_config": {"backend": "ipc"}})
    assert transfer_setting_problems(ok, "f.toml") == []
    (problem,) = transfer_setting_problems(_scenario(update, {}), "f.toml")
    assert problem[1] == "candidate.engine_args.weight_transfer_config"
    assert 'weight_transfer_config = { backend = "ipc" }' in problem[2]
    wrong = _scenario(update, {"weight_transfer_config": {"backend": "nccl"}})
    assert "got backend 'nccl'" in transfer_setting_problems(wrong, "f.toml")[0][2]
    assert transfer_setting_problems(_scenario({"via": "tensors"}, {}), "f.toml") == []


# ----------------------------------------------------------------------------- tensors


def test_buckets_keep_order_and_size():
    named = [(f"t{i}", torch.zeros(256 * 1024, dtype=torch.float32)) for i in range(5)]  # 1 MiB
    sizes = [[n for n, _ in b] for b in vllm_tensors.buckets(named, 2.5)]
    assert sizes == [["t0", "t1"], ["t2", "t3"], ["t4"]]
    # A tensor larger than a bucket goes alone; nothing is dropped.
    alone = list(vllm_tensors.buckets(named, 0.5))
    assert [len(b) for b in alone] == [1] * 5


def _checkpoint(path, layers=11):
    tensors = {"model.embed_tokens.weight": torch.randn(8, 4)}
    for i in range(layers):
        for part in ("q_proj", "k_proj", "v_proj"):
            tensors[f"model.layers.{i}.self_attn.{part}.weight"] = torch.randn(4, 4)
        for part in ("gate_proj", "up_proj"):
            tensors[f"model.layers.{i}.mlp.{part}.weight"] = torch.randn(6, 4)
    save_file(tensors, str(path / "model.safetensors"))
    return tensors


class _Model:
    """A model whose load_weights records each call's names (as vLLM's returns what it loaded)."""

    def __init__(self):
        self.calls = []

    def load_weights(self, weights):
        names = [n for n, _ in weights]
        self.calls.append(names)
        return set(names)


def test_push_hands_the_trainers_tensors_to_load_weights_bucket_by_bucket(tmp_path):
    tensors = _checkpoint(tmp_path)
    model = _Model()
    out = vllm_tensors.push(model, str(tmp_path), bucket_mb=5 * 64 / (1 << 20))  # 5 q/k/v-sized
    sent = [n for call in model.calls for n in call]
    # Every tensor once, under its Hugging Face name (q/k/v and gate/up apart: load_weights packs
    # them), layers in numeric order (2 before 10: one layer finishes before the next starts).
    assert sorted(sent) == sorted(tensors)
    layers = [int(n.split(".")[2]) for n in sent if ".layers." in n]
    assert layers == sorted(layers)
    assert len(model.calls) == len(out["buckets"]) > 1
    assert [b["tensors"] for b in out["buckets"]] == [len(c) for c in model.calls]
    assert out["tensors"] == out["loaded"] == len(tensors)
    assert out["layerwise"] is False  # no model_config: V0's plain load_weights


# ----------------------------------------------------------------------------- transfer


def test_preflight_reads_a_refused_backend_as_refused_here():
    check = Check(
        "x.toml",
        "candidate.engine_args",
        EngineSetting.make("vllm", "harness", {"weight_transfer_config": {"backend": "ipc"}}),
        "/m",
    )
    refused = {
        "index": 0,
        "name": "weight_transfer_config",
        "kind": "refused",
        "message": "weight transfer backend 'ipc': CUDA IPC handles: AssertionError: Torch not "
        "compiled with CUDA enabled",
    }
    key = ("py", preflight._key(check))
    preflight._SEEN[key] = ([refused], "0.32.0", {})
    try:
        reason = preflight.refusal(check, "py")
        assert reason.startswith("vLLM 0.32.0 (harness) on this machine: weight transfer")
        assert "Torch not compiled with CUDA enabled" in reason
        problem = preflight._problem(check, refused, "0.32.0")  # bisect: a problem (exit 2)
        assert problem[1] == "candidate.engine_args.weight_transfer_config"
        # Negative control: a plain value problem of the same argument is not a refusal.
        preflight._SEEN[key] = ([{**refused, "kind": "value"}], "0.32.0", {})
        assert preflight.refusal(check, "py") is None
    finally:
        del preflight._SEEN[key]


def _config():
    """The parts of a VllmConfig a weight-transfer engine's constructor reads."""
    parallel = SimpleNamespace(
        world_size=1, rank=0, data_parallel_index=0, distributed_executor_backend="mp"
    )
    return SimpleNamespace(parallel_config=parallel, model_config=SimpleNamespace())


@pytest.mark.skipif(torch.cuda.is_available(), reason="what vLLM's CPU build refuses")
@pytest.mark.parametrize(
    "backend, words",
    [
        ("nccl", "NCCL only supports CUDA and ROCm backends"),
        ("sparse_nccl", "NCCL only supports CUDA and ROCm backends"),
        ("nccl_m2n", "NCCL only supports CUDA and ROCm backends"),
        ("ipc", "Torch not compiled with CUDA enabled"),
        ("modelexpress", "requires ModelExpress"),
        ("sharded_rdt", "requires distributed_executor_backend='ray'"),
    ],
)
def test_every_backend_is_refused_on_the_cpu_build_with_vllms_reason(backend, words):
    """The real vLLM 0.32 of the harness, no engine: each backend's worker-side engine created
    and its data plane opened as the backend does first."""
    pytest.importorskip("vllm.distributed.weight_transfer.factory")
    reason = vllm_transfer.refusal(backend, _config())
    assert reason is not None and words in reason, reason


def test_transfer_without_a_sender_says_so():
    engine = SimpleNamespace()
    with pytest.raises(NotImplementedError, match="no trainer-side sender for the 'nccl'"):
        vllm_transfer.load(engine, "/ckpt", "nccl", 512, v1=True)
    with pytest.raises(ValueError, match="V0 has none"):
        vllm_transfer.load(engine, "/ckpt", "ipc", 512, v1=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="what vLLM's CPU build refuses")
def test_validator_reports_the_refused_backend_as_kind_refused(tiny_model):
    """The validator's own code in this interpreter (vLLM 0.32, CPU): a setting that asks for
    the ipc backend builds its config, then is refused (kind "refused", vLLM's reason); the same
    setting without weight_transfer_config is not (negative control)."""
    pytest.importorskip("vllm.distributed.weight_transfer.factory")
    from parity.engines import vllm_validate

    args = {"dtype": "float32", "weight_transfer_config": {"backend": "ipc"}}
    reply = vllm_validate.validate_engine_args(
        [
            {"engine_args": args, "model": str(tiny_model)},
            {"engine_args": {"dtype": "float32"}, "model": str(tiny_model)},
        ]
    )
    (refused,) = reply["problems"]
    assert (refused["index"], refused["kind"]) == (0, "refused")
    assert refused["name"] == "weight_transfer_config"
    assert "'ipc'" in refused["message"] and "Torch not compiled with CUDA" in refused["message"]


def test_core_call_reaches_the_engine_core_in_either_process_mode():
    """vLLM's default core (own process): its client's call_utility; an in-process core
    (VLLM_ENABLE_V1_MULTIPROCESSING=0): the EngineCore's method, whose own errors come through."""
    calls = []
    mp = SimpleNamespace(call_utility=lambda method, *args: calls.append((method, args)) or "mp")
    llm = SimpleNamespace(llm_engine=SimpleNamespace(engine_core=mp))
    assert vllm_updates.core_call(llm, "pause_scheduler", "keep", True) == "mp"

    def pause_scheduler(mode, clear_cache):
        if mode == "wait":
            raise ValueError("'wait' mode can't be used in inproc-engine mode")
        calls.append(("inproc", (mode, clear_cache)))

    core = SimpleNamespace(pause_scheduler=pause_scheduler)
    inproc = SimpleNamespace(
        llm_engine=SimpleNamespace(engine_core=SimpleNamespace(engine_core=core))
    )
    vllm_updates.core_call(inproc, "pause_scheduler", "keep", False)
    assert calls == [("pause_scheduler", ("keep", True)), ("inproc", ("keep", False))]
    with pytest.raises(ValueError, match="inproc"):
        vllm_updates.core_call(inproc, "pause_scheduler", "wait", False)
