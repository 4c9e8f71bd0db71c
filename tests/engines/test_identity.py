"""The model-identity rule (parity.engines.identity): `same`, each rule with a case that must be unequal;
compare statuses; drift messages; and config drift read for real, before any engine starts, by
the V0 environment's transformers 4.51 on a checkpoint written the transformers-5-only way."""

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from identity_fixtures import T5_ROPE_THETA

from parity.engines import identity
from parity.engines.identity import MODEL_KEYS, compare, engine_facts, same
from parity.engines.identity_drift import drift

IDENTITY_PY = Path(identity.__file__)


# ----------------------------------------------------------------------------- same


@pytest.mark.parametrize(
    "a, b",
    [
        ([2], 2),
        (["LlamaForCausalLM"], "LlamaForCausalLM"),  # [x] == x
        (10000, 10000.0),
        (1e-6, 1e-6 * (1 + 1e-12)),  # numbers, rtol 1e-9
        ("torch.bfloat16", "bfloat16"),
        ("bf16", "torch.bfloat16"),
        ("torch.float32", "float"),
        ([2, 3], [3, 2]),
        ([2, 2], 2),
        ({"eos_token_id": [1, 2]}, {"eos_token_id": [2, 1]}),
        ({"rope_type": "llama3", "factor": 8}, {"factor": 8.0, "rope_type": "llama3"}),
        ({"rope_type": "default", "factor": None}, {"rope_type": "default"}),
        (True, True),
        (None, None),
        ("LlamaForCausalLM", "LlamaForCausalLM"),
    ],
)
def test_same_holds(a, b):
    assert same(a, b) and same(b, a)


@pytest.mark.parametrize(
    "a, b",
    [
        ([2], 3),
        (["LlamaForCausalLM"], "MistralForCausalLM"),
        (10000, 100000),
        (1.0, 1.0 + 1e-6),
        (True, 1),
        (False, 0),
        (True, False),
        (1, True),  # a bool is not a number
        ("torch.bfloat16", "float16"),
        ("torch.float16", "bfloat16"),
        ([2, 3], 2),
        ([2, 3], [2, 4]),
        (2, None),
        ([1, 2], [1, 2, 3]),
        ({"rope_type": "llama3", "factor": 8}, {"rope_type": "llama3", "factor": 4}),
        ({"rope_type": "default"}, "default"),
        ({"mrope_section": [16, 24, 24]}, {"mrope_section": [24, 16, 24]}),  # order kept inside
    ],
)
def test_same_fails(a, b):
    assert not same(a, b) and not same(b, a)


def test_only_token_id_keys_read_int_lists_as_sets():
    assert same([1, 2], [2, 1], "model.eos_token_id")
    assert not same([1, 2], [2, 1], "model.rope_scaling")


# ----------------------------------------------------------------------------- facts


def _facts(**over):
    """Facts of one model, as the trainer or an engine would report them."""
    base = {
        "model.architectures": ["LlamaForCausalLM"],
        "model.dtype": "bfloat16",
        "model.rope_theta": T5_ROPE_THETA,
        "model.rope_scaling": {"rope_type": "default"},
        "model.max_position_embeddings": 512,
        "model.vocab_size": 768,
        "model.tie_word_embeddings": False,
        "model.eos_token_id": 1,
        "model.generation_eos_token_id": 1,
        "model.tokenizer_eos_token_id": 1,
        "model.stop_token_ids": 1,
        "model.sampling_defaults": {},
        "model.bos_token_id": 0,
        "model.norm_eps": 1e-6,
        "model.num_hidden_layers": 2,
        "model.hidden_size": 128,
    }
    return {**base, **over}


ENGINE_KEY = {  # as VllmHost.effective_config reports it (no rope_scaling, max pos, norm eps)
    "dtype": "torch.bfloat16",
    "max_num_seqs": 256,
    "generation_config_defaults": {},
    "model.architectures": ["LlamaForCausalLM"],
    "model.rope_theta": 100000,
    "model.vocab_size": 768,
    "model.tie_word_embeddings": False,
    "model.eos_token_id": [1],
    "model.generation_eos_token_id": 1,
    "model.tokenizer_eos_token_id": 1,
    "model.bos_token_id": 0,
    "model.num_hidden_layers": 2,
    "model.hidden_size": 128,
}


