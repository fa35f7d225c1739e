"""YAML files that name a base file: one rule for run configs, sweep spaces and table specs.

A `base:` path is relative to the file that says it. A run config inherits its base's keys
(and the base its own base's, without loops); a sweep space and a table spec name the run
config their trials or rows start from. Every YAML the harness reads goes through the
strict loader of `harness.core.yaml_io`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.core.errors import ConfigError
from harness.core.yaml_io import load_yaml


def resolve_base(file: Path, base: Any, where: str = "base") -> Path:
    """The path `base` names, relative to the folder of `file` (the one rule)."""
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{file}: {where!r} should be a path to a YAML file, got {base!r:.80}")
    return file.parent / base


def load_yaml_with_base(path: Path, what: str, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A mapping of keys from `path`, merged over its `base:` chain (nearer files win)."""
    if not path.is_file():
        raise ConfigError(f"{what} file {path} not found")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'base' chain loops")
    data = load_yaml(path)
    if data is None:
        raise ConfigError(f"{path}: the file is empty; expected a mapping of {what} keys")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of {what} keys")
    base = data.pop("base", None)
    if base is None:
        return data
    merged = load_yaml_with_base(resolve_base(path, base), what, (*seen, path.resolve()))
    merged.update(data)
    return merged
