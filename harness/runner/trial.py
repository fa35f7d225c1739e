"""A run on cached outputs: config -> predictions -> metrics.

`trial(prep, cfg)` is the hot path the Optuna runner calls thousands of times: it takes
inputs already read from the cache (`Prepared`) and does only arithmetic, the MPG, NMS and
the evaluator. `InputPool` reads each (source, pair) once per process and serves every
later trial from memory. `run_config` is `granalign run`: everything the cache lacks is
reported before anything is computed, and outputs are written atomically.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from harness.cache.embedders import embedder_model_id
from harness.cache.store import Cache
from harness.config import ExperimentConfig
from harness.core.io import atomic_write_text
from harness.core.provenance import git_commit, package_versions
from harness.core.query import Dataset
from harness.core.results import MissingInputs
from harness.data.spec import load_dataset
from harness.eval.protocols import evaluate
from harness.method.recipes import predict, prediction_rows
from harness.method.scoring import Pair, resolve_pairing
from harness.method.sources import Prepared, SourceSpec, prepare


def embedder_model(cfg: ExperimentConfig) -> str:
    return embedder_model_id({"type": cfg.embedder, "model": cfg.embedder_model})


def source_spec(cfg: ExperimentConfig) -> SourceSpec:
    return SourceSpec.from_config(cfg, embedder_model(cfg))


def config_pairs(cfg: ExperimentConfig) -> tuple[Pair, ...]:
    return resolve_pairing(cfg.pairing)


class InputPool:
    """Prepared inputs per (source spec, pairs), read once, shared by all trials."""

    def __init__(self, cache: Cache, data_root: str | Path | None = None) -> None:
        self.cache = cache
        self.data_root = data_root
        self._datasets: dict[tuple[str, int | None], Dataset] = {}
        self._prepared: dict[tuple[SourceSpec, frozenset[Pair], str, int | None], Prepared] = {}
        self._missing: dict[tuple[SourceSpec, frozenset[Pair], str, int | None], MissingInputs] = {}

    def dataset(self, name: str, limit: int | None = None) -> Dataset:
        key = (name, limit)
        if key not in self._datasets:
            full = self._datasets.get((name, None)) or load_dataset(name, self.data_root)
            self._datasets[(name, None)] = full
            self._datasets[key] = full.subset(limit) if limit else full
        return self._datasets[key]

    def get(self, cfg: ExperimentConfig) -> Prepared:
        """Prepared inputs for `cfg`; raises MissingInputs (memoised) if the cache lacks any."""
        spec = source_spec(cfg)
        pairs = frozenset(config_pairs(cfg))
        key = (spec, pairs, cfg.cq_fallback, cfg.limit)
        if key in self._prepared:
            return self._prepared[key]
        if key in self._missing:
            raise self._missing[key]
        try:
            prep = prepare(self.cache, self.dataset(cfg.dataset, cfg.limit), spec, pairs, cfg.cq_fallback)
        except MissingInputs as e:
            self._missing[key] = e
            raise
        self._prepared[key] = prep
        return prep


def predictions(prep: Prepared, cfg: ExperimentConfig) -> list[dict[str, Any]]:
    return prediction_rows(prep, predict(prep, cfg))


def trial(prep: Prepared, cfg: ExperimentConfig, return_predictions: bool = False) -> dict[str, Any]:
    """Metrics of one config on already-prepared inputs: no file reads, no embedding."""
    rows = predictions(prep, cfg)
    metrics = evaluate(cfg.dataset, list(prep.queries), rows)
    if return_predictions:
        return {"metrics": metrics, "predictions": rows}
    return metrics


def run_config(
    cfg: ExperimentConfig,
    out_dir: str | Path | None = None,
    cache: Cache | None = None,
    data_root: str | Path | None = None,
) -> dict[str, Any]:
    """`granalign run`: read, predict, evaluate, write predictions + metrics + run info."""
    cache = cache or Cache(readonly=False)
    t0 = time.perf_counter()
    prep = InputPool(cache, data_root).get(cfg)
    t_read = time.perf_counter() - t0
    result = trial(prep, cfg, return_predictions=True)
    t_total = time.perf_counter() - t0
    out = Path(out_dir) if out_dir else Path("runs") / f"{cfg.name}-{cfg.hash()}"
    info = {
        "name": cfg.name,
        "dataset": cfg.dataset,
        "synthetic": prep.synthetic,
        "config_hash": cfg.hash(),
        "cache_fingerprint": prep.fingerprint,
        "git_commit": git_commit(),
        "packages": package_versions(),
        "seed": cfg.seed,
        "queries": len(prep.queries),
        "seconds": {"read": round(t_read, 3), "total": round(t_total, 3)},
    }
    write_outputs(out, cfg, result["predictions"], result["metrics"], info)
    return {"out": str(out), "metrics": result["metrics"], "info": info}


def write_outputs(
    out: Path, cfg: ExperimentConfig, rows: Iterable[dict[str, Any]], metrics: dict[str, Any],
    info: dict[str, Any],
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "predictions.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    atomic_write_text(out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=True))
    atomic_write_text(out / "run_info.json", json.dumps(info, indent=2) + "\n")