def test_engine_facts_normalise_the_engine_key():
    facts = engine_facts(ENGINE_KEY)
    assert list(facts) == list(MODEL_KEYS)
    assert facts["model.dtype"] == "bfloat16" and facts["model.eos_token_id"] == 1
    assert facts["model.rope_scaling"] is None  # not reported: unknown, not "default"
    assert engine_facts({"key": ENGINE_KEY, "notes": {}, "raw": {}}) == facts
    assert engine_facts({**ENGINE_KEY, "model.rope_scaling": None})["model.rope_scaling"] == {
        "rope_type": "default"
    }


def test_config_facts_read_each_transformers_generation_its_own_way():
    old = SimpleNamespace(
        torch_dtype="bfloat16",
        dtype="float32",
        rope_theta=10000.0,
        rope_scaling={"type": "linear", "factor": 2.0},
        rms_norm_eps=1e-5,
        eos_token_id=[2, 1],
    )
    new = SimpleNamespace(
        dtype="torch.bfloat16",
        standardize_rope_params=True,
        rope_parameters={"rope_theta": 5e5, "rope_type": "default"},
        layer_norm_eps=1e-5,
    )
    f_old = identity.config_facts(old, [7], None, transformers_major=4)
    f_new = identity.config_facts(new, None, 3, transformers_major=5)
    assert f_old["model.dtype"] == "bfloat16" and f_new["model.dtype"] == "bfloat16"
    assert f_old["model.rope_theta"] == 10000.0 and f_new["model.rope_theta"] == 5e5
    assert f_old["model.rope_scaling"] == {"rope_type": "linear", "factor": 2.0}
    assert f_new["model.rope_scaling"] == {"rope_type": "default"}
    assert f_old["model.norm_eps"] == f_new["model.norm_eps"] == 1e-5
    assert f_old["model.eos_token_id"] == [1, 2] and f_old["model.generation_eos_token_id"] == 7
    assert f_new["model.tokenizer_eos_token_id"] == 3 and f_new["model.vocab_size"] is None


def test_identity_imports_with_the_standard_library_only():
    """The V0 worker loads identity.py by path into an interpreter without parity."""
    code = (
        "import importlib.util, sys; "
        f"s = importlib.util.spec_from_file_location('i', {str(IDENTITY_PY)!r}); "
        "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); "
        "assert m.same([1], 1.0) and m.normalize_dtype('torch.float16') == 'float16'; "
        "print(sorted({n.split('.')[0] for n in sys.modules} & {'numpy', 'torch', "
        "'transformers', 'parity'}))"
    )
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- compare


def test_compare_statuses():
    engine = engine_facts(ENGINE_KEY)
    rows = {r["key"]: r for r in compare(_facts(), engine, ("trainer", "v1"))}
    assert list(rows) == list(MODEL_KEYS)
    assert {k for k, r in rows.items() if r["status"] == "unknown"} == {
        "model.rope_scaling",
        "model.max_position_embeddings",
        "model.norm_eps",
    }
    assert {
        r["status"]
        for k, r in rows.items()
        if k not in ("model.rope_scaling", "model.max_position_embeddings", "model.norm_eps")
    } == {"same"}
    assert rows["model.dtype"] == {
        "key": "model.dtype",
        "trainer": "bfloat16",
        "v1": "bfloat16",
        "status": "same",
    }
    # Negative controls: one value apart fails; a missing side is unknown, never same.
    bad = compare(_facts(), engine_facts({**ENGINE_KEY, "model.rope_theta": 10000.0}))
    assert [r["key"] for r in bad if r["status"] == "differs"] == ["model.rope_theta"]
    eos = compare(_facts(**{"model.generation_eos_token_id": [1, 5]}), _facts())
    assert [r["key"] for r in eos if r["status"] == "differs"] == ["model.generation_eos_token_id"]
    assert compare({"model.vocab_size": 768}, {}) == [
        {"key": "model.vocab_size", "a": 768, "b": None, "status": "unknown"}
    ]
    assert compare({"dtype": "x"}, {"other": 1}) == []


