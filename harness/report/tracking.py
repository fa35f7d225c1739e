"""MLflow tracking through the client API: parent runs per table or sweep, nested children.

Runs are opened by hand (not Optuna's deprecated callback) with `MlflowClient`, which is
safe from several worker processes: each child run is created with the parent's id as
its `mlflow.parentRunId` tag. A parent is found again by its `granalign.study` tag, so a
resumed or repeated table adds to the same parent instead of starting a new one.

MLflow metric names cannot contain `@`; `metric_key` writes `R1@0.5` as `R1_at_0.5`
and `evaluator_key` reads it back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import multiprocessing
import os
import queue
import re
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.core.errors import HarnessError
from harness.core.faults import fault_point
from harness.core.io import canonical_json, sha256_hex
from harness.core.processes import Children, pid_alive
from harness.core.provenance import git_commit, package_versions
from harness.core.stores import (
    MLFLOW_SCHEMES,
    StoreError,
    check_store_url,
    file_lock,
    lock_beside,
    probe_server,
    redact,
    sqlite_path,
    store_call,
)
from harness.data.spec import dataset_spec

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
CLASSIC_ML_KIND = "custom_model_development"
TABLE_TAG = "granalign.table_artifact"  # <stem>.<version> -> "<path>:<digest of its rows>"
STUDY_TAG = "granalign.study"
KIND_TAG = "granalign.kind"  # parent | row | trial


def tracking_uri(uri: str | None = None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def check_tracking_uri(uri: str | None = None, must_exist: bool = False) -> str:
    """The tracking URI (given, `$MLFLOW_TRACKING_URI` or the default), checked before any
    store is touched: a scheme MLflow 3 serves, and for SQLite a usable file."""
    return check_store_url(tracking_uri(uri), "MLflow tracking store", MLFLOW_SCHEMES, must_exist)


def metric_key(name: str) -> str:
    return name.replace("@", "_at_")


def evaluator_key(name: str) -> str:
    return name.replace("_at_", "@")


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Every number of an evaluator result, as flat MLflow-safe keys.

    The `brief` keys keep their names (`MR-full-mAP`); nested ones are joined with `/`
    (`full/MR-mAP/0.55`)."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        key = k if (prefix in ("", "brief/")) else f"{prefix}{k}"
        if k == "brief" and isinstance(v, Mapping):
            out.update(flatten_metrics(v, "brief/"))
        elif isinstance(v, Mapping):
            out.update(flatten_metrics(v, f"{prefix}{k}/"))
        elif isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v)):
            out[metric_key(key)] = float(v)
    return out


def _artifact_location(uri: str, experiment: str) -> str | None:
    """Beside a SQLite store, artifacts go to `mlartifacts/` next to the database file."""
    m = re.match(r"sqlite:///(.+)$", uri)
    if not m:
        return None
    db = Path(m.group(1)).expanduser().resolve()
    safe = re.sub(r"[^\w.-]+", "_", experiment)
    return (db.parent / "mlartifacts" / safe).as_uri()


@dataclass
class _Pending:
    """What a child run will log in one batch when it is finished (and, for a deferred run,
    what it is created with)."""

    params: dict[str, str] = field(default_factory=dict)
    metrics: list[tuple[str, float, int, int]] = field(default_factory=list)  # key, value, ms, step
    tags: dict[str, str] = field(default_factory=dict)
    create: tuple[str, dict[str, str]] | None = None  # (run name, tags) of a deferred run
    inputs: list[dict[str, str]] = field(default_factory=list)  # datasets (MLflow inputs)


def study_tracker(kind: str, name: str, uri: str | None, background: bool = False, sink: Any = None,
                  create: bool = True) -> Tracker:
    """The MLflow experiment of a table (`kind` "table") or a sweep: `<kind>-<name>`."""
    return Tracker(f"{kind}-{name}", uri, background, sink=sink, create=create)


class Tracker:
    """One MLflow experiment (a table or a sweep) and its parent/child runs.

    A child run costs one synchronous call (`create_run`, with its tags); its params,
    metrics and tags are buffered and sent in one `log_batch` when it is finished, followed
    by `set_terminated`. With `background=True` those two calls run on a writer thread, off
    the trial's path: `drain()` waits for them (a worker drains before it exits). MLflow's
    SQLite store takes 10-30 ms a call, which would otherwise be most of a sweep trial.
    """

    def __init__(self, experiment: str, uri: str | None = None, background: bool = False,
                 sink: Any = None, create: bool = True) -> None:
        """`create=False`: only read what is there; a store or experiment that does not exist
        is a LookupError, and nothing is created."""
        self.uri = check_tracking_uri(uri, must_exist=not create)
        db = sqlite_path(self.uri)
        if db is not None and not create:  # a reader must not make MLflow's schema in another file
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            try:
                has = con.execute("SELECT 1 FROM sqlite_master WHERE name='experiments'").fetchone()
            finally:
                con.close()
            if not has:
                raise StoreError(f"{db}: not an MLflow tracking store (no experiments table)")
        # MLflow creates (or migrates) an SQLite store's schema on first use: two processes
        # doing it at once fail on `_alembic_tmp_experiments`, so it happens under a lock
        with file_lock(lock_beside(db) if create else None):  # a reader creates no lock file
            try:
                self.client = mlflow_client(self.uri)
                exp = self.client.get_experiment_by_name(experiment)
            except Exception as e:
                if type(e).__name__ in ("DatabaseError", "OperationalError", "MlflowException"):
                    raise StoreError(f"{db or redact(self.uri)}: the MLflow tracking store cannot be opened "
                                     f"({str(e).splitlines()[0][:300]})") from None
                raise
        if exp is None and not create:
            raise LookupError(f"no MLflow experiment {experiment!r} at {self.uri}")
        if exp is None:
            try:
                # the classic-ML kind: MLflow 3's UI then opens the experiment on its runs table
                self.experiment_id = self.client.create_experiment(
                    experiment, artifact_location=_artifact_location(self.uri, experiment),
                    tags={EXPERIMENT_KIND_TAG: CLASSIC_ML_KIND},
                )
            except Exception:  # created meanwhile by another worker
                exp = self.client.get_experiment_by_name(experiment)
                if exp is None:
                    raise
                self.experiment_id = exp.experiment_id
        else:
            self.experiment_id = exp.experiment_id
            if create and EXPERIMENT_KIND_TAG not in exp.tags:  # made by an older version, or by hand
                self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND_TAG, CLASSIC_ML_KIND)
        self.experiment = experiment
        self._pending: dict[str, _Pending] = {}
        self._studies: dict[str, str] = {}  # parent run id -> its study tag
        self._queue: queue.Queue[Any] | None = None
        self._errors: list[BaseException] = []
        self._sink: RunSink | None = sink  # a RunWriter's: finished runs are written by its process
        if background and sink is None:
            self._queue = queue.Queue()
            threading.Thread(target=self._write, daemon=True, name="mlflow-writer").start()

    # -- runs ---------------------------------------------------------------------------------
    def find_parent(self, study: str) -> str | None:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{STUDY_TAG}` = '{study}' and tags.`{KIND_TAG}` = 'parent'",
            max_results=1,
            order_by=["attributes.start_time DESC"],
        )
        return runs[0].info.run_id if runs else None

    def parent(self, study: str, name: str, tags: Mapping[str, str]) -> str:
        """The parent run of `study`, created on first use and reused afterwards."""
        run_id = self.find_parent(study)
        if run_id is None:
            run = self.client.create_run(
                self.experiment_id, run_name=name,
                tags={**source_tags(), **tags, STUDY_TAG: study, KIND_TAG: "parent"},
            )
            run_id = run.info.run_id
        return run_id

    def child(
        self,
        parent_id: str,
        name: str,
        kind: str,
        params: Mapping[str, str],
        tags: Mapping[str, str],
        defer: bool = False,
    ) -> str:
        """A nested run; `params` are sent with its other data at `finish`.

        The run exists (RUNNING) from now on, and the id returned is MLflow's; with `defer`
        it is created only at `finish` (on the writer thread in background mode) and the id
        returned is a local handle: a sweep trial then spends no MLflow call at all, and a
        trial whose worker dies leaves no run behind."""
        if parent_id not in self._studies:
            self._studies[parent_id] = self.client.get_run(parent_id).data.tags.get(STUDY_TAG, "")
        all_tags = {**{k: str(v)[:5000] for k, v in tags.items()}, "mlflow.parentRunId": parent_id,
                    STUDY_TAG: self._studies[parent_id], KIND_TAG: kind}
        pending = _Pending(params={k: str(v)[:6000] for k, v in params.items()})
        if defer:
            run_id = f"deferred:{uuid.uuid4().hex}"
            pending.create = (name, all_tags)
        else:
            run_id = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags).info.run_id
        self._pending[run_id] = pending
        return run_id

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        self._buffer(run_id).params.update({k: str(v)[:6000] for k, v in params.items()})

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        self._buffer(run_id).metrics.extend((k, float(v), now, step) for k, v in metrics.items())

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        self._buffer(run_id).tags.update({k: str(v)[:5000] for k, v in tags.items()})

    def finish_pending(self, run_id: str) -> None:
        """Send what a run buffered without ending it (a parent run, open for its children)."""
        pending = self._pending.pop(run_id, _Pending())
        existing = self.client.get_run(run_id).data.params  # params are immutable once logged
        pending.params = {k: v for k, v in pending.params.items() if k not in existing}
        _log_buffered(self.client, run_id, pending)

    def log_dataset(self, run_id: str, name: str, digest: str, source: str, context: str = "eval") -> None:
        """The run's dataset as an MLflow input (the Dataset column of the runs table)."""
        self._buffer(run_id).inputs.append({"name": name, "digest": digest, "source": source, "context": context})

    def log_table(self, run_id: str, rows: list[dict[str, Any]], path: str) -> str | None:
        """A rendered table as an MLflow table artifact (shown as a table in the UI).

        MLflow appends to a table artifact that exists, so a table rendered again on the
        same parent run must not reuse the file: an unchanged table is not logged again, a
        changed one goes to the next version (`table3.json`, `table3.v2.json`, ...). Returns
        the path logged, or None when the run already holds this table."""
        import pandas as pd  # lazy: heavy optional (pandas, with mlflow)

        digest = sha256_hex(canonical_json(rows))[:16]
        run = self.client.get_run(run_id)
        stem, ext = path.rsplit(".", 1)
        logged = [t for k, t in run.data.tags.items() if k.startswith(f"{TABLE_TAG}.{stem}")]
        if any(t.endswith(f":{digest}") for t in logged):
            return None
        target = path if not logged else f"{stem}.v{len(logged) + 1}.{ext}"
        self.client.log_table(run_id, data=pd.DataFrame(rows), artifact_file=target)
        self.client.set_tag(run_id, f"{TABLE_TAG}.{stem}.{len(logged) + 1}", f"{target}:{digest}")
        return target

    def _buffer(self, run_id: str) -> _Pending:
        return self._pending.setdefault(run_id, _Pending())

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        """Send what the run buffered (one batch) and end it with `status`."""
        pending = self._pending.pop(run_id, _Pending())
        if self._sink is not None:
            self._sink.queue.put((self.experiment_id, run_id, pending, status))
        elif self._queue is None:
            self._send(run_id, pending, status)
        else:
            self._queue.put((run_id, pending, status))

    def _send(self, run_id: str, pending: _Pending, status: str) -> None:
        _send_run(self.client, self.experiment_id, run_id, pending, status)

    def _write(self) -> None:
        assert self._queue is not None
        while True:
            run_id, pending, status = self._queue.get()
            try:
                self._send(run_id, pending, status)
            except BaseException as e:  # reported by drain(), in the worker's thread
                self._errors.append(e)
            finally:
                self._queue.task_done()

    def drain(self) -> None:
        """Wait until every finished run has been written (background mode), or, in a worker
        process that sends them to a RunWriter, handed to it whole."""
        if self._queue is not None:
            self._queue.join()
        if self._sink is not None and multiprocessing.parent_process() is not None:
            self._sink.flush()
        errors, self._errors = self._errors, []  # raised once: the next row starts clean
        if errors:
            raise errors[0]

    def log_text(self, run_id: str, text: str, path: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / Path(path).name
            local.write_text(text, encoding="utf-8")
            folder = str(Path(path).parent) if str(Path(path).parent) != "." else None
            self.client.log_artifact(run_id, str(local), folder)

    def log_file(self, run_id: str, local: str | Path, folder: str | None = None) -> None:
        self.client.log_artifact(run_id, str(local), folder)

    def children(self, parent_id: str) -> list[Any]:
        """Every child run of a parent, page after page (a sweep may have more runs than one
        page holds; a run missed here would be written again by `backfill_runs`)."""
        out: list[Any] = []
        token = None
        while True:
            page = self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.`mlflow.parentRunId` = '{parent_id}'",
                max_results=5000, page_token=token,
            )
            out.extend(page)
            token = getattr(page, "token", None)
            if not token:
                return out


