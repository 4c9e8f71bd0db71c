"""The category registry: every module in this package that defines `CATEGORY` (a
parity.categories.base.Category) is a category, found by name. Adding a category is adding a
module here (and its scenarios); the runner, scenario parser, report and bisect only ask this
registry."""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

from parity.categories.base import Category


@cache
def registry() -> dict[str, Category]:
    """name -> category, for every module of this package that defines CATEGORY."""
    found: dict[str, Category] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_") or info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        category = getattr(module, "CATEGORY", None)
        if category is not None:
            found[category.name] = category
    return found


def get(name: str) -> Category:
    """The category called `name` (KeyError when there is none)."""
    return registry()[name]


def names() -> list[str]:
    return list(registry())
