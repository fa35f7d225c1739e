"""Optuna studies shared by worker processes, on Optuna's public API only.

Tables and sweeps are Optuna studies in an RDB storage (SQLite by default, PostgreSQL when
several machines share one). Workers loop: under the study's lock they look at the trials,
decide whether another trial is due (the budget of a sweep, the next row of a table) and
create it with `Study.ask` (popping a WAITING retry or an enqueued row); then, outside the
lock, they compute it and `Study.tell` the result. Holding the lock around the decision and
the `ask` makes both exact across processes and machines: no trial beyond the budget, no
WAITING trial popped twice (SQLite's transactions let two processes claim the same one).

The lock is a file lock beside a SQLite database, a PostgreSQL advisory lock, a MySQL named
lock, or (another RDB) a lock within the process only.

A worker records a heartbeat in its running trial's user attributes (`granalign.worker`:
host, pid, trial number, the command's process, last beat, and what the claim added, such
as the sweep command). A running trial whose worker process is gone (same host) or whose
heartbeat is older than `GRACE_PERIOD` (any host) is failed with `Study.tell`; a sweep then
enqueues its retry with Optuna's `RetryHeartbeatStaleTrialCallback`, so no trial is lost.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy  # a dependency of optuna
from optuna.exceptions import ExperimentalWarning
from optuna.trial import FrozenTrial, TrialState

from harness.core.io import sha256_hex
from harness.core.processes import Children, command_pid, pid_alive
from harness.core.results import Failed
from harness.core.stores import (
    OPTUNA_SCHEMES,
    StoreError,
    check_store_url,
    connect_args,
    explain,
    file_lock,
    lock_beside,
    redact,
    sqlite_path,
    store_call,
    store_name,
    thread_lock,
)

DEFAULT_STORAGE = "sqlite:///optuna.db"
STORAGE_ENV = "GRANALIGN_OPTUNA_STORAGE"
WORKER_ATTR = "granalign.worker"
REAPED_ATTR = "granalign.reaped"  # study attr: trials failed because their worker died
HEARTBEAT_INTERVAL = 2.0  # seconds between a running trial's heartbeats
GRACE_PERIOD = 20.0  # seconds without a heartbeat after which another host's trial is stale
MAX_RETRY = 2

optuna.logging.set_verbosity(optuna.logging.WARNING)


def storage_url(url: str | None = None) -> str:
    """The storage URL given, else `$GRANALIGN_OPTUNA_STORAGE`, else `sqlite:///optuna.db`,
    checked: a known scheme, and for SQLite an existing folder and an SQLite file."""
    url = url or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE
    return check_store_url(url, "Optuna storage", OPTUNA_SCHEMES)


_ENGINES: dict[str, Any] = {}


@contextlib.contextmanager
def study_lock(url: str, study: str) -> Iterator[None]:
    """Exclusive across every process (and machine) that works on `study` in `url`."""
    db = sqlite_path(url)
    if db is not None or not url.startswith(("postgresql", "mysql")):
        with file_lock(lock_beside(db)):
            yield
        return
    engine = _ENGINES.get(url)
    if engine is None:
        engine = _ENGINES[url] = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool,
                                                             connect_args=connect_args(url))
    key = int(sha256_hex(f"granalign:{study}")[:15], 16)
    with thread_lock(), engine.connect() as con:
        if url.startswith("postgresql"):
            con.exec_driver_sql(f"SELECT pg_advisory_lock({key})")
            try:
                yield
            finally:
                con.exec_driver_sql(f"SELECT pg_advisory_unlock({key})")
        else:
            con.exec_driver_sql(f"SELECT GET_LOCK('granalign-{key}', 600)")
            try:
                yield
            finally:
                con.exec_driver_sql(f"SELECT RELEASE_LOCK('granalign-{key}')")


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's RDBStorage for `url`. A fresh SQLite database's schema is created under the
    file lock: two processes creating it at once fail on `alembic_version`. A server that
    does not answer is retried (`store_call`, bounded and said); a full disk, a read-only
    file or an I/O error in any later call is one StoreError naming the database."""
    db = sqlite_path(url)
    kwargs: dict[str, Any] = {}
    if db is not None:
        kwargs["engine_kwargs"] = {"creator": _sqlite_connector(db)}
    elif connect_args(url):  # an unroutable host: fail in seconds, not minutes
        kwargs["engine_kwargs"] = {"connect_args": connect_args(url)}
    with file_lock(lock_beside(db)):
        try:
            storage = store_call(STORE, url, lambda: optuna.storages.RDBStorage(_template(url), **kwargs))
        except (sqlite3.DatabaseError, sqlalchemy.exc.DatabaseError) as e:
            raise StoreError(f"{db or redact(url)}: the Optuna storage cannot be opened "
                             f"({getattr(e, 'orig', None) or e})") from None
    sqlalchemy.event.listen(storage.engine, "handle_error", _name_the_store(url))
    return storage


