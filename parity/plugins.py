"""Extension points: the entry-point groups through which another installed package adds a fix
category, an engine kind or a trainer-side scorer to parity, without a fork.

A plugin package declares, in its pyproject.toml:

    [project.entry-points."parity.categories"]
    my_category = "my_pkg.my_category:CATEGORY"          # a parity.categories.base.Category
    [project.entry-points."parity.engines"]
    sglang = "my_pkg.sglang_engine:SGLangEngine"         # implements parity.engines.base.Engine
    [project.entry-points."parity.scorers"]
    megatron = "my_pkg.scorer:MegatronScorer"            # implements parity.trainer.base.Scorer

Each registry (parity.categories, parity.engines, parity.trainer) merges its built-ins with these.
"""

from __future__ import annotations

from importlib import metadata

CATEGORIES = "parity.categories"
ENGINES = "parity.engines"
SCORERS = "parity.scorers"


class PluginError(Exception):
    """A plugin that cannot be used: its name clashes with a built-in, or it fails to load."""


def entry_points(group: str) -> dict[str, metadata.EntryPoint]:
    """name -> entry point, for every installed distribution offering one in `group`."""
    return {ep.name: ep for ep in metadata.entry_points(group=group)}


def _origin(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return f"{ep.value!r} (package {dist.name})" if dist is not None else repr(ep.value)


def targets(group: str, builtin: dict[str, str]) -> dict[str, str]:
    """The built-in name -> "module:attribute" table plus every plugin's entry in `group`.

    Raises:
        PluginError: a plugin reuses a built-in name (parity never lets a plugin replace one).
    """
    out = dict(builtin)
    for name, ep in entry_points(group).items():
        if name in builtin:
            raise PluginError(
                f"entry point {name!r} in group {group} ({_origin(ep)}) reuses the "
                f"name of a built-in; give it another name"
            )
        out[name] = ep.value
    return out


def load(group: str, name: str, ep: metadata.EntryPoint):
    """The object an entry point names (PluginError saying which package failed)."""
    try:
        return ep.load()
    except Exception as exc:  # a broken plugin must say which one it is
        raise PluginError(
            f"the {group} entry point {name!r} = {_origin(ep)} failed to load: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
