"""Paper tables as Optuna studies: one trial per row, computed once, tracked in MLflow.

A table is a study whose trials are its rows (param `row`). `run_table` finds the rows the
cache can feed (the others become `missing: ...` cells and one MLflow child run each, once)
and the rows without a COMPLETE trial of the current config hash, and starts workers (in
this process, or several processes). A worker claims the next due row under the study's
lock (`Study.enqueue_trial` + `Study.ask`: see `harness.runner.studies`), computes it
outside the lock and tells the result; a row that raises becomes a FAIL trial whose error
is the cell (`failed: ...`), the same with one worker or many. A second run of a table
computes nothing and only re-renders it; a rerun after a failure or a kill retries the
failed rows only, and closes the MLflow runs that dead workers left RUNNING.

Every row is a nested MLflow child run under one parent run per table, which always ends
(FINISHED, or FAILED when the table run itself raised).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import re
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

from harness.builder.metering import efficiency_summary
from harness.config import ExperimentConfig, load_config
from harness.core.errors import ConfigError, DataFileMissing
from harness.core.faults import fault_point
from harness.core.io import atomic_write_text, canonical_json, sha256_hex
from harness.core.results import Failed, Missing, MissingInputs, Outcome, SameAs
from harness.data.spec import dataset_spec, source_digest
from harness.eval.bootstrap import (
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    SavedPerQuery,
    compare,
    intervals,
    read_per_query,
    save_per_query,
)
from harness.eval.protocols import PerQuery, brief
from harness.eval.top1 import top1_ious
from harness.method.sources import Prepared
from harness.method.substitutions import parse_substitutions
from harness.report import plots
from harness.report.tables import TableSpec, Uncertainty, load_table, render_all, row_config
from harness.report.tracking import (
    Tracker,
    check_tracking_uri,
    evaluator_key,
    flatten_metrics,
    metric_key,
    provenance_tags,
)
from harness.runner import studies
from harness.runner.settings import DEMO_OVERRIDES, Pools, Settings
from harness.runner.trial import SUBSTITUTIONS_TAG, get_or_substitute, ground_truth_gap, trial

REFERENCE_TAG = "granalign.reference_row"  # the row a table's paired tests compare against
UNTESTED_TAG = "granalign.untested"  # why a table's rows have no paired tests ("" they have)
BOOTSTRAP_TAG = "granalign.bootstrap"  # "<resamples>/<seed>" of the intervals on a row's run

FAIL_ROWS_ENV = "GRANALIGN_TEST_FAIL_ROWS"  # test hook: comma list of rows that raise


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


def row_configs(spec: TableSpec, settings: Settings) -> dict[str, ExperimentConfig]:
    """Runnable rows -> config. `--set` overrides change the base: a key that the row sets
    itself (Table 6's `captions: blip2`) keeps the row's value. `--demo` replaces the
    dataset of every row."""
    if settings.overrides:  # checked on the base even where every row sets the key itself
        try:
            load_config(spec.repo_root / spec.base, settings.overrides)
        except ConfigError as e:
            given = " ".join(f"--set {k}={v}" for k, v in settings.overrides.items())
            raise ConfigError(f"{given}: {e}") from None
    out = {}
    for row in spec.runnable_rows():
        cfg = row_config(spec, row)
        under = {k: v for k, v in settings.overrides.items() if k not in (row.overrides or {})}
        if settings.demo:
            under.update(DEMO_OVERRIDES)
        out[row.name] = cfg.replace(**under) if under else cfg
    return out


def effective_spec(spec: TableSpec, settings: Settings) -> TableSpec:
    """The spec as run: the datasets really used, and the command line's overrides noted."""
    over = settings.resolved_overrides()
    if not over:
        return spec
    datasets = spec.datasets
    if "dataset" in over:
        label = str(over["dataset"])
        if dataset_spec(label).synthetic:
            label += " (SYNTHETIC demo data: our numbers say nothing about the paper's)"
        datasets = (label,)
    # `--set` keys apply under the rows' own overrides (row_configs): say where they did
    rows = spec.runnable_rows()
    shown, ignored = [], []
    for k, v in settings.overrides.items():
        if k == "dataset" and settings.demo:
            continue
        setting = sum(1 for r in rows if k in (r.overrides or {}))
        if setting == len(rows) and rows:
            ignored.append(f"{k}={v}")
        else:
            shown.append(f"{k}={v}" + (f" (rows that do not set {k})" if setting else ""))
    note = spec.note or ""
    if ignored:
        note = f"Not applied: {', '.join(ignored)} (every row sets it). {note}".strip()
    if shown:
        note = f"Our rows were run with {', '.join(shown)} (the paper's settings otherwise). {note}".strip()
    return dataclasses.replace(spec, datasets=datasets, note=note or None)


def table_study_name(spec: TableSpec, settings: Settings) -> str:
    over = settings.resolved_overrides()
    return f"table{spec.id}-{sha256_hex(canonical_json(over))[:8]}"


def _primary_metric(spec: TableSpec) -> str:
    return next(iter(spec.columns.values()))


def _unavailable(err: Exception, dataset: str) -> Missing | None:
    """The `Missing` a row shows when its inputs are absent; None for any other error."""
    if isinstance(err, MissingInputs):
        return err.as_missing()
    if isinstance(err, DataFileMissing):
        return Missing(f"dataset {dataset}", hint=str(err))
    return None


def _tracker(spec: TableSpec, settings: Settings, background: bool = False, create: bool = True) -> Tracker:
    return Tracker(f"table-{spec.id}", settings.tracking_uri, background, create=create)


def _complete_rows(study: optuna.Study, configs: Mapping[str, ExperimentConfig]) -> dict[str, Any]:
    """row -> its latest COMPLETE trial whose config hash equals the row's current one."""
    out: dict[str, Any] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        name = t.params.get("row")
        if name in configs and t.user_attrs.get("config_hash") == configs[name].hash():
            out[name] = t
    return out


# -- the worker --------------------------------------------------------------------------------------
class RowWorker:
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
        self.tracker = _tracker(self.spec, settings, background=True)
        self.failing = set(filter(None, os.environ.get(FAIL_ROWS_ENV, "").split(",")))

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

    def run(self) -> int:
        done = 0
        try:
            while (claimed := self.claim()) is not None:
                t, row = claimed
                with studies.heartbeat(t):
                    self.run_one(t, row)
                done += 1
        finally:
            self.tracker.drain()
        return done

    def run_one(self, t: optuna.Trial, row: str) -> None:
        cfg = self.configs[row]
        run_id = None
        try:
            if row in self.failing:
                raise RuntimeError(f"injected failure ({FAIL_ROWS_ENV})")
            pool = self.pools(cfg.dataset)
            prep = pool.get(cfg)
            per_query: PerQuery = {}
            res = trial(prep, cfg, return_predictions=self.settings.artifacts,
                        highlights=any(k.startswith("HL-") for k in self.spec.columns.values()),
                        per_query=per_query)
            pq_path = per_query_path(self.settings, self.study_name, row, cfg)
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
            t.set_user_attr("mlflow_run_id", run_id)
            fault_point("table-row:computed")  # tests kill here: a RUNNING trial and MLflow run
            self._log(run_id, prep, res, metrics)
            self.tracker.drain()  # the row's run is written before its trial is COMPLETE
            fault_point("table-row:written")  # tests kill here: a FINISHED run, a RUNNING trial
            self.study.tell(t, float(metrics.get(_primary_metric(self.spec), 0.0)))
        except Exception as e:  # the row fails, the table goes on (any number of workers)
            failed = Failed.from_error(e)
            t.set_user_attr("error", failed.reason)
            if run_id is None:
                run_id = self._open_run(t, row, cfg, "", {"status": "failed", "error": failed.reason})
            else:
                self.tracker.set_tags(run_id, {"status": "failed", "error": failed.reason})
            self.tracker.finish(run_id, "FAILED")
            self.study.tell(t, state=TrialState.FAIL)

    def _open_run(self, t: optuna.Trial, row: str, cfg: ExperimentConfig, fingerprint: str,
                  extra: Mapping[str, Any] | None = None) -> str:
        tags = provenance_tags(cfg.hash(), fingerprint, cfg.dataset, {
            "table": self.spec.id, "row": row, "status": "ok", "seed": cfg.seed, "trial": t.number,
            **{k: v for k, v in cfg.tags.items() if k == SUBSTITUTIONS_TAG}, **(extra or {})})
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


def log_row_artifacts(tracker: Tracker, run_id: str, prep: Prepared, res: dict[str, Any]) -> None:
    """Predictions, per-query top-1 results, the query-type breakdown (Fig. 7) and two
    score curves (Fig. 9) of one row."""
    rows = res["predictions"]
    iou = top1_ious(list(prep.queries), rows)
    lines = ["qid,vid,query_type,top1_start,top1_end,top1_iou,r1_0.5,r1_0.7"]
    for q, r, v in zip(prep.queries, rows, iou, strict=True):
        w = r["pred_relevant_windows"][:1]
        s, e = (w[0][0], w[0][1]) if w else ("", "")
        lines.append(f"{q.qid},{q.vid},{plots.query_type(q.query)},{s},{e},{v:.4f},{int(v >= 0.5)},{int(v >= 0.7)}")
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (d / "per_query.csv").write_text("\n".join(lines) + "\n")
        _, stats = plots.query_type_breakdown(list(prep.queries), iou, d / "query_types.png")
        (d / "query_types.json").write_text(json.dumps(stats, indent=2))
        best = int(np.argmax(iou)) if len(iou) else 0
        for k, qi in enumerate(dict.fromkeys([0, best])):
            if qi < len(rows):
                plots.score_curve(prep.queries[qi], rows[qi], d / f"score_curve_{k}_qid{prep.queries[qi].qid}.png")
        for f in sorted(d.iterdir()):
            tracker.log_file(run_id, f, "plots" if f.suffix == ".png" else None)


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
    tracker = _tracker(spec, settings)
    over = settings.resolved_overrides()
    parent_id = tracker.parent(
        name, f"table{spec.id}",
        {"table": spec.id, "title": spec.title, "overrides": json.dumps(over, sort_keys=True),
         "dataset": ",".join(sorted({c.dataset for c in configs.values()})),
         **({SUBSTITUTIONS_TAG: ", ".join(settings.substitutions)} if settings.substitutions else {})},
    )
    try:
        run = _fill_table(spec, settings, configs, study, name, url, tracker, parent_id, t0)
    except BaseException:
        tracker.finish(parent_id, "FAILED")
        raise
    tracker.finish(parent_id)
    if echo:
        print(run.rendered["md"])
        missing = sum(isinstance(r, Missing) for r in run.results.values())
        failed = sum(isinstance(r, Failed) for r in run.results.values())
        print(f"\ntable {spec.id}: {run.computed} rows computed, {run.reused} reused, {missing} missing, "
              f"{failed} failed; {run.seconds:.1f} s; study {name}; MLflow parent run {parent_id}")
    return run


def _fill_table(spec: TableSpec, settings: Settings, configs: Mapping[str, ExperimentConfig],
                study: optuna.Study, name: str, url: str, tracker: Tracker, parent_id: str,
                t0: float) -> TableRun:
    with studies.study_lock(url, name):
        studies.reap_dead_trials(study)
    studies.close_orphan_runs(study, tracker, parent_id)

    # which rows can run (as configured, or under a declared substitution): a cheap look at
    # the cache, before any trial
    subs = parse_substitutions(settings.substitutions)
    pools = Pools(settings)
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
    substituted_rows = frozenset(r for r, c in used.items() if SUBSTITUTIONS_TAG in c.tags)
    same: dict[str, SameAs] = {}
    first: dict[str, str] = {}  # config hash -> the first row that computes it
    for row, cfg in used.items():
        earlier = first.setdefault(cfg.hash(), row)
        if earlier != row and {row, earlier} & substituted_rows:
            same[row] = SameAs(earlier)
    compute = {r: c for r, c in used.items() if r not in same}
    done_before = _complete_rows(study, compute)
    todo = {r: c for r, c in compute.items() if r not in done_before}
    table_run = uuid.uuid4().hex
    if todo:
        if settings.workers <= 1:
            RowWorker(str(spec.path), settings, name, parent_id, table_run, todo).run()
        else:
            jobs = [(str(spec.path), settings, name, parent_id, table_run, todo)] * settings.workers
            codes = studies.run_workers(_row_worker_main, jobs)
            if any(codes):
                print(f"warning: table workers exited with {codes}", flush=True)
            with studies.study_lock(url, name):
                studies.reap_dead_trials(study)
    studies.close_orphan_runs(study, tracker, parent_id)
    done = _complete_rows(study, compute)

    results: dict[str, Outcome] = {}
    trials = study.get_trials(deepcopy=False)
    for row in configs:
        if row in done:
            results[row] = done[row].user_attrs["metrics"]
        elif row in missing:
            results[row] = missing[row]
        elif row in same:
            results[row] = same[row]
        else:
            failed = [t for t in trials if t.params.get("row") == row and t.state == TrialState.FAIL]
            why = failed[-1].user_attrs.get("error") or studies.worker_gone(failed[-1]) if failed else ""
            results[row] = Failed(why or "not run (no worker reached it)")
    _log_unavailable_rows(tracker, parent_id, spec, configs, {**missing, **same})
    shown = dataclasses.replace(effective_spec(spec, settings), substituted=substituted_rows,
                                substitutions=tuple((str(x), x.reason) for x in subs))
    _log_parent_datasets(tracker, parent_id, pools, compute)
    # the table's reference row, or the row it is the same computation as (a substitution)
    reference = same[spec.reference].row if spec.reference in same else spec.reference
    unc = uncertainty(spec, row_per_query(spec, settings, name, {r: compute[r] for r in done}, done, pools),
                      reference=reference)
    if unc is not None:
        _log_uncertainty(tracker, parent_id, done, unc)
    rendered = render_all(shown, results, unc)
    _write_table(spec, rendered, settings, tracker, parent_id, results, configs)
    computed = len([r for r in todo if r in done])
    return TableRun(spec, results, rendered, computed, len(done) - computed,
                    time.perf_counter() - t0, name, parent_id)


def per_query_path(settings: Settings, study: str, row: str, cfg: ExperimentConfig) -> Path:
    """Where a row's per-query results are kept: under the output folder, by study and row."""
    safe = re.sub(r"[^\w.+=-]+", "_", row)
    return Path(settings.out_dir) / "tables" / "per_query" / study / f"{safe}-{cfg.hash()[:8]}.npz"


def row_per_query(spec: TableSpec, settings: Settings, study: str, configs: Mapping[str, ExperimentConfig],
                  done: Mapping[str, Any], pools: Pools) -> dict[str, SavedPerQuery]:
    """Each computed row's per-query results, from the cache its number came from: the file
    its worker saved, or (a row computed before per-query files existed, or on another
    machine) computed again here, pure computation that logs nothing, but only where this
    cache has the fingerprint the row was computed with. Rows that cannot be had so are
    left out (their numbers stand, without an interval)."""
    out: dict[str, SavedPerQuery] = {}
    highlights = any(k.startswith("HL-") for k in spec.columns.values())
    for row, cfg in configs.items():
        want = done[row].user_attrs.get("cache_fingerprint", "")
        path = per_query_path(settings, study, row, cfg)
        saved = read_per_query(path) if path.is_file() else None
        if saved is not None and saved.fingerprint == want and len(saved.qids):
            out[row] = saved
            continue
        try:
            prep = pools(cfg.dataset).get(cfg)
        except (MissingInputs, DataFileMissing):
            continue
        if want and prep.fingerprint != want:
            continue  # this machine's cache is not the one the row's number came from
        pq: PerQuery = {}
        trial(prep, cfg, highlights=highlights, per_query=pq)
        qids = [q.qid for q in prep.queries]
        save_per_query(path, pq, qids, prep.fingerprint)
        out[row] = SavedPerQuery(pq, np.asarray(qids), prep.fingerprint)
    return out


def uncertainty(spec: TableSpec, per_query: Mapping[str, SavedPerQuery], n_resamples: int = DEFAULT_RESAMPLES,
                seed: int = DEFAULT_SEED, reference: str | None = None) -> Uncertainty | None:
    """95 % intervals of every computed cell, and paired tests of each row against the
    reference row (`reference`, else the table's `reference:`, else, for a table that names
    none, the first computed row) on the same queries. A named reference without per-query
    results here means no tests (the note says so), never a test against another row."""
    if not per_query:
        return None
    order = [r.name for r in spec.rows if r.name in per_query]
    named = reference or spec.reference
    ref_row = named if named is not None else order[0]
    why = "" if ref_row in per_query else f"row {ref_row} (the reference) has no per-query results here"
    keys = set(spec.columns.values())
    cells: dict[str, dict[str, tuple[float, float, float | None]]] = {}
    ref = {k: v for k, v in per_query[ref_row].per_query.items() if k in keys} if not why else {}
    for row in order:
        mine = {k: v for k, v in per_query[row].per_query.items() if k in keys}
        if not mine:
            continue
        ci = intervals(mine, n_resamples, seed)
        paired = (bool(ref) and row != ref_row
                  and np.array_equal(per_query[row].qids, per_query[ref_row].qids))
        tests = compare(ref, mine, n_resamples, seed) if paired else {}
        cells[row] = {k: (v.low, v.high, tests[k].p if k in tests else None) for k, v in ci.items()}
    return Uncertainty(None if why else ref_row, cells, n_resamples, seed, why)


def _log_uncertainty(tracker: Tracker, parent_id: str, done: Mapping[str, Any], unc: Uncertainty) -> None:
    """Each row's intervals (and p-values) as metrics of its MLflow run (a run of this
    parent: a row computed while tracking elsewhere has no run here to log to)."""
    mine = {r.info.run_id for r in tracker.children(parent_id)}
    for row, stats in unc.cells.items():
        run_id = done[row].user_attrs.get("mlflow_run_id")
        if run_id not in mine:
            continue
        metrics: dict[str, float] = {}
        for key, (lo, hi, p) in stats.items():
            metrics[f"{metric_key(key)}_ci_low"] = lo
            metrics[f"{metric_key(key)}_ci_high"] = hi
            if p is not None:
                metrics[f"{metric_key(key)}_p_vs_reference"] = p
        tracker.log_metrics(run_id, metrics)
        tracker.set_tags(run_id, {REFERENCE_TAG: unc.reference or "", BOOTSTRAP_TAG: f"{unc.n_resamples}/{unc.seed}",
                                  UNTESTED_TAG: unc.why_untested})
        tracker.finish_pending(run_id)


def _uncertainty_from_runs(spec: TableSpec, runs: Mapping[str, Any]) -> Uncertainty | None:
    """The intervals and p-values `_log_uncertainty` put on the rows' MLflow runs."""
    cells: dict[str, dict[str, tuple[float, float, float | None]]] = {}
    reference, setup, why = None, None, ""
    for row, run in runs.items():
        m, tags = run.data.metrics, run.data.tags
        if REFERENCE_TAG not in tags:
            continue
        reference, setup = tags[REFERENCE_TAG], tags.get(BOOTSTRAP_TAG, f"{DEFAULT_RESAMPLES}/{DEFAULT_SEED}")
        why = tags.get(UNTESTED_TAG, "")
        cells[row] = {
            key: (m[f"{metric_key(key)}_ci_low"], m[f"{metric_key(key)}_ci_high"],
                  m.get(f"{metric_key(key)}_p_vs_reference"))
            for key in spec.columns.values() if f"{metric_key(key)}_ci_low" in m
        }
    if reference is None or setup is None:
        return None
    n, seed = (int(x) for x in setup.split("/"))
    return Uncertainty(reference or None, cells, n, seed, why)


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


def _write_table(spec: TableSpec, rendered: Mapping[str, str], settings: Settings, tracker: Tracker,
                 parent_id: str, results: Mapping[str, Outcome], configs: Mapping[str, ExperimentConfig]) -> None:
    folder = Path(settings.out_dir) / "tables"
    folder.mkdir(parents=True, exist_ok=True)
    suffix = "-demo" if settings.demo else ""
    for ext, text in rendered.items():
        atomic_write_text(folder / f"table{spec.id}{suffix}.{ext}", text)
        tracker.log_text(parent_id, text, f"table{spec.id}.{ext}")
    # the same table as an MLflow table artifact: the UI shows it as a table (Artifacts tab)
    tracker.log_table(parent_id, list(csv.DictReader(io.StringIO(rendered["csv"]))), f"table{spec.id}.json")
    plot = _sensitivity_plot(spec, results, folder / f"table{spec.id}{suffix}.png")
    if plot is not None:
        tracker.log_file(parent_id, plot, "plots")


def _sensitivity_plot(spec: TableSpec, results: Mapping[str, Outcome], path: Path) -> Path | None:
    """Fig. 8 for the sensitivity tables: the one config key their rows vary."""
    rows = [r for r in spec.rows if r.overrides]
    keys = {k for r in rows for k in (r.overrides or {})}
    if len(keys) != 1 or not spec.id.upper().startswith("C"):
        return None
    (param,) = keys
    xs = [float((r.overrides or {})[param]) for r in rows]
    ours = {col: [results[r.name].get(key) if isinstance(results.get(r.name), Mapping) else None  # type: ignore[union-attr]
                  for r in rows]
            for col, key in spec.columns.items()}
    paper = {col: [r.paper.get(col) for r in rows] for col in spec.columns}
    return plots.sensitivity_curve(param, xs, ours, paper, path, f"Table {spec.id}: sensitivity to {param}")


def table_from_mlflow(table: str, settings: Settings, echo: bool = True) -> dict[str, str]:
    """Render a table from what MLflow holds alone: the latest parent run and its children."""
    spec = load_table(table)
    name = table_study_name(spec, settings)
    tracker = _tracker(spec, settings, create=False)  # reads only: creates no store, no experiment
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
    rendered = render_all(shown, results, _uncertainty_from_runs(spec, finished))
    if echo:
        print(rendered["md"])
    return rendered