class _Client:
    """An MlflowClient whose every call goes through `store_call`: a server that does not
    answer is retried visibly for a bounded time, and a full disk, a read-only store or an
    unreachable server is one StoreError naming the store, never MLflow's chained
    tracebacks."""

    def __init__(self, uri: str) -> None:
        from mlflow.tracking import MlflowClient  # lazy: heavy optional (mlflow, 2 s)

        # MLflow logs a database error with its traceback before raising it: the raised error
        # is reported here, as one line
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
        self._uri = uri
        probe_server(STORE, uri)
        self._client = store_call(STORE, uri, lambda: MlflowClient(uri))

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            return store_call(STORE, self._uri, lambda: attr(*args, **kwargs))

        return call


STORE = "MLflow tracking store"


def mlflow_client(uri: str) -> Any:
    """The client every MLflow call of the harness goes through (see `_Client`). MLflow's
    own HTTP retries (7, with a backoff of minutes, silent) are turned off unless the user
    set them: `store_call` is the one retry policy."""
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    return _Client(uri)


def _log_buffered(client: Any, run_id: str, pending: _Pending) -> None:
    """A run's buffered params, metrics and tags in as few `log_batch` calls as MLflow's
    limits allow (100 params, 1000 metrics, 100 tags a batch; 900 metrics kept under)."""
    from mlflow.entities import Metric, Param, RunTag  # lazy: heavy optional (mlflow)

    params = [Param(k, v) for k, v in pending.params.items()]
    metrics = [Metric(k, v, ts, step) for k, v, ts, step in pending.metrics]
    tags = [RunTag(k, v) for k, v in pending.tags.items()]
    while params or metrics or tags:
        client.log_batch(run_id, params=params[:100], metrics=metrics[:900], tags=tags[:100])
        params, metrics, tags = params[100:], metrics[900:], tags[100:]


