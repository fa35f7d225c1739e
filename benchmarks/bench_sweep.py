"""Sweep throughput: finished trials per second once the workers have read their inputs.

Runs `granalign sweep` (the library call) on a search space with a fresh SQLite study and
MLflow store, then reads the trials' start/complete times from the study: the rate is the
finished trials divided by the time from the first trial's start to the last one's end, so
process start and the cache read (done once per worker) are not counted; the wall time of
the whole call is printed beside it, and the CPU seconds a trial of every process of the
command (workers, MLflow writer), which the other jobs of a shared machine disturb less.

With one worker (the trials run in this process) it also prints a per-trial breakdown of
the worker's time (each phase timed around the call the sweep makes) and the Optuna
storage's calls and SQL statements a trial.

`--tree DIR` runs another checkout's harness (e.g. `git archive` of the commit before a
change) in a subprocess with the same arguments; `--rounds N --tree DIR` alternates this
tree and that one N times, so both are measured under the same load. `--dump FILE` writes
each trial's state, params, values and intermediate values: with one worker, two trees
that sample alike write the same file (compare them with `cmp`).

    GRANALIGN_DATA=../shared/data python benchmarks/bench_sweep.py --n-trials 200 --workers 2
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


class Phases:
    """Wall time and calls of named phases in the thread that runs the trials (the
    heartbeat thread's storage calls are not counted); a phase entered inside another is
    counted in both (storage time inside `suggest` is in `suggest` and in `storage`)."""

    def __init__(self) -> None:
        self.thread = threading.get_ident()
        self.seconds: collections.Counter[str] = collections.Counter()
        self.calls: collections.Counter[str] = collections.Counter()
        self._open: set[str] = set()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if name in self._open or threading.get_ident() != self.thread:  # re-entered, or another thread (a storage call inside a storage call)
            yield
            return
        self._open.add(name)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - t0
            self.calls[name] += 1
            self._open.discard(name)

    def wrap(self, owner: Any, attr: str, name: str) -> None:
        """Time every call of `owner.attr` as phase `name` (absent attributes are skipped:
        another checkout may not have them)."""
        f = getattr(owner, attr, None)
        if f is None or getattr(f, "_timed", False):
            return

        @functools.wraps(f)
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.phase(name):
                return f(*args, **kwargs)

        timed._timed = True  # type: ignore[attr-defined]
        setattr(owner, attr, timed)


def instrument(phases: Phases) -> None:
    """Time the calls a sweep trial makes, as the worker (this process) makes them."""
    import optuna
    from optuna.storages import BaseStorage

    from harness.report import tracking
    from harness.runner import sweeps

    sweeps_phases = {"claim": (sweeps.SweepWorker, "claim"), "suggest (TPE, params)": (sweeps, "suggest"),
                     "trial arithmetic": (sweeps, "trial"), "inputs (get_or_substitute)": (sweeps, "get_or_substitute"),
                     "per-query save": (sweeps, "save_per_query"), "tell": (optuna.Study, "tell"),
                     "user attrs": (optuna.Trial, "set_user_attr"), "report": (optuna.Trial, "report"),
                     "should_prune": (optuna.Trial, "should_prune")}
    for name, (owner, attr) in sweeps_phases.items():
        phases.wrap(owner, attr, name)
    for attr in ("child", "log_metrics", "log_dataset", "set_tags", "finish"):
        phases.wrap(tracking.Tracker, attr, "MLflow (queueing)")
    storages = {cls for cls in _subclasses(BaseStorage)}
    for cls in storages:
        for attr, f in list(vars(cls).items()):
            if callable(f) and not attr.startswith("_"):
                phases.wrap(cls, attr, "storage")


def _subclasses(cls: type) -> Iterator[type]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def process_cpu(pids: set[int], seen: dict[int, float]) -> Callable[[], None]:
    """A sampler of the CPU seconds of this process's descendants (their last reading is
    kept: a worker's time counts after it exits)."""
    import psutil

    me = psutil.Process()

    def sample() -> None:
        for p in me.children(recursive=True):
            try:
                t = p.cpu_times()
                seen[p.pid] = t.user + t.system
                pids.add(p.pid)
            except psutil.Error:
                pass

    return sample


def run_once(args: argparse.Namespace) -> None:
    import optuna
    import psutil
    import sqlalchemy

    from harness.config.settings import Settings
    from harness.runner.sweeps import run_sweep

    with tempfile.TemporaryDirectory() as tmp:
        storage = f"sqlite:///{tmp}/optuna.db"
        statements = {"n": 0}

        def count(conn: Any, *rest: Any) -> None:
            if str(conn.engine.url) == storage:
                statements["n"] += 1

        sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", count)
        phases = Phases()
        if args.workers <= 1:
            instrument(phases)
        settings = Settings(storage=storage, tracking_uri=f"sqlite:///{tmp}/mlflow.db", cache_dir=args.cache,
                            workers=args.workers, out_dir=tmp, demo=args.demo)
        pids: set[int] = set()
        child_cpu: dict[int, float] = {}
        sample = process_cpu(pids, child_cpu)
        stop = threading.Event()

        def poll() -> None:
            while not stop.wait(0.2):
                sample()

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        me = psutil.Process()
        cpu0 = sum(me.cpu_times()[:2])
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        summary = run_sweep(args.space, settings, args.n_trials, echo=False)
        wall = time.perf_counter() - t0
        stop.set()
        poller.join()
        own = sum(me.cpu_times()[:2]) - cpu0
        cpu = own + sum(child_cpu.values())
        study = optuna.load_study(study_name=summary["study"], storage=storage)
        done = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
        start = min(t.datetime_start for t in done)
        end = max(t.datetime_complete for t in done)
        span = (end - start).total_seconds()
        tag = f" [{args.label}]" if args.label else ""
        print(f"{args.workers} worker(s){tag}, {len(done)} finished trials ({summary['trials']}), MLflow on, "
              f"load average {load:.1f} at start")
        print(f"  sustained: {len(done) / span:.1f} trials/s over {span:.2f} s (first trial start to last end)")
        print(f"  wall: {wall:.1f} s for the whole call (process start, cache read, MLflow setup included)")
        print(f"  CPU: {cpu / len(done) * 1000:.1f} ms a trial, all processes, whole call "
              f"({cpu:.1f} s: this process {own:.1f} s, children "
              f"{', '.join(f'{c:.1f}' for c in sorted(child_cpu.values(), reverse=True))} s)")
        if args.workers <= 1:
            n = len(study.trials)
            print(f"  storage: {statements['n'] / n:.1f} SQL statements, "
                  f"{phases.calls['storage'] / n:.1f} storage calls a trial")
            print("  per trial (ms, worker's wall time; storage is also inside the phases that call it):")
            for name, s in sorted(phases.seconds.items(), key=lambda kv: -kv[1]):
                print(f"    {name:28s} {s / n * 1000:7.2f}  ({phases.calls[name] / n:.1f} calls)")
            print(f"    {'span / trial':28s} {span / n * 1000:7.2f}")
        if args.dump:
            Path(args.dump).write_text(json.dumps(trial_record(study.trials), indent=1))
            print(f"  trials written to {args.dump}")
        best = summary["best"][0] if summary["best"] else None
        if best:
            print(f"  best: trial {best['number']} {best['values']} {best['params']}")
        sys.stdout.flush()


def trial_record(trials: list[Any]) -> list[dict[str, Any]]:
    """What must not change for the same seed with one worker: each trial's number, state,
    params, values and intermediate values (the JSON `--dump` writes; compare two with diff)."""
    return [{"number": t.number, "state": t.state.name, "params": t.params, "values": t.values,
             "intermediate": {str(k): v for k, v in sorted(t.intermediate_values.items())}} for t in trials]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default=str(REPO / "experiments" / "sweeps" / "granalign_qvh.yaml"))
    ap.add_argument("--n-trials", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cache", default=None)
    ap.add_argument("--demo", action="store_true")
    ap.add_argument("--tree", default=None, help="another checkout to measure against (alternated)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--dump", default=None, help="write the study's trials (JSON) here, to compare two trees")
    ap.add_argument("--label", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not os.environ.get("PYTHONPATH"):  # this checkout's harness, not an installed one
        sys.path.insert(0, str(REPO))
    if args.tree is None and args.rounds <= 1:
        run_once(args)
        return
    trees = [("this tree", str(REPO))] + ([("--tree", str(Path(args.tree).resolve()))] if args.tree else [])
    passed = [a for a in sys.argv[1:]]
    for flag in ("--tree", "--rounds"):  # the child runs one tree once
        if flag in passed:
            i = passed.index(flag)
            del passed[i:i + 2]
    for r in range(args.rounds):
        for label, root in (trees if r % 2 == 0 else trees[::-1]):
            env = {**os.environ, "PYTHONPATH": root}
            subprocess.run([sys.executable, str(Path(__file__).resolve()), *passed, "--label",
                            f"{label} {root}, round {r + 1}"], cwd=root, env=env, check=True)


if __name__ == "__main__":
    main()
