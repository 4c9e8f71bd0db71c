"""The built-in models (a tiny trained Llama, SmolLM2-135M-Instruct) by name, built once into
the cache; model arguments resolved to checkpoint directories, perturbed copies for
weight-update tests, and content fingerprints for cache keys."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path

from parity.data.atomic import atomic_write
from parity.setup.modelbuild import (
    STAMP,
    Log,
    ModelError,
    build_once,
    digest,
    hashed_files,
    is_built,
    offline,
)
from parity.setup.paths import cache_dir
from parity.setup.smollm2 import build_smollm2
from parity.setup.tiny import build_tiny, build_tiny_tied

__all__ = [
    "MODEL_NAMES",
    "build_model",
    "fingerprint",
    "mean_entropy",
    "model_dir",
    "perturb",
    "resolve_model",
]

MODEL_NAMES = ("tiny", "tiny-tied", "smollm2-135m")


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
        if not is_built(model_dir(name)):
            log(f"model {name!r} is not built yet: building it into {model_dir(name)}")
        return build_model(name, log=log)
    path = Path(name).expanduser()
    if (path / "config.json").is_file():
        return path.resolve()
    if "/" not in name and is_built(model_dir(name)):
        return model_dir(name)
    raise ModelError(
        f"unknown model {name!r}: expected one of {', '.join(MODEL_NAMES)} "
        f"or a directory holding config.json"
    )


def is_built_name(name: str) -> bool:
    """Whether `<cache>/models/<name>` holds a finished build (e.g. a perturbed copy)."""
    try:
        return is_built(model_dir(name))
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
    builders = {"tiny": build_tiny, "tiny-tied": build_tiny_tied, "smollm2-135m": build_smollm2}
    if name not in builders:
        raise ModelError(f"no built-in model {name!r}: expected one of {', '.join(MODEL_NAMES)}")
    return build_once(
        model_dir(name), lambda tmp: builders[name](tmp, log), {"name": name}, force, log
    )


def fingerprint(path: str | os.PathLike) -> str:
    """sha256 over a checkpoint's weight files, config, generation config and tokenizer files.

    Reads the digest cached in the stamp when no hashed file is newer than the stamp (a model
    parity built); else the digest kept in the cache directory for the same files in the same
    state (path, size, inode, mtime and ctime in ns of each: any write changes ctime), so a
    user's 70B checkpoint is read once, not on every run (docs/measurements.md#fingerprint-cache).
    """
    path = Path(path)
    stamp = path / STAMP
    files = hashed_files(path)
    if stamp.is_file() and all(f.stat().st_mtime <= stamp.stat().st_mtime for f in files):
        cached = json.loads(stamp.read_text()).get("fingerprint")
        if cached:
            return cached
    stats = [f.stat() for f in files]
    kept = cache_dir() / "fingerprints" / f"{_files_state(path, files, stats)}.json"
    try:
        return json.loads(kept.read_text())["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not kept yet, or unreadable: read the files
    value = digest(path, files)
    if _settled(stats):
        try:
            kept.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(kept, json.dumps({"path": str(path.resolve()), "fingerprint": value}))
        except OSError:
            pass  # a read-only cache only costs the next run a re-read
    return value


def _files_state(root: Path, files: list[Path], stats: list[os.stat_result]) -> str:
    """sha256 of where the files are and of their state, not of their contents."""
    state = [str(root.resolve())]
    for f, st in zip(files, stats):
        state.append([f.name, st.st_size, st.st_ino, st.st_dev, st.st_mtime_ns, st.st_ctime_ns])
    return hashlib.sha256(json.dumps(state).encode()).hexdigest()


def _settled(stats: list[os.stat_result], quiet_s: float = 2.0) -> bool:
    """No file changed in the last `quiet_s` seconds. File times tick in coarse steps (a
    kernel tick), so a write in the same step as the digest would leave the state unchanged:
    such a digest is not kept ("racy" entries, as git's index treats them)."""
    newest = max((max(st.st_mtime_ns, st.st_ctime_ns) for st in stats), default=0)
    return time.time_ns() - newest > quiet_s * 1e9


def derived_checkpoint(
    base: str | os.PathLike, suffix: str, out: str | os.PathLike | None, log: Log
) -> tuple[Path, Path, dict]:
    """A checkpoint derived from `base` (perturbed, trained): the base's directory, the target
    (`out`, default `<cache>/models/<base>-<suffix>`) and the metadata every derived checkpoint
    records (its name, the base and the base's fingerprint, so a changed base rebuilds it)."""
    src = resolve_model(base, log=log)
    name = str(base) if str(base) in MODEL_NAMES else src.name
    target = Path(out) if out is not None else model_dir(f"{name}-{suffix}")
    meta = {"name": target.name, "base": str(src), "base_fingerprint": fingerprint(src)}
    return src, target, meta


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
    src, target, meta = derived_checkpoint(base, f"perturb-s{seed}-x{scale:g}", out, log)
    meta.update({"seed": int(seed), "scale": float(scale)})

    def build(tmp: Path) -> None:
        _perturb_into(src, tmp, int(seed), float(scale))

    return build_once(target, build, meta, False, log)


def mean_entropy(path: str | os.PathLike, texts: Iterable[str]) -> float:
    """Mean next-token entropy in nats of a checkpoint (transformers, float32) over `texts`."""
    offline()
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
