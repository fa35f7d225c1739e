"""Paper tables as Optuna studies: one trial per row, computed once, tracked in MLflow.

A table is a study whose trials are its rows (param `row`). `run_table` finds the rows the
cache can feed (the others become `missing: ...` cells and one MLflow child run each, once)
and the rows without a COMPLETE trial of the current config hash, and starts workers (in
this process, or several processes). A worker (`RowWorker`, the loop of
`harness.runner.studies.StudyWorker`) claims the next due row under the study's lock
(`Study.enqueue_trial` + `Study.ask`), computes it outside the lock and tells the result; a
row that raises becomes a FAIL trial whose error is the cell (`failed: ...`), the same with
one worker or many. A second run of a table computes nothing and only re-renders it; a
rerun after a failure or a kill retries the failed rows only, and closes the MLflow runs
that dead workers left RUNNING.

Every row is a nested MLflow child run under one parent run per table, which always ends
(FINISHED, or FAILED when the table run itself raised).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from harness.builder.metering import efficiency_summary
from harness.config.experiment import ExperimentConfig
from harness.config.settings import Settings
from harness.config.table import TableSpec, load_table
from harness.core.errors import DataFileMissing
from harness.core.faults import fault_point
from harness.core.results import Failed, Missing, MissingInputs, Outcome, Running, SameAs
from harness.data.spec import source_digest
from harness.eval.bootstrap import save_per_query
from harness.eval.protocols import PerQuery, brief
from harness.method.sources import Prepared
from harness.method.substitutions import parse_substitutions
from harness.report.tracking import (
    Tracker,
    check_tracking_uri,
    evaluator_key,
    flatten_metrics,
    metric_key,
    provenance_tags,
    study_tracker,
)
from harness.runner import studies
from harness.runner.trial import (
    SUBSTITUTIONS_TAG,
    Pools,
    get_or_substitute,
    ground_truth_gap,
    trial,
)
from harness.tables import stats
from harness.tables.render import log_row_artifacts, render_all, write_table
from harness.tables.rows import effective_spec, primary_metric, row_configs, table_study_name


@dataclass
class TableRun:
    spec: TableSpec
    results: dict[str, Outcome]
    rendered: dict[str, str]
    computed: int
    reused: int
    seconds: float
    study: str
    parent_run_id: str | None = None


def _unavailable(err: Exception, dataset: str) -> Missing | None:
    """The `Missing` a row shows when its inputs are absent; None for any other error."""
    if isinstance(err, MissingInputs):
        return err.as_missing()
    if isinstance(err, DataFileMissing):
        return Missing(f"dataset {dataset}", hint=str(err))
    return None


def _complete_rows(study: optuna.Study, configs: Mapping[str, ExperimentConfig]) -> dict[str, Any]:
    """row -> its latest COMPLETE trial whose config hash equals the row's current one."""
    out: dict[str, Any] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        name = t.params.get("row")
        if name in configs and t.user_attrs.get("config_hash") == configs[name].hash():
            out[name] = t
    return out


