"""A run on cached outputs: config -> predictions -> metrics.

`trial(prep, cfg)` is the hot path the Optuna runner calls thousands of times: it takes
inputs already read from the cache (`Prepared`) and does only arithmetic, the MPG, NMS and
the evaluator. `InputPool` reads each (source, pair) once per process and serves every
later trial from memory. `run_config` is `granalign run`: everything the cache lacks is
reported before anything is computed, and outputs are written atomically.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from harness.cache import Cache, atomic_write_text
from harness.config import ExperimentConfig, load_config, parse_override
from harness.data import Dataset, load_dataset
from harness.scoring import Pair, resolve_pairing
from harness.sources import MissingInputs, Prepared, SourceSpec, prepare


def embedder_model(cfg: ExperimentConfig) -> str:
    from harness.embed import embedder_model_id

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
    from harness.recipes import predict, prediction_rows

    return prediction_rows(prep, predict(prep, cfg))


def trial(prep: Prepared, cfg: ExperimentConfig, return_predictions: bool = False) -> dict[str, Any]:
    """Metrics of one config on already-prepared inputs: no file reads, no embedding."""
    from harness.eval import evaluate

    rows = predictions(prep, cfg)
    metrics = evaluate(cfg.dataset, list(prep.queries), rows)
    if return_predictions:
        return {"metrics": metrics, "predictions": rows}
    return metrics


def brief(metrics: dict[str, Any]) -> dict[str, float]:
    """The flat metric dict (QVHighlights' `brief`, or the top-1 metrics as they are)."""
    if "brief" in metrics:
        return dict(metrics["brief"])
    return {k: v for k, v in metrics.items() if isinstance(v, int | float)}


def run_config(
    cfg: ExperimentConfig,
    out_dir: str | Path | None = None,
    cache: Cache | None = None,
    data_root: str | Path | None = None,
) -> dict[str, Any]:
    """`granalign run`: read, predict, evaluate, write predictions + metrics + run info."""
    from harness.provenance import git_commit, package_versions

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
        "synthetic": cfg.dataset.startswith("demo"),
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


def format_metrics(metrics: dict[str, Any], dataset: str) -> str:
    flat = brief(metrics)
    width = max((len(k) for k in flat), default=10)
    head = f"dataset: {dataset}" + ("  (SYNTHETIC demo data: not a benchmark result)" if dataset.startswith("demo") else "")
    return "\n".join([head] + [f"{k:<{width}}  {v:7.2f}" for k, v in flat.items()])


def cmd_run(args: argparse.Namespace) -> int:
    overrides = dict(parse_override(s) for s in args.set or [])
    if args.limit is not None:
        overrides["limit"] = args.limit
    cfg = load_config(args.config, overrides)
    if cfg.dataset.startswith("demo") and args.cache is None:
        from harness.demo import ensure_demo_cache

        cache = ensure_demo_cache()  # synthetic text never enters the real cache
    else:
        cache = Cache(args.cache)
    try:
        res = run_config(cfg, args.out, cache, args.data_root)
    except MissingInputs as e:
        print(f"granalign run: {e}", file=sys.stderr)
        return 3
    print(format_metrics(res["metrics"], cfg.dataset))
    print(f"config hash {res['info']['config_hash']}  cache fingerprint {res['info']['cache_fingerprint'][:16]}")
    print(f"wrote {res['out']}/predictions.jsonl and metrics.json ({res['info']['seconds']['total']} s)")
    return 0


def add_commands(top: argparse._SubParsersAction, cache: argparse._SubParsersAction) -> None:
    from harness.cache_cli import add_cache_arg

    p = top.add_parser("run", help="score every query of a config's dataset from the cache, evaluate")
    p.add_argument("config", help="experiment YAML (see experiments/)")
    p.add_argument("--out", default=None, help="output folder (default runs/<name>-<config hash>)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--limit", type=int, default=None, help="first N queries only")
    p.add_argument("--data-root", default=None, help="benchmark data folder (default $GRANALIGN_DATA)")
    add_cache_arg(p)
    p.set_defaults(func=cmd_run)
