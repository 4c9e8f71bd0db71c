"""The built-in engine profiles (parity/profiles/builtin.toml): named engine settings such as
v1-parity and v1-defaults, each an engine kind, environment, engine args and env vars."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from typing import Any


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    engine: str
    env: str
    engine_args: dict[str, Any]
    env_vars: dict[str, str]


def load_profiles() -> dict[str, Profile]:
    """The built-in profiles (parity/profiles/builtin.toml)."""
    text = resources.files("parity").joinpath("profiles/builtin.toml").read_text()
    data = tomllib.loads(text)
    return {
        name: Profile(
            name,
            d.get("description", ""),
            d.get("engine", "vllm"),
            d.get("env", "harness"),
            dict(d.get("engine_args", {})),
            {k: str(v) for k, v in d.get("env_vars", {}).items()},
        )
        for name, d in data.items()
    }