# -- the worker --------------------------------------------------------------------------------------
class RowWorker(studies.StudyWorker):
    """Claims due rows of a table study one at a time, computes and logs them."""

    def __init__(self, table: str, settings: Settings, study_name: str, parent_id: str,
                 table_run: str, configs: Mapping[str, ExperimentConfig]) -> None:
        self.spec = load_table(table)
        self.settings = settings
        self.choices = list(row_configs(self.spec, settings))  # the param's choices: every row
        self.configs = dict(configs)  # the rows this table run computes (as run), in table order
        self.rows = list(configs)
        self.pools = Pools(settings)
        self.url = studies.storage_url(settings.storage)
        self.study = optuna.load_study(study_name=study_name, storage=studies.open_storage(self.url))
        self.study_name = study_name
        self.parent_id = parent_id
        self.table_run = table_run
        self.tracker = study_tracker("table", self.spec.id, settings.tracking_uri, background=True)

    def _due(self, row: str, trials: list[Any]) -> bool:
        """Not complete (current hash), not running, not failed in this table run."""
        h = self.configs[row].hash()
        for t in trials:
            if t.params.get("row", (t.system_attrs.get("fixed_params") or {}).get("row")) != row:
                continue
            if t.state == TrialState.COMPLETE and t.user_attrs.get("config_hash") == h:
                return False
            if t.state in (TrialState.RUNNING, TrialState.WAITING):
                return False
            if t.state == TrialState.FAIL and t.user_attrs.get("table_run") == self.table_run:
                return False
        return True

    def claim(self) -> tuple[optuna.Trial, str] | None:
        """The next due row as a RUNNING trial of this process, or None when none is left."""
        with studies.study_lock(self.url, self.study_name):
            studies.reap_dead_trials(self.study)
            while True:
                trials = self.study.get_trials(deepcopy=False)
                if not any(t.state == TrialState.WAITING for t in trials):
                    row = next((r for r in self.rows if self._due(r, trials)), None)
                    if row is None:
                        return None
                    self.study.enqueue_trial({"row": row}, user_attrs={
                        "config_hash": self.configs[row].hash(), "table_run": self.table_run})
                t = self.study.ask()
                row = t.suggest_categorical("row", self.choices)
                if t.user_attrs.get("table_run") == self.table_run and row in self.rows:
                    studies.claim(t)
                    return t, row
                # a queue entry left by a process that died between enqueue and ask
                t.set_user_attr("error", "stale queue entry")
                self.study.tell(t, state=TrialState.FAIL)

    def compute(self, t: optuna.Trial, row: str) -> None:
        cfg = self.configs[row]
        fault_point("table-row:start", row)  # tests make a row fail here
        pool = self.pools(cfg.dataset)
        prep = pool.get(cfg)
        per_query: PerQuery = {}
        res = trial(prep, cfg, return_predictions=self.settings.artifacts,
                    highlights=any(k.startswith("HL-") for k in self.spec.columns.values()),
                    per_query=per_query)
        pq_path = stats.per_query_path(self.settings, self.study_name, row, cfg)
        save_per_query(pq_path, per_query, [q.qid for q in prep.queries],
                       prep.fingerprint)  # what the table's intervals and tests resample
        if not self.settings.artifacts:
            res = {"metrics": res}
        metrics = brief(res["metrics"])
        if self.spec.kind == "efficiency":
            eff = efficiency_summary(pool.cache, prep.spec, len(prep.queries))
            if isinstance(eff, Missing):
                t.set_user_attr("efficiency_missing", eff.label)
            else:
                metrics.update(eff)
        t.set_user_attr("cache_fingerprint", prep.fingerprint)
        t.set_user_attr("metrics", metrics)
        run_id = self._open_run(t, row, cfg, prep.fingerprint)
        self.started(run_id)
        t.set_user_attr("mlflow_run_id", run_id)
        fault_point("table-row:computed")  # tests kill here: a RUNNING trial and MLflow run
        self._log(run_id, prep, res, metrics)
        self.tracker.drain()  # the row's run is written before its trial is COMPLETE
        fault_point("table-row:written")  # tests kill here: a FINISHED run, a RUNNING trial
        self.study.tell(t, float(metrics.get(primary_metric(self.spec), 0.0)))

    def open_failed_run(self, t: optuna.Trial, row: str, reason: str) -> str:
        return self._open_run(t, row, self.configs[row], "", {"status": "failed", "error": reason})

    def _open_run(self, t: optuna.Trial, row: str, cfg: ExperimentConfig, fingerprint: str,
                  extra: Mapping[str, Any] | None = None) -> str:
        tags = {**cfg.tags, **provenance_tags(cfg.hash(), fingerprint, cfg.dataset, {  # the config's tags, ours win
            "table": self.spec.id, "row": row, "status": "ok", "seed": cfg.seed, "trial": t.number,
            **(extra or {})})}
        run_id = self.tracker.child(self.parent_id, row, "row", cfg.flat_params(), tags)
        ds = self.pools(cfg.dataset).dataset(cfg.dataset, cfg.limit)
        self.tracker.log_dataset(run_id, ds.label, source_digest(ds), ds.source)
        return run_id

    def _log(self, run_id: str, prep: Prepared, res: dict[str, Any], metrics: Mapping[str, float]) -> None:
        flat = flatten_metrics(res["metrics"])
        flat.update({metric_key(k): float(v) for k, v in metrics.items()})
        self.tracker.log_metrics(run_id, flat)
        if self.settings.artifacts:
            log_row_artifacts(self.tracker, run_id, prep, res)
        self.tracker.finish(run_id)


