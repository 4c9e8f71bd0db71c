"""The real-engine tests of test_models.py's subject (Built-in models: the tiny model is deterministic, peaked, portable across transformers)."""

import json
import os
import subprocess

from models_fixtures import _config

from parity.setup.models import (
    build_model,
)

# The user's cache, resolved before any test points PARITY_CACHE_DIR at a temporary directory:
# the V0 environment is built (or reused) there.
REAL_CACHE = os.environ.get("PARITY_CACHE_DIR")


_READ_BACK = """
import json, sys
from transformers import AutoConfig, AutoTokenizer
c = AutoConfig.from_pretrained(sys.argv[1]); t = AutoTokenizer.from_pretrained(sys.argv[1])
print(json.dumps({"rope_theta": c.rope_theta, "vocab": c.vocab_size, "eos": c.eos_token_id,
                  "ids": t(sys.argv[2])["input_ids"]}))
"""


def test_tiny_reads_the_same_under_transformers_4_51(tiny, monkeypatch):
    from transformers import AutoConfig, AutoTokenizer

    from parity.setup import envs, envspecs

    if REAL_CACHE is None:
        monkeypatch.delenv("PARITY_CACHE_DIR")
    else:
        monkeypatch.setenv("PARITY_CACHE_DIR", REAL_CACHE)
    V0_PYTHON = envs.ensure_env(envspecs.get_spec("v0"), log=lambda m: None)  # built once, reused
    text = "12 + 7 = 19. The cat sees a red ball!"
    done = subprocess.run(
        [str(V0_PYTHON), "-c", _READ_BACK, str(tiny), text],
        capture_output=True,
        text=True,
        check=True,
    )
    old = json.loads(done.stdout.strip().splitlines()[-1])
    cfg = AutoConfig.from_pretrained(str(tiny))
    assert old == {
        "rope_theta": cfg.rope_parameters["rope_theta"],
        "vocab": cfg.vocab_size,
        "eos": cfg.eos_token_id,
        "ids": AutoTokenizer.from_pretrained(str(tiny))(text)["input_ids"],
    }


def test_smollm2_builds_and_answers_arithmetic(tmp_path, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("PARITY_CACHE_DIR", str(tmp_path))
    path = build_model("smollm2-135m", log=lambda m: None)
    cfg = _config(path)
    assert cfg["rope_theta"] == 100000.0 and cfg["tie_word_embeddings"] is True
    assert "quantization_config" not in cfg and cfg["torch_dtype"] == "bfloat16"
    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.bfloat16)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is 7 + 5?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    # Greedy, it explains first ("To add 7 and 5, you simply add them together: 7 + 5 = 12."):
    # 12 new tokens stop before the number, 24 reach it.
    out = model.generate(ids, do_sample=False, max_new_tokens=24)
    assert "12" in tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