STORE = "Optuna storage"


def _template(url: str) -> str:
    """`url` as Optuna's URL template: Optuna fills `{SCHEMA_VERSION}` with `str.format`, so
    any other brace (a folder named `{...}`) is doubled to stay itself."""
    return url.replace("{", "{{").replace("}", "}}").replace("{{SCHEMA_VERSION}}", "{SCHEMA_VERSION}")


def _name_the_store(url: str) -> Callable[[Any], None]:
    """A SQLAlchemy `handle_error` hook: an error that means a full disk, a read-only file,
    an I/O error or a lost server is raised as one StoreError naming the database (Optuna
    would wrap it in 'invalid data in the commit' with six chained tracebacks)."""

    def hook(context: Any) -> None:
        if getattr(context, "is_pre_ping", False):  # a stale pooled connection: SQLAlchemy reconnects
            return
        reason = explain(context.original_exception, url)
        if reason is not None:
            raise StoreError(f"{store_name(url)}: the {STORE} cannot be used: {reason}")

    return hook


def _sqlite_connector(db: Path) -> Callable[[], sqlite3.Connection]:
    """SQLite connections in WAL mode with `synchronous=NORMAL`: a commit no longer waits
    for a disk flush (a sweep commits a dozen times a trial) and readers do not block the
    writer. Safe across processes on one machine; not for a database on a network file
    system (use PostgreSQL to share a study between machines)."""

    def connect() -> sqlite3.Connection:
        con = sqlite3.connect(str(db), timeout=60, check_same_thread=False)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
        return con

    return connect


# -- workers and heartbeats ----------------------------------------------------------------------
def worker_of(t: FrozenTrial) -> dict[str, Any]:
    """The worker attribute of a trial, if it is this trial's own (a retry inherits the
    failed trial's user attributes; `trial` tells them apart)."""
    w = t.user_attrs.get(WORKER_ATTR) or {}
    return w if w.get("trial") == t.number else {}


def worker_gone(t: FrozenTrial, now: float | None = None) -> str:
    """Why a RUNNING trial's worker is gone ('' while it lives)."""
    w = worker_of(t)
    if not w:  # created but not yet claimed: the creator sets the attribute under the lock
        return ""
    if w.get("host") == socket.gethostname() and isinstance(w.get("pid"), int):
        return "" if pid_alive(w["pid"]) else f"worker process {w['pid']} died"
    beat = float(w.get("beat", 0.0))
    if (now or time.time()) - beat > GRACE_PERIOD:
        return f"no heartbeat from {w.get('host')}:{w.get('pid')} for {GRACE_PERIOD:.0f} s"
    return ""


def claim(t: optuna.Trial, **extra: Any) -> None:
    """Mark a freshly asked trial as this process's (call under the study lock); `owner`
    is the command's process (the worker's parent, or the worker itself): a finished trial
    whose owner is gone can have its MLflow run written again. `extra` joins the attribute
    (one storage write a trial, not two; the heartbeats keep it)."""
    t.set_user_attr(WORKER_ATTR, {**_worker_info(t), **extra, "beat": time.time()})