def _send_run(client: Any, experiment_id: str, run_id: str, pending: _Pending, status: str) -> None:
    """Create a deferred run, log what it buffered in batches, end it. A deferred run is
    created with every tag it buffered (one write fewer a run than a tag batch after)."""
    if pending.create is not None:
        name, tags = pending.create
        run_id = client.create_run(experiment_id, run_name=name, tags={**tags, **pending.tags}).info.run_id
        pending = dataclasses.replace(pending, tags={})
    _log_buffered(client, run_id, pending)
    if pending.inputs:
        from mlflow.entities import Dataset, DatasetInput, InputTag  # lazy: heavy optional (mlflow)

        client.log_inputs(run_id, datasets=[
            DatasetInput(Dataset(d["name"], d["digest"], "local", d["source"]),
                         [InputTag("mlflow.data.context", d["context"])]) for d in pending.inputs])
    client.set_terminated(run_id, status)


@dataclass(frozen=True)
class RunSink:
    """Where a sweep worker process sends its finished runs: the RunWriter's queue, and the
    writer's pid (a worker that ends waits for its runs to reach the writer while it lives)."""

    queue: Any
    writer_pid: int

    def flush(self) -> None:
        """A worker's last act: every run it queued goes into the pipe whole before it exits.

        A queue's feeder thread writes the runs while the worker computes; a worker that
        exited while its feeder was in the middle of a run left half a message in the pipe
        (the writer then waits forever for the rest) or the pipe's lock held. The wait ends
        when the feeder is done, or when the writer is gone (nothing reads the pipe then:
        the runs are lost, and a rerun writes them)."""
        self.queue.close()
        flushing = threading.Thread(target=self.queue.join_thread, daemon=True, name="run-sink-flush")
        flushing.start()
        while flushing.is_alive():
            flushing.join(0.5)
            if flushing.is_alive() and not pid_alive(self.writer_pid):
                self.queue.cancel_join_thread()
                return


