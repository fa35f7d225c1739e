"""`granalign table` (a paper table as an Optuna study over its rows) and `granalign sweep`
(an Optuna hyperparameter sweep), both tracked in MLflow."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from harness.cli.common import add_cache_arg, add_substitute_arg, bounded_int, positive_int, seconds
from harness.config import parse_override
from harness.config.settings import Settings
from harness.config.sweep import load_sweep
from harness.config.table import list_tables
from harness.core.io import check_output_file
from harness.method.substitutions import parse_substitutions
from harness.report.tracking import DEFAULT_TRACKING_URI
from harness.runner.studies import DEFAULT_STORAGE, MAX_WORKERS, STORAGE_ENV
from harness.runner.sweeps import (
    MAX_TIMEOUT,
    cv_lines,
    run_sweep,
    sweep_overrides,
    write_best_config,
)
from harness.tables.run import run_table, table_from_mlflow


def _settings(args: argparse.Namespace) -> Settings:
    return Settings(
        storage=args.storage, tracking_uri=args.tracking_uri, cache_dir=args.cache,
        data_root=args.data_root, workers=args.workers,
        overrides=dict(parse_override(s) for s in args.set or []),
        out_dir=args.out, demo=args.demo,
        substitutions=tuple(str(s) for s in parse_substitutions(args.substitute or [])),
    )


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", default=None, help=f"Optuna storage URL (default ${STORAGE_ENV} or {DEFAULT_STORAGE})")
    p.add_argument("--tracking-uri", default=None,
                   help=f"MLflow tracking URI (default $MLFLOW_TRACKING_URI or {DEFAULT_TRACKING_URI})")
    p.add_argument("--workers", type=bounded_int(MAX_WORKERS), default=1,
                   help=f"worker processes sharing the study (1 to {MAX_WORKERS}; each is a ~280 MB process)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key in every row/trial")
    p.add_argument("--demo", action="store_true", help="run on the built-in SYNTHETIC demo dataset")
    p.add_argument("--data-root", default=None, help="benchmark data folder (default $GRANALIGN_DATA)")
    p.add_argument("--out", default="runs", help="folder for rendered tables (default runs/)")
    add_substitute_arg(p)
    add_cache_arg(p)


def cmd_table(args: argparse.Namespace) -> int:
    settings = _settings(args)
    ids = list_tables() if args.table == "all" else [args.table]
    for tid in ids:
        if args.from_mlflow:
            table_from_mlflow(tid, settings)
        else:
            run_table(tid, settings)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.best_config:  # checked before the sweep, not after it
        check_output_file(Path(args.best_config), "--best-config")
    summary = run_sweep(args.space, settings, args.n_trials, echo=False, cv=args.cv or 0, cv_seed=args.cv_seed,
                        timeout=args.timeout)
    if args.best_config:  # written before anything is printed: a full stdout cannot lose it
        spec = load_sweep(args.space)
        cfg = write_best_config(args.best_config, args.space, summary, sweep_overrides(spec, settings),
                                settings.substitutions)
    print(json.dumps(summary, indent=2))
    if "cv" in summary:
        print(cv_lines(summary["cv"]))
    if args.best_config:
        print(f"best config ({cfg.hash()}) written to {args.best_config}")
    return 0


def _table_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("table", help="table id (3, C1, 13, ...) or 'all'")
    p.add_argument("--from-mlflow", action="store_true", help="render from MLflow alone, compute nothing")
    _common(p)
    p.set_defaults(func=cmd_table)


def _sweep_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("space", help="sweep YAML (see experiments/sweeps/)")
    s.add_argument("--n-trials", type=positive_int, default=50, help="complete + pruned trials to reach")
    s.add_argument("--timeout", type=seconds(MAX_TIMEOUT), default=None, metavar="SECONDS",
                   help="time budget: no trial starts after it (running ones finish); a rerun continues")
    s.add_argument("--best-config", metavar="PATH", default=None,
                   help="write the best trial as a run config (YAML) that `granalign run` reproduces")
    s.add_argument("--cv", type=positive_int, default=None, metavar="K",
                   help="then nested cross-validation over K folds of queries grouped by video (K more "
                        "searches of --n-trials each): the estimate on held-out queries and the selection optimism")
    s.add_argument("--cv-seed", type=int, default=0, help="seed of the folds (default 0)")
    _common(s)
    s.set_defaults(func=cmd_sweep)


ARGUMENTS = {"table": _table_arguments, "sweep": _sweep_arguments}