def _row_worker_main(table: str, settings: Settings, study: str, parent_id: str, table_run: str,
                     configs: Mapping[str, ExperimentConfig]) -> None:
    RowWorker(table, settings, study, parent_id, table_run, configs).run()


# -- the table ----------------------------------------------------------------------------------------
def run_table(table: str, settings: Settings, echo: bool = True) -> TableRun:
    """Fill a paper table: compute what the cache supports, mark the rest missing, log."""
    t0 = time.perf_counter()
    spec = load_table(table)
    configs = row_configs(spec, settings)
    name = table_study_name(spec, settings)
    url = studies.storage_url(settings.storage)
    check_tracking_uri(settings.tracking_uri)  # both stores checked before either is created
    study = optuna.create_study(study_name=name, storage=studies.open_storage(url),
                                direction="maximize", load_if_exists=True)
    tracker = study_tracker("table", spec.id, settings.tracking_uri)
    parent_id = tracker.parent(
        name, f"table{spec.id}",
        {"table": spec.id, "title": spec.title, "overrides": json.dumps(settings.identity(), sort_keys=True),
         "dataset": ",".join(sorted({c.dataset for c in configs.values()})),
         **({SUBSTITUTIONS_TAG: ", ".join(settings.substitutions)} if settings.substitutions else {})},
    )
    try:
        run = _fill_table(spec, settings, configs, study, name, url, tracker, parent_id, t0)
    except BaseException:
        with contextlib.suppress(Exception):  # the error that ended the table is the one to report
            tracker.finish(parent_id, "FAILED")
        raise
    elsewhere = sum(isinstance(r, Running) for r in run.results.values())
    if not elsewhere:  # else the process computing those rows ends the parent run
        tracker.finish(parent_id)
    if echo:
        print(run.rendered["md"])
        missing = sum(isinstance(r, Missing) for r in run.results.values())
        failed = sum(isinstance(r, Failed) for r in run.results.values())
        print(f"\ntable {spec.id}: {run.computed} rows computed, {run.reused} reused, {missing} missing, "
              f"{failed} failed{f', {elsewhere} running elsewhere' if elsewhere else ''}; {run.seconds:.1f} s; "
              f"study {name}; MLflow parent run {parent_id}")
    return run


def _availability(configs: Mapping[str, ExperimentConfig], settings: Settings,
                  pools: Pools) -> tuple[dict[str, ExperimentConfig], dict[str, Missing]]:
    """Which rows can run (as configured, or under a declared substitution: the config as
    run) and which cannot (why): a cheap look at the cache, before any trial."""
    subs = parse_substitutions(settings.substitutions)
    missing: dict[str, Missing] = {}
    used: dict[str, ExperimentConfig] = {}
    for row, cfg in configs.items():
        try:
            _, used[row] = get_or_substitute(pools(cfg.dataset), cfg, subs)
            gap = ground_truth_gap(pools(cfg.dataset).dataset(cfg.dataset, cfg.limit))
        except Exception as e:
            gap = _unavailable(e, cfg.dataset)
            if gap is None:
                raise
        if gap is not None:
            missing[row] = gap
            used.pop(row, None)
    return used, missing


def _same_computations(used: Mapping[str, ExperimentConfig]) -> dict[str, SameAs]:
    """Rows that a substitution made the same computation as an earlier row."""
    substituted = {r for r, c in used.items() if SUBSTITUTIONS_TAG in c.tags}
    same: dict[str, SameAs] = {}
    first: dict[str, str] = {}  # config hash -> the first row that computes it
    for row, cfg in used.items():
        earlier = first.setdefault(cfg.hash(), row)
        if earlier != row and {row, earlier} & substituted:
            same[row] = SameAs(earlier)
    return same


def _compute_rows(spec: TableSpec, settings: Settings, name: str, url: str, parent_id: str,
                  study: optuna.Study, todo: Mapping[str, ExperimentConfig]) -> None:
    """The rows in `todo`, by one worker in this process or `settings.workers` processes."""
    table_run = uuid.uuid4().hex
    if settings.workers <= 1:
        RowWorker(str(spec.path), settings, name, parent_id, table_run, todo).run()
        return
    jobs = [(str(spec.path), settings, name, parent_id, table_run, todo)] * settings.workers
    codes = studies.run_workers(_row_worker_main, jobs)
    if any(codes):
        print(f"warning: table workers exited with {codes}", flush=True)
    with studies.study_lock(url, name):
        studies.reap_dead_trials(study)