def test_compare_rejects_clashing_names():
    with pytest.raises(ValueError):
        compare({}, {}, ("v0", "v0"))
    with pytest.raises(ValueError):
        compare({}, {}, ("key", "v1"))


# ----------------------------------------------------------------------------- drift


T5_ONLY_EVIDENCE = {"fields": ["rope_parameters", "dtype"], "tokenizer_class": "TokenizersBackend"}


def test_drift_names_cause_and_fix():
    trainer = {**_facts(), "config_json": T5_ONLY_EVIDENCE}
    old = {
        **_facts(
            **{
                "model.rope_theta": 10000.0,
                "model.dtype": None,
                "model.tokenizer_eos_token_id": None,
            }
        ),
        "errors": {"tokenizer": "ValueError: Tokenizer class TokenizersBackend does not exist"},
    }
    rows = {r["key"]: r for r in drift(trainer, old, "v0", "4.51.3")}
    assert set(rows) == {"model.rope_theta", "model.dtype", "model.tokenizer_eos_token_id"}
    rope = rows["model.rope_theta"]
    assert rope["status"] == "differs" and rope["trainer"] == T5_ROPE_THETA and rope["v0"] == 1e4
    assert rope["message"] == (
        "config.json has only rope_parameters (transformers >= 5); transformers 4.51.3 in env v0 "
        'reads rope_theta=10000.0 instead of 100000.0: add "rope_theta": 100000.0 to '
        "config.json (parity's model builders write both)"
    )
    dtype = rows["model.dtype"]
    assert dtype["status"] == "unreadable"
    assert "config.json has only dtype" in dtype["cause"] and "float16" in dtype["cause"]
    assert "reshape_and_cache_cpu_impl" in dtype["cause"]
    assert dtype["fix"].startswith('add "torch_dtype": "bfloat16" to config.json')
    tok = rows["model.tokenizer_eos_token_id"]
    assert "TokenizersBackend" in tok["cause"] and "does not exist" in tok["cause"]
    assert "PreTrainedTokenizerFast" in tok["fix"]


def test_drift_generic_message_and_what_is_not_drift():
    trainer = {**_facts(**{"model.max_position_embeddings": None}), "config_json": {}}
    old = _facts(**{"model.norm_eps": 1e-5, "model.max_position_embeddings": 2048})
    rows = drift(trainer, old, "v0", "4.51.3")
    assert [r["key"] for r in rows] == ["model.norm_eps"]  # trainer-unknown keys: not judged
    assert rows[0]["message"].startswith(
        "transformers 4.51.3 in env v0 reads norm_eps=1e-05 instead of 1e-06"
    )
    assert drift(trainer, trainer, "v0", "4.51.3") == []  # negative control


# ----------------------------------------------------------------------------- real reads


def test_trainer_reads_both_spellings(copies):
    tiny = identity.trainer_facts(copies["tiny"])
    t5 = identity.trainer_facts(copies["t5"])
    assert tiny["errors"] == t5["errors"] == {}
    assert tiny["model.rope_theta"] == 10000.0 and t5["model.rope_theta"] == T5_ROPE_THETA
    assert tiny["model.dtype"] == t5["model.dtype"] == "bfloat16"
    assert [r["key"] for r in compare(tiny, t5) if r["status"] != "same"] == ["model.rope_theta"]


def test_worker_reads_what_the_trainer_reads(copies, tmp_path):
    """Same interpreter, same facts: in process (package import) and as the one-shot command."""
    from parity.engines import vllm_worker
    from parity.engines.engine_checks import read_model_facts

    trainer = identity.trainer_facts(copies["t5"])
    assert vllm_worker.read_model_facts(str(copies["t5"])) == trainer
    assert read_model_facts(sys.executable, copies["t5"], tmp_path / "log") == trainer
    broken = read_model_facts(sys.executable, tmp_path, tmp_path / "log")  # no config.json
    assert set(broken["errors"]) == {"config", "tokenizer"}
    assert broken["model.vocab_size"] is None and broken["model.rope_scaling"] is None


def test_read_model_facts_fails_clearly_without_an_interpreter(tmp_path):
    from parity.engines.base import EngineError
    from parity.engines.engine_checks import read_model_facts

    with pytest.raises(EngineError, match="cannot run"):
        read_model_facts(str(tmp_path / "no-python"), tmp_path, tmp_path / "log")


