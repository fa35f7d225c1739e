"""Sweep throughput: finished trials per second once the workers have read their inputs.

Runs `granalign sweep` (the library call) on a search space with a fresh SQLite study and
MLflow store, then reads the trials' start/complete times from the study: the rate is the
finished trials divided by the time from the first trial's start to the last one's end, so
process start and the cache read (done once per worker) are not counted; the wall time of
the whole call is printed beside it. With one worker it also counts the SQL statements the
Optuna storage ran per trial.

    GRANALIGN_DATA=../shared/data python benchmarks/bench_sweep.py --n-trials 200 --workers 2
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import optuna
import sqlalchemy

from harness.config.settings import Settings
from harness.runner.sweeps import run_sweep

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default=str(REPO / "experiments" / "sweeps" / "granalign_qvh.yaml"))
    ap.add_argument("--n-trials", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--demo", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        storage = f"sqlite:///{tmp}/optuna.db"
        statements = {"n": 0}

        def count(conn, cursor, statement, *rest) -> None:  # noqa: ANN001
            if str(conn.engine.url) == storage:
                statements["n"] += 1

        sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", count)
        settings = Settings(storage=storage, tracking_uri=f"sqlite:///{tmp}/mlflow.db", cache_dir=args.cache,
                            workers=args.workers, out_dir=tmp, demo=args.demo)
        t0 = time.perf_counter()
        summary = run_sweep(args.space, settings, args.n_trials, echo=False)
        wall = time.perf_counter() - t0
        study = optuna.load_study(study_name=summary["study"], storage=storage)
        done = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
        start = min(t.datetime_start for t in done)
        end = max(t.datetime_complete for t in done)
        span = (end - start).total_seconds()
        print(f"{args.workers} worker(s), {len(done)} finished trials ({summary['trials']}), MLflow on")
        print(f"  sustained: {len(done) / span:.1f} trials/s over {span:.1f} s (first trial start to last end)")
        print(f"  wall: {wall:.1f} s for the whole call (process start, cache read, MLflow setup included)")
        if args.workers <= 1:
            print(f"  storage: {statements['n'] / len(study.trials):.1f} SQL statements per trial")
        best = summary["best"][0] if summary["best"] else None
        if best:
            print(f"  best: trial {best['number']} {best['values']} {best['params']}")
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