def _outcomes(configs: Mapping[str, ExperimentConfig], done: Mapping[str, Any], missing: Mapping[str, Missing],
              same: Mapping[str, SameAs], study: optuna.Study) -> dict[str, Outcome]:
    """Every row's cell: its metrics, why it is missing, the row it equals, that another
    process is computing it right now, or why it failed."""
    results: dict[str, Outcome] = {}
    trials = study.get_trials(deepcopy=False)
    for row in configs:
        if row in done:
            results[row] = done[row].user_attrs["metrics"]
        elif row in missing:
            results[row] = missing[row]
        elif row in same:
            results[row] = same[row]
        elif (elsewhere := _running_elsewhere(row, trials)) is not None:
            results[row] = elsewhere
        else:
            failed = [t for t in trials if t.params.get("row") == row and t.state == TrialState.FAIL]
            why = failed[-1].user_attrs.get("error") or studies.worker_gone(failed[-1]) if failed else ""
            results[row] = Failed(why or "not run (no worker reached it)")
    return results


def _running_elsewhere(row: str, trials: list[Any]) -> Running | None:
    """A row another process (a concurrent run of the table) holds: a RUNNING trial whose
    worker lives, or one it enqueued and has not taken yet."""
    for t in trials:
        if t.state == TrialState.RUNNING and t.params.get("row") == row and not studies.worker_gone(t):
            w = studies.worker_of(t)
            return Running(f"pid {w.get('pid', '?')} on {w.get('host', '?')}")
        if t.state == TrialState.WAITING and (t.system_attrs.get("fixed_params") or {}).get("row") == row:
            return Running("queued by another process")
    return None


def _fill_table(spec: TableSpec, settings: Settings, configs: Mapping[str, ExperimentConfig],
                study: optuna.Study, name: str, url: str, tracker: Tracker, parent_id: str,
                t0: float) -> TableRun:
    with studies.study_lock(url, name):
        studies.reap_dead_trials(study)
    studies.close_orphan_runs(study, tracker, parent_id)
    pools = Pools(settings)
    used, missing = _availability(configs, settings, pools)
    same = _same_computations(used)
    compute = {r: c for r, c in used.items() if r not in same}
    done_before = _complete_rows(study, compute)
    todo = {r: c for r, c in compute.items() if r not in done_before}
    if todo:
        _compute_rows(spec, settings, name, url, parent_id, study, todo)
    studies.close_orphan_runs(study, tracker, parent_id)
    done = _complete_rows(study, compute)
    results = _outcomes(configs, done, missing, same, study)

    _log_unavailable_rows(tracker, parent_id, spec, configs, {**missing, **same})
    _log_parent_datasets(tracker, parent_id, pools, compute)
    # the table's reference row, or the row it is the same computation as (a substitution)
    reference = same[spec.reference].row if spec.reference in same else spec.reference
    per_query = stats.row_per_query(spec, settings, name, {r: compute[r] for r in done}, done, pools)
    unc = stats.uncertainty(spec, per_query, reference=reference)
    if unc is not None:
        _log_uncertainty(tracker, parent_id, done, unc)
    subs = parse_substitutions(settings.substitutions)
    shown = dataclasses.replace(effective_spec(spec, settings),
                                substituted=frozenset(r for r, c in used.items() if SUBSTITUTIONS_TAG in c.tags),
                                substitutions=tuple((str(x), x.reason) for x in subs))
    rendered = render_all(shown, results, unc)
    elsewhere = sorted(r for r, v in results.items() if isinstance(v, Running))
    if elsewhere:  # not the table yet: shown, never written or logged as it
        rendered["md"] += (f"\n\nRows {', '.join(elsewhere)} are being computed by another process: this "
                           "rendering is not the table and was not written or logged; run the command again "
                           "when that process has finished.")
    else:
        write_table(spec, rendered, settings, tracker, parent_id, results)
    computed = len([r for r in todo if r in done])
    return TableRun(spec, results, rendered, computed, len(done) - computed,
                    time.perf_counter() - t0, name, parent_id)