def _worker_info(t: optuna.Trial) -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "trial": t.number, "owner": command_pid()}


def owner_gone(t: FrozenTrial, now: float | None = None) -> bool:
    """Whether the command that ran `t` has ended (its writer with it): same host, its
    process is gone; another host, no heartbeat for three grace periods."""
    w = worker_of(t)
    if not w:
        return True
    owner = w.get("owner", w.get("pid"))
    if w.get("host") == socket.gethostname() and isinstance(owner, int):
        return not pid_alive(owner)
    return (now or time.time()) - float(w.get("beat", 0.0)) > 3 * GRACE_PERIOD


class Heartbeat:
    """One thread per worker process that refreshes the running trial's heartbeat every
    HEARTBEAT_INTERVAL seconds (a thread per trial would cost more than a short trial)."""

    def __init__(self) -> None:
        self._trial: optuna.Trial | None = None
        self._claimed: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="heartbeat")
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_INTERVAL):
            with self._lock:
                t = self._trial
                if t is None:
                    continue
                with contextlib.suppress(Exception):  # a missed beat is retried; never kill the trial
                    t.set_user_attr(WORKER_ATTR, {**self._claimed, "beat": time.time()})

    @contextlib.contextmanager
    def running(self, t: optuna.Trial) -> Iterator[None]:
        """Beat for `t` while the block runs (its claim's attribute, with a new beat)."""
        with self._lock:
            self._trial = t
            self._claimed = {**worker_of(t), **_worker_info(t)}  # its own claim's extras, this worker's identity
        try:
            yield
        finally:
            with self._lock:  # no beat lands on a trial after its block ended
                self._trial = None

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def retry_callback() -> Callable[[optuna.Study, FrozenTrial], None]:
    """Optuna's retry of a failed trial (a WAITING copy with `failed_trial` set)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):  # optuna >= 4.9
            return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
        return optuna.storages.RetryFailedTrialCallback(max_retry=MAX_RETRY)


def reap_dead_trials(study: optuna.Study, retry: Callable[..., None] | None = None,
                     trials: Sequence[FrozenTrial] | None = None) -> list[FrozenTrial]:
    """Fail the RUNNING trials whose worker is gone (and enqueue their retries with `retry`);
    the trials failed here. `trials`: the study's trials if just read. Call under the lock."""
    failed = []
    now = time.time()
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if trials is None else [
        t for t in trials if t.state == TrialState.RUNNING]
    for t in running:
        # under the lock a trial is asked and claimed in one go: a RUNNING trial that no worker
        # claimed had its worker stopped in between (a killed worker), and no one owns it
        why = worker_gone(t, now) if worker_of(t) else "its worker stopped before it claimed the trial"
        if not why:
            continue
        try:
            frozen = study.tell(t.number, state=TrialState.FAIL)
        except ValueError:  # finished meanwhile by its worker
            continue
        failed.append(frozen)
        if retry is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                retry(study, frozen)
    if failed:  # remembered, so that a FINISHED run of a reaped trial is known to be an orphan
        reaped = set(study.user_attrs.get(REAPED_ATTR, []))
        study.set_user_attr(REAPED_ATTR, sorted(reaped | {t.number for t in failed}))
    return failed


def count(study: optuna.Study, *states: TrialState) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


# -- worker processes ------------------------------------------------------------------------------
MAX_WORKERS = 32  # worker processes of one command (each is a ~280 MB process)


def run_workers(target: Callable[..., Any], jobs: Sequence[tuple[Any, ...]]) -> list[int]:
    """Run `target(*job)` in one new process per job and wait for all; their exit codes.

    The workers are children of the command (`harness.core.processes`): spawned (no state
    inherited, nothing on the command line), deaf to Ctrl-C, stopped by this process when
    it is interrupted or terminated, dead with it if it is killed. A worker that stops on an
    anticipated error (a full disk, a sweep whose every trial fails) raises its one line
    here."""
    with Children() as children:
        for k, job in enumerate(jobs):
            children.start(target, job, name=f"worker-{k}")
        return children.wait()