def _write_runs(uri: str, sink: Any) -> None:
    """The RunWriter's process: write every run sent until the end marker (None)."""
    client = mlflow_client(uri)
    while (message := sink.get()) is not None:
        fault_point("mlflow-writer:run")  # tests slow the writer down here (`|sleep=S`)
        _send_run(client, *message)


WRITER_DRAIN_SECONDS = 15.0  # after an interrupt: time the writer gets to write what is queued


class RunWriter:
    """A process that writes the MLflow runs sweep workers finish.

    Writing a run to MLflow's SQLite store costs about 30 ms of Python; on the workers' own
    thread that is more than a trial. The writer runs on another core; workers hand it each
    finished run through a queue (`Tracker(sink=writer.sink)`); `close` waits until all
    are written. Runs a worker sent before it died are written too; a worker that ends
    first hands over what it queued (`RunSink.flush`). It is a child of the
    command (`harness.core.processes`): Ctrl-C does not reach it; after an interrupt it gets
    `WRITER_DRAIN_SECONDS` to write what is queued and is then stopped (a rerun writes the
    runs of finished trials it did not reach)."""

    def __init__(self, uri: str | None) -> None:
        self.children = Children()
        self.queue = self.children.ctx.Queue()
        self.process = self.children.start(_write_runs, (tracking_uri(uri), self.queue), name="mlflow-writer")
        assert self.process.pid is not None
        self.sink = RunSink(self.queue, self.process.pid)  # what workers are given

    def close(self) -> None:
        """Wait until every queued run is written; an error of the writer is raised here."""
        self.queue.put(None)
        try:
            self.children.wait()
        finally:
            self._release()
        if self.process.exitcode:
            raise HarnessError(f"the MLflow writer process ended with exit status {self.process.exitcode} "
                               "before it wrote every run; a rerun writes the runs of finished trials")

    def abort(self, seconds: float = WRITER_DRAIN_SECONDS) -> None:
        """After an interrupt or an error: let the writer write what is queued for at most
        `seconds`, then stop it. Raises nothing (the first error is the one to report)."""
        with contextlib.suppress(BaseException):
            self.queue.put(None)
            if not self.children.join(self.process, seconds):
                self.children.stop()
        self._release()

    def _release(self) -> None:
        # a queue whose reader is gone would block this process's exit on its feeder thread
        self.queue.cancel_join_thread()
        self.queue.close()