# ----------------------------------------------------------------------------- generation config


def _engine_key_reading(facts, **over):
    """The effective-config key a vLLM engine reports for a checkpoint the trainer read as
    `facts` (its generation eos and tokenizer eos; its generation-config request defaults, or
    `over`'s)."""
    key = {k: v for k, v in facts.items() if k.startswith("model.")}
    for derived in ("model.stop_token_ids", "model.sampling_defaults"):
        key.pop(derived)
    return {"dtype": "torch.bfloat16", "generation_config_defaults": {}, **key, **over}


def test_engine_stops_at_the_generation_config_eos_the_trainer_does_not_know(copies):
    tiny = identity.trainer_facts(copies["tiny"])
    edited = identity.trainer_facts(copies["gen_eos"])
    assert tiny["model.stop_token_ids"] == 1 and edited["model.stop_token_ids"] == 1
    assert edited["model.generation_eos_token_id"] == [1, 5] and edited["errors"] == {}
    engine = engine_facts(_engine_key_reading(edited))
    assert engine["model.stop_token_ids"] == [1, 5]  # tokenizer eos + generation config's
    rows = compare(edited, engine, ("trainer", "v1"))
    assert [r["key"] for r in rows if r["status"] == "differs"] == ["model.stop_token_ids"]
    # Negative control: the unedited model's engine stops where its trainer does.
    rows = compare(tiny, engine_facts(_engine_key_reading(tiny)), ("trainer", "v1"))
    assert {r["status"] for r in rows} == {"same"}


def test_request_defaults_from_generation_config_are_compared(copies):
    gen = identity.trainer_facts(copies["gen_defaults"])
    defaults = {"temperature": 0.7, "top_p": 0.8, "top_k": 20}
    assert gen["model.sampling_defaults"] == defaults
    assert identity.trainer_facts(copies["tiny"])["model.sampling_defaults"] == {}
    # vLLM's get_diff_sampling_param also reports max_tokens: a length, not a default compared.
    applied = engine_facts(
        _engine_key_reading(gen, generation_config_defaults={**defaults, "max_tokens": 64})
    )
    assert {r["status"] for r in compare(gen, applied)} == {"same"}
    # An engine started with generation_config="vllm" applies none of them: differs.
    ignored = engine_facts(_engine_key_reading(gen, generation_config_defaults={}))
    rows = compare(gen, ignored, ("trainer", "v1"))
    assert [r["key"] for r in rows if r["status"] == "differs"] == ["model.sampling_defaults"]
    unread = engine_facts(_engine_key_reading(gen, generation_config_defaults="<unavailable: x>"))
    assert unread["model.sampling_defaults"] is None  # unknown, never guessed


def test_generation_config_facts_are_not_config_drift(copies):
    # The engine's environment reads the eos ids one by one (drift judges those); the derived
    # stop ids and the request defaults are judged against the live engine after the run.
    edited = identity.trainer_facts(copies["gen_eos"])
    env = {**edited, "model.stop_token_ids": [1, 5], "model.sampling_defaults": {"top_k": 3}}
    assert drift(edited, env, "v0", "4.51.3") == []


def test_a_stop_id_mismatch_fails_identity_with_its_fix(copies, monkeypatch):
    from parity.run import modelcheck
    from parity.verdicts import core

    edited = str(copies["gen_eos"])
    monkeypatch.setattr(modelcheck, "trainer_facts", identity.trainer_facts)
    key = _engine_key_reading(identity.trainer_facts(edited))
    run = SimpleNamespace(effective_config={"key": key})
    res = SimpleNamespace(model_path=edited, runs={"candidate": run})
    verdict = core.Verdict("pass", None, "ok", [core.bound("x", 0.0, 1.0)])
    modelcheck.add_identity(res, verdict, {})
    assert verdict.outcome == "fail" and verdict.diagnosis == "model_mismatch"
    assert "model.stop_token_ids: 1 vs [1, 5]" in verdict.message or (
        "model.stop_token_ids: [1, 5] vs 1" in verdict.message
    )
    assert "give generation_config.json the eos_token_id of config.json" in verdict.message
