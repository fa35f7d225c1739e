"""Where a table or sweep reads and writes, and what the command line changes: one object,
shared with its worker processes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.data.demo import DEMO_DATASET

DEMO_OVERRIDES = {"dataset": DEMO_DATASET}


@dataclass
class Settings:
    """Storage, tracking, cache and data locations, workers, `--set` overrides and declared
    substitutions.

    Passed to worker processes as a pickled object (never on a command line, where a
    storage URL with a password would be visible to every local user)."""

    storage: str | None = None
    tracking_uri: str | None = None
    cache_dir: str | None = None
    data_root: str | None = None
    workers: int = 1
    overrides: dict[str, Any] = field(default_factory=dict)
    out_dir: str = "runs"
    demo: bool = False
    artifacts: bool = True
    substitutions: tuple[str, ...] = ()  # declared stand-ins, e.g. ("Cq=Ca",): see method.substitutions

    def config_overrides(self) -> dict[str, Any]:
        """What changes the configs of rows and trials: `--demo` and `--set` (config keys
        only; a command-line option such as `--substitute` is not one)."""
        return {**(DEMO_OVERRIDES if self.demo else {}), **self.overrides}

    def identity(self) -> dict[str, Any]:
        """What makes a table's or sweep's study another one: the config overrides and the
        declared substitutions."""
        out: dict[str, Any] = self.config_overrides()
        if self.substitutions:
            out["substitute"] = list(self.substitutions)
        return out
