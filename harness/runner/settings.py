"""Where a table or sweep reads and writes, shared with its worker processes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.cache import open_cache
from harness.cache.store import Cache
from harness.data.demo import DEMO_DATASET
from harness.data.spec import dataset_spec
from harness.runner.trial import InputPool

DEMO_OVERRIDES = {"dataset": DEMO_DATASET}


@dataclass
class Settings:
    """Storage, tracking, cache and data locations, workers and `--set` overrides.

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

    def resolved_overrides(self) -> dict[str, Any]:
        """What changes the rows' configs: `--set`, `--demo` and `--substitute`."""
        out = {**(DEMO_OVERRIDES if self.demo else {}), **self.overrides}
        if self.substitutions:
            out["substitute"] = list(self.substitutions)
        return out

    def open_cache(self, dataset: str | None = None) -> Cache:
        """The cache a run on `dataset` reads (a synthetic dataset's own, built on first use)."""
        return open_cache(DEMO_DATASET if self.demo and dataset is None else dataset, self.cache_dir, readonly=True)


class Pools:
    """One `InputPool` per cache: a synthetic dataset reads its own cache, the rest share one."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pools: dict[str, InputPool] = {}

    def __call__(self, dataset: str) -> InputPool:
        spec = dataset_spec(dataset)
        key = spec.family if spec.synthetic else ""
        if key not in self._pools:
            cache = self.settings.open_cache(dataset)
            self._pools[key] = InputPool(cache, self.settings.data_root)
        return self._pools[key]