# -- MLflow ---------------------------------------------------------------------------------------------
def _log_uncertainty(tracker: Tracker, parent_id: str, done: Mapping[str, Any], unc: stats.Uncertainty) -> None:
    """Each row's intervals (and p-values) as metrics of its MLflow run (a run of this
    parent: a row computed while tracking elsewhere has no run here to log to)."""
    mine = {r.info.run_id for r in tracker.children(parent_id)}
    for row in unc.cells:
        run_id = done[row].user_attrs.get("mlflow_run_id")
        if run_id not in mine:
            continue
        tracker.log_metrics(run_id, stats.metrics_of(unc, row))
        tracker.set_tags(run_id, stats.tags_of(unc))
        tracker.finish_pending(run_id)


def _log_parent_datasets(tracker: Tracker, parent_id: str, pools: Pools,
                         configs: Mapping[str, ExperimentConfig]) -> None:
    """The table's datasets as inputs of its parent run too (the parent's Dataset column),
    once per parent."""
    have = {d.dataset.name for d in tracker.client.get_run(parent_id).inputs.dataset_inputs}
    for name, limit in sorted({(c.dataset, c.limit) for c in configs.values()}, key=str):
        ds = pools(name).dataset(name, limit)
        if ds.label not in have:
            have.add(ds.label)
            tracker.log_dataset(parent_id, ds.label, source_digest(ds), ds.source)


def _log_unavailable_rows(tracker: Tracker, parent_id: str, spec: TableSpec,
                          configs: Mapping[str, ExperimentConfig],
                          rows: Mapping[str, Missing | SameAs]) -> None:
    """One child run per row without its own numbers (missing, or the same computation as
    another row) and reason, logged once per parent."""
    seen = {
        (r.data.tags.get("row"), r.data.tags.get("missing") or r.data.tags.get("same_as"))
        for r in tracker.children(parent_id)
        if r.data.tags.get("status") in ("missing", "same_as")
    }
    for row, why in rows.items():
        reason = why.label if isinstance(why, Missing) else why.row
        if (row, reason) in seen:
            continue
        cfg = configs[row]
        extra = ({"status": "missing", "missing": reason} if isinstance(why, Missing)
                 else {"status": "same_as", "same_as": reason})
        tags = provenance_tags(cfg.hash(), "", cfg.dataset, {"table": spec.id, "row": row, **extra})
        run_id = tracker.child(parent_id, row, "row", cfg.flat_params(), tags)
        tracker.finish(run_id)


def table_from_mlflow(table: str, settings: Settings, echo: bool = True) -> dict[str, str]:
    """Render a table from what MLflow holds alone: the latest parent run and its children."""
    spec = load_table(table)
    name = table_study_name(spec, settings)
    tracker = study_tracker("table", spec.id, settings.tracking_uri, create=False)  # reads only: creates no store, no experiment
    parent = tracker.find_parent(name)
    if parent is None:
        raise LookupError(f"no MLflow parent run for table {spec.id} (study {name}) at {tracker.uri}")
    results: dict[str, Outcome] = {}
    substituted: set[str] = set()
    finished: dict[str, Any] = {}
    for run in sorted(tracker.children(parent), key=lambda r: r.info.start_time):
        row = run.data.tags.get("row")
        if row is None:
            continue
        status = run.data.tags.get("status")
        if status == "missing":
            results.setdefault(row, Missing.from_label(run.data.tags.get("missing", "missing: ?")))
        elif status == "same_as":
            results.setdefault(row, SameAs(run.data.tags["same_as"]))
        elif run.info.status == "FINISHED":
            results[row] = {evaluator_key(k): v for k, v in run.data.metrics.items()}
            finished[row] = run
            if SUBSTITUTIONS_TAG in run.data.tags:
                substituted.add(row)
        elif run.info.status == "FAILED" and not isinstance(results.get(row), Mapping):
            results[row] = Failed(run.data.tags.get("error", "failed"))
    subs = parse_substitutions(settings.substitutions)
    shown = dataclasses.replace(effective_spec(spec, settings), substituted=frozenset(substituted),
                                substitutions=tuple((str(x), x.reason) for x in subs))
    rendered = render_all(shown, results, stats.from_runs(spec, finished))
    if echo:
        print(rendered["md"])
    return rendered
