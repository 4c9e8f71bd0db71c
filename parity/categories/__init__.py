"""The category registry: every module in this package that defines `CATEGORY` (a
parity.categories.base.Category) is a category, found by name, and so is every object another
installed package offers in the `parity.categories` entry-point group (parity.plugins). Adding a
category is adding a module (and its scenarios); the runner, scenario parser, report and bisect
only ask this registry."""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from parity import plugins
from parity.categories.base import Category


@cache
def registry() -> dict[str, Category]:
    """name -> category: this package's modules that define CATEGORY, then the plugins'.

    Raises:
        PluginError: a plugin category fails to load, is not a Category, or reuses a name.
    """
    found: dict[str, Category] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_") or info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        category = getattr(module, "CATEGORY", None)
        if category is not None:
            found[category.name] = category
    for name, ep in plugins.entry_points(plugins.CATEGORIES).items():
        category = plugins.load(plugins.CATEGORIES, name, ep)
        if isinstance(category, type) and issubclass(category, Category):
            category = category()
        if not isinstance(category, Category):
            raise plugins.PluginError(
                f"the parity.categories entry point {name!r} names "
                f"{ep.value}, which is not a parity Category"
            )
        if category.name in found:
            raise plugins.PluginError(
                f"the parity.categories entry point {name!r} reuses the "
                f"category name {category.name!r}; give it another name"
            )
        found[category.name] = category
    return found


def get(name: str) -> Category:
    """The category called `name` (KeyError when there is none)."""
    return registry()[name]


def names() -> list[str]:
    return list(registry())