def command_line() -> str:
    """What started this run: the granalign command line (or the Python entry point), with
    any password in a URL masked (the storage URL may carry one)."""
    argv = [os.path.basename(sys.argv[0]) if sys.argv else "python", *sys.argv[1:]]
    return redact(" ".join(argv))[:5000]


def source_name() -> str:
    """The command without its paths and options (`granalign table 3`): MLflow's Source
    column shows the last path component of the source name, so a path would hide it."""
    argv = [os.path.basename(sys.argv[0]) if sys.argv else "python", *sys.argv[1:]]
    words = []
    for word in argv:
        if word.startswith("-") or "/" in word or ":" in word:
            break
        words.append(word)
    return " ".join(words)[:500]


def source_tags() -> dict[str, str]:
    """MLflow's own source tags (the runs table's Source and Version columns) and the whole
    command line."""
    return {
        "mlflow.source.type": "LOCAL",
        "mlflow.source.name": source_name(),
        "mlflow.source.git.commit": git_commit().removesuffix("+dirty"),
        "granalign.command": command_line(),
    }


def provenance_tags(
    config_hash: str, fingerprint: str, dataset: str, extra: Mapping[str, Any] | None = None
) -> dict[str, str]:
    commit = git_commit()
    # the provenance is what reproducibility needs: a config's own tags (in `extra`) cannot
    # replace it
    return {k: str(v) for k, v in (extra or {}).items()} | {
        "config_hash": config_hash,
        "cache_fingerprint": fingerprint,
        "dataset": dataset,
        "synthetic": str(dataset_spec(dataset).synthetic).lower(),
        "git_commit": commit,
        "package_versions": json.dumps(package_versions(), sort_keys=True),
        **source_tags(),
    }
