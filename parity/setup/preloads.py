"""Libraries an engine environment's vLLM needs in LD_PRELOAD: which ones its own CPU worker
refuses to start without (read in its source), where they come from (the env's intel-openmp
wheel, the system's tcmalloc, installed with apt-get when missing), and the variables an engine
process of that environment gets from them.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

__all__ = ["PreloadError", "required", "resolve", "process_vars", "PROVIDERS"]

# vLLM's CPU worker (vllm/v1/worker/cpu_worker.py, init_device) matches these names as
# substrings of $LD_PRELOAD. 0.18.1 raises "libtcmalloc is not found in LD_PRELOAD" (and the
# same for libiomp on x86); 0.32 only warns. Only the refusing versions get preloads: a preload
# changes the allocator and the OpenMP runtime, so it is not added where vLLM runs without it.
WORKER_FILE = Path("vllm/v1/worker/cpu_worker.py")
CHECK_CALL = re.compile(r"""check_preloaded_libs\(\s*["'](lib[\w+-]+)["']\s*\)""")
X86 = {"x86_64", "amd64", "i386", "i686"}

# name vLLM checks -> (where it comes from, file names in order of preference, what provides it)
PROVIDERS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "libtcmalloc": (
        "system",
        ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4"),
        "libtcmalloc-minimal4",
    ),
    "libiomp": ("env", ("libiomp5.so",), "intel-openmp"),
}
SYSTEM_DIRS = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/local/lib",
)

Log = Callable[[str], None]


class PreloadError(Exception):
    """A library the environment's vLLM requires in LD_PRELOAD is missing and cannot be
    provided here; the message says which, why vLLM needs it and how to provide it."""


def required(site_packages: Path, machine: str | None = None) -> list[str]:
    """The library names this vLLM's CPU worker refuses to start without, in its order.

    Read from its source: the names passed to `check_preloaded_libs` when that function
    raises (0.18.1); none when it only warns (0.32) or the file is absent (V0, CUDA builds).
    libiomp is checked on x86 only, as vLLM does.

    Args:
        site_packages: the environment's site-packages directory.
        machine: platform.machine() of the host (default: this one).
    """
    src = site_packages / WORKER_FILE
    if not src.is_file():
        return []
    text = src.read_text(errors="replace")
    if not _check_raises(text):
        return []
    machine = (machine or platform.machine()).lower()
    names = []
    for name in CHECK_CALL.findall(text):
        if name == "libiomp" and machine not in X86:
            continue
        if name not in names:
            names.append(name)
    return names


def _check_raises(text: str) -> bool:
    """Whether the body of `def check_preloaded_libs` raises (rather than logs)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"\s*def check_preloaded_libs\(", line):
            indent = len(line) - len(line.lstrip())
            for body in lines[i + 1 :]:
                if body.strip() and len(body) - len(body.lstrip()) <= indent:
                    break
                if re.match(r"\s*raise\b", body):
                    return True
            return False
    return False


def resolve(
    names: list[str],
    root: Path,
    version: str = "",
    install: bool = True,
    log: Log = print,
    logfile: Path | None = None,
) -> list[str]:
    """The absolute paths to preload for `names`, providing what is missing.

    An env library (libiomp5.so of the intel-openmp wheel) is looked for in the environment;
    a system library (tcmalloc) through `ldconfig -p` and the usual library directories, and,
    when absent and `install` is set, installed with apt-get (as root), which is how a fresh
    machine gets it with nothing installed by hand.

    Raises:
        PreloadError: a library is still missing, with why and how to provide it.
    """
    paths = []
    for name in names:
        if name not in PROVIDERS:
            raise PreloadError(
                f"vLLM {version} requires {name} in LD_PRELOAD, and parity does "
                f"not know what provides it; add it to parity.setup.preloads.PROVIDERS"
            )
        where, files, package = PROVIDERS[name]
        found = _in_env(root, files) if where == "env" else _on_system(files)
        if found is None and where == "system" and install:
            _apt_install(package, log, logfile)
            found = _on_system(files)
        if found is None:
            how = (
                f"install the {package} package (Debian/Ubuntu: apt-get install {package}),"
                " then run the command again"
                if where == "system"
                else f"the environment lacks the {package} wheel that vLLM's requirements name; "
                "rebuild it (remove its directory, then parity env create ...)"
            )
            raise PreloadError(
                f"vLLM {version}'s CPU worker refuses to start without {name} in"
                f" LD_PRELOAD, and no {' or '.join(files)} was found: {how}"
            )
        paths.append(str(found))
    return paths


def _in_env(root: Path, files: tuple[str, ...]) -> Path | None:
    for name in files:
        # intel-openmp puts its libraries in <env>/lib, next to the interpreter's lib/python*
        nested = sorted(root.glob(f"lib/python*/site-packages/**/{name}"))
        for candidate in (root / "lib" / name, *nested):
            if candidate.is_file():
                return candidate
    return None


def _on_system(files: tuple[str, ...]) -> Path | None:
    """The first of `files` the dynamic linker knows (ldconfig -p), else in SYSTEM_DIRS."""
    listed: dict[str, str] = {}
    ldconfig = shutil.which("ldconfig") or "/sbin/ldconfig"
    try:
        out = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, timeout=30).stdout
        for line in out.splitlines():
            m = re.match(r"\s*(\S+) \(([^)]*)\) => (\S+)", line)
            if m and (platform.machine().lower() not in X86 or "x86-64" in m[2]):
                listed.setdefault(m[1], m[3])
    except (OSError, subprocess.SubprocessError):
        pass
    for name in files:
        if name in listed and Path(listed[name]).is_file():
            return Path(listed[name])
        for d in SYSTEM_DIRS:
            if (Path(d) / name).is_file():
                return Path(d) / name
    return None


def _apt_install(package: str, log: Log, logfile: Path | None) -> None:
    """apt-get install `package` (apt-get update first when the lists do not have it); silent
    when this is not a root Debian-like machine: the caller then reports what to install."""
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        return
    log(f"installing {package} with apt-get (vLLM's CPU worker needs it in LD_PRELOAD)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", "--no-install-recommends", package]
    for cmd in (install, [apt, "update"], install):
        with open(logfile or os.devnull, "a") as out:
            out.write(f"$ {' '.join(cmd)}\n")
            out.flush()
            code = subprocess.run(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            ).returncode
        if code == 0 and cmd is install:
            return


def process_vars(python: str | Path, stamp_name: str = "parity-env.json") -> dict[str, str]:
    """Environment variables an engine process run by `python` needs: LD_PRELOAD with the
    libraries its environment's stamp records (before any already in $LD_PRELOAD); {} for an
    interpreter that is not a built environment's (the harness) or needs none.

    Raises:
        PreloadError: a recorded library is gone (e.g. the system package was removed).
    """
    root = Path(python).parent.parent  # <env>/bin/python; not resolved: that is the base python
    stamp_path = root / stamp_name
    if not stamp_path.is_file():
        return {}
    try:
        preload = json.loads(stamp_path.read_text()).get("preload") or []
    except (OSError, ValueError):
        return {}
    missing = [p for p in preload if not Path(p).is_file()]
    if missing:
        raise PreloadError(
            f"environment {root.name} needs {', '.join(missing)} in LD_PRELOAD "
            "and it is gone; run `parity env create` for it again (or reinstall "
            "the library)"
        )
    if not preload:
        return {}
    current = os.environ.get("LD_PRELOAD", "")
    return {"LD_PRELOAD": ":".join([*preload, *filter(None, [current])])}
