"""The real-engine tests of test_envs.py's subject (Tests for parity.setup.envs: spec keys, name parsing, the cache layout, building and listing.)."""

from __future__ import annotations

import os
import subprocess

from parity.setup import envs, envspecs


def test_v0_env_builds_and_imports_vllm():
    python = envs.ensure_env("v0")
    out = subprocess.run(
        [str(python), "-c", "import vllm, vllm._C; print(vllm.__version__)"],
        env={**os.environ, "VLLM_USE_V1": "0"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    expected = "0.8.5" if envspecs.has_cuda() else "0.8.5.post2"
    assert out.stdout.strip().splitlines()[-1] == expected
    if not envspecs.has_cuda():
        from parity.setup import elf_fix

        so = next(python.parent.parent.glob("lib/python*/site-packages/vllm/_C.abi3.so"))
        assert not elf_fix.needs_fix(so), "the libstdc++ fix was applied where needed"
