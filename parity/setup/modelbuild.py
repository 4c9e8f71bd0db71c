"""How a model directory is built: once, under a file lock, its stamp written last (ModelError
when a build fails), the content digest of its files, and config and tokenizer files that
transformers 4.51 and 5.x read alike."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from parity.setup import phases

STAMP = "parity-model.json"
# Bump when a build procedure changes what it writes; older builds are then rebuilt.
BUILD_FORMAT = 1
# What fingerprint() hashes: everything that changes weights, logits or tokenization.
_HASHED = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")

Log = Callable[[str], None]


class ModelError(Exception):
    """A model name or directory cannot be resolved, or a build failed."""


def is_built(path: Path) -> bool:
    stamp = path / STAMP
    return stamp.is_file() and json.loads(stamp.read_text()).get("format") == BUILD_FORMAT


def build_once(
    final: Path, build: Callable[[Path], None], meta: dict, force: bool, log: Log
) -> Path:
    """Run `build(tmpdir)`, stamp the result and rename it to `final`, unless already built.

    A build from another base (perturb) counts as stale: `meta` must match the stamp.
    """

    def current() -> bool:
        if not is_built(final):
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
                "fingerprint": digest(tmp, hashed_files(tmp)),
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


def hashed_files(path: Path) -> list[Path]:
    files = sorted(path.glob("*.safetensors")) + [path / n for n in _HASHED]
    return [f for f in files if f.is_file()]


def digest(root: Path, files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(root)}\0{f.stat().st_size}\0".encode())
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def offline() -> None:
    # Nothing here may reach a model hub: every load is from a local directory or file.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


# --- portable files ------------------------------------------------------------------------------


def write_portable(
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
