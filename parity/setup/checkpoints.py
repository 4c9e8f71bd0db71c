"""Checkpoints derived for negative controls: a new checkpoint with some components put back to
the old weights (an update that deliberately leaves part of the model stale)."""

from __future__ import annotations

from pathlib import Path

from parity.setup.modelbuild import Log, ModelError, build_once
from parity.setup.models import copy_side_files, fingerprint, model_dir


def with_old_layers(new: str | Path, old: str | Path, layers: list[int], log: Log = print) -> Path:
    """`new` with decoder layers `layers` holding `old`'s tensors (every tensor named
    `*.layers.<i>.*`), built once into the model cache.

    Args:
        new, old: checkpoint directories of the same architecture.
        layers: decoder layer indices to keep old.
    Raises:
        ModelError (from the build): a layer that the checkpoint does not have.
    """
    new, old = Path(new), Path(old)
    tag = "-".join(str(i) for i in sorted(set(layers)))
    target = model_dir(f"{new.name}-old-layers-{tag}")
    meta = {
        "name": target.name,
        "base": str(new),
        "base_fingerprint": fingerprint(new),
        "old_fingerprint": fingerprint(old),
        "old_layers": sorted(set(layers)),
    }

    def build(tmp: Path) -> None:
        from safetensors.torch import load_file, save_file  # lazy: safetensors.torch imports torch

        old_tensors = {}
        for f in sorted(old.glob("*.safetensors")):
            old_tensors.update(load_file(str(f)))
        copy_side_files(new, tmp)
        found = set()
        for f in sorted(new.glob("*.safetensors")):
            tensors = load_file(str(f))
            for name in tensors:
                parts = name.split(".")
                if "layers" in parts and parts.index("layers") + 1 < len(parts):
                    index = parts[parts.index("layers") + 1]
                    if index.isdigit() and int(index) in layers and name in old_tensors:
                        tensors[name] = old_tensors[name]
                        found.add(int(index))
            save_file(tensors, str(tmp / f.name), metadata={"format": "pt"})
        missing = sorted(set(layers) - found)
        if missing:
            raise ModelError(f"no decoder layer(s) {missing} in {new}")

    return build_once(target, build, meta, False, log)