def close_orphan_runs(study: optuna.Study, tracker: Any, parent_id: str,
                      marks: Mapping[str, str] | None = None) -> int:
    """MLflow child runs that their trial's worker left behind when it died: KILLED.

    A RUNNING run whose trial is no longer RUNNING (killed while computing), and a FINISHED
    run whose trial was reaped (killed after the run was written, before the trial was told:
    the row is computed again, and only the new run counts; a trial that failed on its own,
    e.g. a NaN objective, keeps its run). The trial is found by the child's `trial` tag, so
    a worker killed between opening the child and recording its run id leaves no stray run.
    `marks`: the tags (a missing one reads as "") that tell this study's runs from those of
    other studies under the same parent (a cross-validated sweep's folds)."""
    state = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    reaped = set(study.user_attrs.get(REAPED_ATTR, []))
    closed = 0
    for run in tracker.children(parent_id):
        number = run.data.tags.get("trial")
        if number is None or any(run.data.tags.get(k, "") != v for k, v in (marks or {}).items()):
            continue
        trial_state = state.get(int(number))
        if (run.info.status == "RUNNING" and trial_state != TrialState.RUNNING) or (
                run.info.status == "FINISHED" and trial_state == TrialState.FAIL and int(number) in reaped):
            tracker.set_tags(run.info.run_id, {"granalign.orphan": f"trial {number} {trial_state.name if trial_state else 'gone'}"})
            tracker.finish(run.info.run_id, "KILLED")
            closed += 1
    return closed


# -- the worker loop tables and sweeps share ------------------------------------------------------
class StudyWorker:
    """Claim a trial under the study's lock, keep its heartbeat while computing it, then tell
    its result or fail it: the loop every table-row and sweep-trial worker runs.

    A subclass says what is due (`claim`: a RUNNING trial of this process and what it is,
    or None when nothing is left) and how to compute it (`compute`, which tells the study
    itself); an exception in `compute` fails the trial with its reason (`fail`), and the
    loop goes on. The tracker's pending MLflow writes are flushed when the loop ends.
    """

    study: optuna.Study
    tracker: Any

    def claim(self) -> tuple[optuna.Trial, Any] | None:
        raise NotImplementedError

    def compute(self, t: optuna.Trial, what: Any) -> str | None:
        """Compute and tell the trial; return its MLflow run id as soon as it has one (so
        that a failure is logged to it), or None. Raise to fail the trial."""
        raise NotImplementedError

    def open_failed_run(self, t: optuna.Trial, what: Any, reason: str) -> str | None:
        """An MLflow run for a trial that failed before it had one (None: none is made)."""
        return None

    def run(self) -> int:
        done = 0
        beat = Heartbeat()
        try:
            while (claimed := self.claim()) is not None:
                t, what = claimed
                with beat.running(t):
                    self._one(t, what)
                done += 1
        finally:
            beat.stop()
            self.tracker.drain()
        return done

    def _one(self, t: optuna.Trial, what: Any) -> None:
        self._run_id: str | None = None
        try:
            self.compute(t, what)
        except Exception as e:  # the trial fails, the study goes on (any number of workers)
            self.fail(t, what, e)

    def started(self, run_id: str) -> None:
        """Called by `compute` once the trial's MLflow run exists."""
        self._run_id = run_id

    def fail(self, t: optuna.Trial, what: Any, error: Exception) -> None:
        """The trial FAIL with its reason, its MLflow run FAILED with the same."""
        reason = Failed.from_error(error).reason
        t.set_user_attr("error", reason)
        run_id = self._run_id or self.open_failed_run(t, what, reason)
        if run_id is not None:
            self.tracker.set_tags(run_id, {"status": "failed", "error": reason})
            self.tracker.finish(run_id, "FAILED")
        self.study.tell(t, state=TrialState.FAIL)
